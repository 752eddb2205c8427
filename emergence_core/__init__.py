"""emergence_core: the science of emerge.

Tasks, model scales, the trainer, the measures, emergence detection, statistics and Pythia
evaluation, as plain functions and small classes over tensors, arrays and Arrow tables.
This package imports neither Ray nor MLflow and runs in a notebook on its own.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
