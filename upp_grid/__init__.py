"""upp-grid: reweighted flavour-tagging training datasets, locally or on the grid."""

__version__ = "0.1.0"
