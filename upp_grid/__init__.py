"""upp-grid: reweighted flavour-tagging training datasets, locally or on the grid."""

from upp_grid import lazy_ftag

__version__ = "0.1.0"

lazy_ftag.install()  # before any ftag import: skips ftag/__init__'s scipy (see lazy_ftag)
