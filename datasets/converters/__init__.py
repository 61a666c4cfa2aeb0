"""Per-dataset converters used by ``python -m datasets.prepare`` (see ``datasets/prepare.py``)."""
