"""A scoring request for a served model: one test digit as the JSON `mlflow models serve` takes.

python -m pipeline.serve.request [index] > digit.json     # its true label goes to stderr
curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d @digit.json
"""

from __future__ import annotations

import json
import sys

from hydra import compose, initialize_config_dir

from pipeline import config as _config  # noqa: F401 — registers the schema
from pipeline.data import dataset
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT


def main() -> int:
    try:
        index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=sys.argv[2:])
        data = dataset.load(cfg.data)
        if not 0 <= index < len(data.y("test")):
            raise ValueError(
                f"index {index}: the test set has images 0 to {len(data.y('test')) - 1}"
            )
    except (ValueError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"inputs": data.x("test")[index : index + 1].tolist()}))
    print(f"test image {index}: the digit {int(data.y('test')[index])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
