"""The data: the datasets the pipeline knows, their raw files (download.py, idx.py) and the
verified arrays a run trains on (dataset.py)."""

N_CLASSES = 10  # the digits 0-9

# Each dataset: images in all (before any split), pixels per image.
DATASETS = {
    "mnist": {"images": 60000, "pixels": 784},  # 28×28, plus its official 10k test images
    "digits": {"images": 1797, "pixels": 64},  # scikit-learn's 8×8 digits
}
