"""depthcut's version (a leaf: the saved-run metadata reads it without importing the package)."""

__version__ = "0.1.0"
