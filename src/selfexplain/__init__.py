"""selfexplain: train language models to explain their own computations."""

__version__ = "0.1.0"
