"""depthcut's version (a leaf: the saved-run metadata reads it without importing the package)."""

__version__ = "0.1.0"
FORMAT_VERSION = 2  # layout of a saved run (depthcut.json); 1 held one plan
