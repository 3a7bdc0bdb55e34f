"""Small real data shipped with lensml (nothing is downloaded at run time).

``cosmos/`` — GalSim's public COSMOS example data (HST/ACS F814W < 23.5, 100 galaxies): the
parametric Sérsic and bulge+disk fits (``real_galaxy_catalog_23.5_example_fits.fits``), the
matching identity table and selection flags, the 100 measured ACS PSF images
(``real_galaxy_PSF_images.fits``, 0.03″/px) and the correlation function of the ACS pixel
noise (``acs_I_unrot_sci_20_cf.fits``). Used by the shear and Sérsic simulators (realistic
galaxy population, real PSFs, correlated noise) and the strong-lensing noise chain.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["COSMOS_FILES", "cosmos_dir", "cosmos_file"]

#: The shipped COSMOS example files by role.
COSMOS_FILES = {
    "catalog": "real_galaxy_catalog_23.5_example.fits",
    "fits": "real_galaxy_catalog_23.5_example_fits.fits",
    "selection": "real_galaxy_catalog_23.5_example_selection.fits",
    "psf": "real_galaxy_PSF_images.fits",
    "noise_cf": "acs_I_unrot_sci_20_cf.fits",
}


def cosmos_dir(value: str | os.PathLike | None = None) -> Path:
    """Directory of the COSMOS example data.

    ``value`` if given, else the environment variable ``LENSML_COSMOS_DIR``, else the copy
    shipped inside the package.

    Raises
    ------
    ValueError
        When the chosen directory does not hold the catalogue file (naming the directory).
    """
    if value is not None:
        where, how = Path(value), "cosmos_dir"
    elif os.environ.get("LENSML_COSMOS_DIR"):
        where, how = Path(os.environ["LENSML_COSMOS_DIR"]), "LENSML_COSMOS_DIR"
    else:
        where, how = Path(__file__).resolve().parent / "cosmos", "the shipped copy"
    if not (where / COSMOS_FILES["catalog"]).is_file():
        raise ValueError(
            f"cosmos_dir: {where} ({how}) does not hold GalSim's COSMOS example data "
            f"({COSMOS_FILES['catalog']} and friends)"
        )
    return where


def cosmos_file(role: str, directory: str | os.PathLike | None = None) -> Path:
    """Path of one COSMOS file by role (:data:`COSMOS_FILES`), from :func:`cosmos_dir`."""
    if role not in COSMOS_FILES:
        raise ValueError(f"cosmos_file: role must be one of {sorted(COSMOS_FILES)}, got {role!r}")
    path = cosmos_dir(directory) / COSMOS_FILES[role]
    if not path.is_file():
        raise ValueError(f"cosmos_file: {path} is missing")
    return path
