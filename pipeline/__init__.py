"""The classic handwritten-digit network, from scratch in NumPy, as a tracked pipeline.

Importing the package imports nothing else: the engine (pipeline.engine) must load in an
environment that has only numpy and scipy, such as a logged model's.
"""
