"""compress: declarative, measured model compression for PyTorch models."""

__version__ = "0.1.0"
