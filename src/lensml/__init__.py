"""lensml: deep learning for gravitational lensing and galaxy structure.

Importing this package does nothing but define the version: every heavy import
(torch, astropy, GalSim, Lightning) happens inside the submodule that needs it.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
