"""Cut postage stamps around catalogue sources in a large image (FITS image + catalogue).

Coordinates
-----------
Everything here returns **0-based array pixel coordinates** of the image: ``x`` along the
column index ``j`` (right), ``y`` along the row index ``i`` (up, FITS order), and the
centre of pixel ``image[i, j]`` is at ``(x, y) = (j, i)``. Catalogues give either

* pixel positions, 1-based by default (the FITS / SExtractor ``X_IMAGE`` convention, where
  the first pixel's centre is at 1.0; pass ``origin=0`` for 0-based columns), or
* RA / Dec in degrees (or with an astropy angle unit on the column), converted with the
  image's celestial WCS (:func:`read_image_with_wcs`).

Stamps
------
A stamp of side ``n`` (32 by default, the shear CNN's input) for a source at ``(x, y)``
holds the pixels ``j0 .. j0 + n − 1`` and ``i0 .. i0 + n − 1`` with
``j0 = floor(x − (n − 1)/2 + ½)`` (and ``i0`` alike): its centre ``(j0 + (n − 1)/2,
i0 + (n − 1)/2)`` — between the two middle pixels for even ``n``, lensml's
:class:`~lensml.physics.grids.PixelGrid` convention — is the nearest such point to the
source, and the source's **offset** from it, ``(x − j0 − (n − 1)/2, y − i0 − (n − 1)/2)``,
lies in [−½, ½) pixels per axis. In the stamp's own centred coordinates (pixel scale s)
the source is at ``offset · s`` arcsec.

Stamps that cannot be used are **flagged, never dropped or zero-filled silently**: their
``valid`` entry is False and ``flags`` says why (bit values :data:`FLAG_OFF_IMAGE`,
:data:`FLAG_EDGE`, :data:`FLAG_NONFINITE`, :data:`FLAG_BAD_POSITION`); pixels outside the
image get ``fill`` (NaN by default).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lensml.data.fits_io import FitsError, read_catalog, read_image_fits

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from astropy.io.fits import Header
    from astropy.table import Table
    from astropy.wcs import WCS

__all__ = [
    "FLAG_BAD_POSITION",
    "FLAG_EDGE",
    "FLAG_NONFINITE",
    "FLAG_OFF_IMAGE",
    "CatalogError",
    "ImageWithWcs",
    "SourceCatalog",
    "Stamps",
    "cut_stamps",
    "read_image_with_wcs",
    "read_source_catalog",
    "sky_to_pixel",
]

#: The source position is outside the image (beyond the outer pixel edges).
FLAG_OFF_IMAGE = 1
#: The stamp reaches beyond the image edge (too close to it); those pixels hold ``fill``.
FLAG_EDGE = 2
#: The stamp contains NaN or inf image pixels.
FLAG_NONFINITE = 4
#: The position itself is NaN/inf (e.g. RA/Dec the WCS cannot project).
FLAG_BAD_POSITION = 8

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_CSV_SUFFIXES = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".txt": "ascii", ".dat": "ascii"}
#: Column names tried, case-insensitively, when ``columns`` does not name them.
_AUTO = {
    "x": ("x", "x_image", "xpix", "x_pix", "xwin_image", "x_pixel", "xcentroid"),
    "y": ("y", "y_image", "ypix", "y_pix", "ywin_image", "y_pixel", "ycentroid"),
    "ra": ("ra", "alpha_j2000", "ra_deg", "raj2000", "alphawin_j2000"),
    "dec": ("dec", "delta_j2000", "dec_deg", "dej2000", "deltawin_j2000"),
    "id": ("id", "number", "source_id", "objid"),
}


class CatalogError(ValueError):
    """A source catalogue is missing, unreadable or lacks a usable column."""


# ----------------------------------------------------------------------------- image + WCS
@dataclass(frozen=True)
class ImageWithWcs:
    """An image read by :func:`read_image_with_wcs`.

    Attributes
    ----------
    data : numpy.ndarray
        (H, W) float64, ``data[i, j]`` at 0-based pixel ``(x, y) = (j, i)``.
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the HDU, None when it has none that can be used.
    header : astropy.io.fits.Header
        The image HDU's header.
    source : str
        ``"file[hdu]"``.
    """

    data: np.ndarray
    wcs: WCS | None
    header: Header
    source: str


def _celestial_wcs(header: Header) -> tuple[WCS | None, str]:
    """The header's celestial WCS and '' or None and why it is unusable."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FITSFixedWarning for harmless fixes
            w = WCS(header)
    except Exception as err:  # astropy raises many types for bad WCS keywords
        return None, f"invalid WCS keywords ({err})"
    if not w.has_celestial:
        return None, "no celestial WCS (CTYPE1/2 = RA---xxx / DEC--xxx)"
    w = w.celestial
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crpix = np.asarray(w.wcs.crpix, dtype=np.float64) - 1.0
            ra, dec = w.all_pix2world([crpix[0]], [crpix[1]], 0)
            back = np.asarray(w.all_world2pix(ra, dec, 0), dtype=np.float64).ravel()
    except Exception as err:
        return None, f"the WCS cannot be evaluated ({err})"
    if not np.all(np.isfinite(back)) or np.max(np.abs(back - crpix)) > 1e-6:
        return None, "the WCS does not round-trip pixel -> sky -> pixel"
    return w, ""


def read_image_with_wcs(
    path: str | os.PathLike, hdu: int | str | None = None, *, require_wcs: bool = False
) -> ImageWithWcs:
    """Read an image HDU (default: the first with 2-d data) and its celestial WCS.

    Parameters
    ----------
    path : path-like
        FITS file.
    hdu : int or str, optional
        Index or ``EXTNAME`` of the image HDU.
    require_wcs : bool
        Raise when there is no usable celestial WCS (needed for RA/Dec catalogues).

    Raises
    ------
    lensml.data.fits_io.FitsError
        Naming the file: missing, corrupt, no image HDU with 2-d data, missing ``hdu``,
        or (``require_wcs``) no usable celestial WCS.
    """
    path = Path(path)
    data, header = read_image_fits(path, hdu)
    where = f"{path}[{hdu if hdu is not None else header.get('EXTNAME', 0)}]"
    wcs, why = _celestial_wcs(header)
    if wcs is None and require_wcs:
        raise FitsError(f"{where}: {why}; RA/Dec positions need the image's celestial WCS")
    return ImageWithWcs(data.astype(np.float64, copy=False), wcs, header, where)


def sky_to_pixel(wcs: WCS, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel ``(x, y)`` of sky positions (degrees) through ``wcs`` (distortions included).

    Positions the projection cannot map come back NaN (and are flagged by :func:`cut_stamps`).
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.shape != dec.shape or ra.ndim != 1:
        raise ValueError(f"'ra' and 'dec' must be 1-d of equal length, got {ra.shape}, {dec.shape}")
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        x, y = wcs.all_world2pix(ra, dec, 0, quiet=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


# ----------------------------------------------------------------------------- catalogues
@dataclass(frozen=True)
class SourceCatalog:
    """Source positions read by :func:`read_source_catalog`.

    Attributes
    ----------
    x, y : numpy.ndarray
        (N,) 0-based image pixel positions (NaN where a position could not be converted).
    ids : numpy.ndarray
        (N,) source identifiers (the ``id`` column, else 0..N−1).
    table : astropy.table.Table
        The whole catalogue as read.
    columns : dict
        The columns used, by role (``x``/``y`` or ``ra``/``dec``, and ``id``).
    frame : str
        ``"pixel"`` or ``"sky"``.
    source : str
        The file path.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    table: Table
    columns: dict[str, str]
    frame: str
    source: str


def _read_table(path: Path, hdu: int | str) -> Table:
    from astropy.table import Table

    name = path.name.lower()
    if name.endswith(_FITS_SUFFIXES):
        return read_catalog(path, hdu)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES:
        raise CatalogError(
            f"catalogue {path}: unknown file type {suffix!r}; expected FITS "
            f"({', '.join(_FITS_SUFFIXES)}) or text ({', '.join(_CSV_SUFFIXES)})"
        )
    if not path.is_file():
        raise CatalogError(f"catalogue {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Table.read(path, format=_CSV_SUFFIXES[suffix])
    except Exception as err:  # astropy's ascii readers raise many types
        raise CatalogError(f"catalogue {path} cannot be read as {suffix} text: {err}") from None


def _find(table: Table, role: str) -> str | None:
    lower = {c.lower(): c for c in table.colnames}
    for cand in _AUTO[role]:
        if cand in lower:
            return lower[cand]
    return None


def _numeric(table: Table, name: str, role: str, path: Path, unit: str | None = None) -> np.ndarray:
    if name not in table.colnames:
        raise CatalogError(
            f"catalogue {path}: column {name!r} ({role}) not found; columns: "
            f"{', '.join(table.colnames)}"
        )
    col = table[name]
    if unit is not None and getattr(col, "unit", None) is not None:
        try:
            return np.asarray(col.quantity.to_value(unit), dtype=np.float64)
        except Exception:
            raise CatalogError(
                f"catalogue {path}: column {name!r} ({role}) has unit {col.unit}, "
                f"expected an angle convertible to {unit}"
            ) from None
    data = np.ma.filled(np.ma.asarray(col), np.nan) if np.ma.isMaskedArray(col) else col
    try:
        a = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise CatalogError(
            f"catalogue {path}: column {name!r} ({role}) is not numeric (dtype {col.dtype})"
        ) from None
    if a.ndim != 1:
        raise CatalogError(f"catalogue {path}: column {name!r} ({role}) must be a scalar column")
    return a


def read_source_catalog(
    path: str | os.PathLike,
    columns: dict[str, str] | None = None,
    *,
    wcs: WCS | None = None,
    origin: int = 1,
    hdu: int | str = 1,
) -> SourceCatalog:
    """Read source positions from a FITS binary table or a CSV/text table.

    Parameters
    ----------
    path : path-like
        ``.fits`` / ``.fit`` / ``.fts`` (optionally ``.gz``): binary table in HDU ``hdu``;
        ``.csv``, ``.ecsv``, ``.txt``, ``.dat``: text table with a header line.
    columns : dict, optional
        Column names by role: ``{"x": ..., "y": ...}`` (pixels) or ``{"ra": ..., "dec": ...}``
        (degrees, or any angle unit on the column), plus an optional ``"id"``. Default:
        found case-insensitively among common names (``x``, ``X_IMAGE``, ``xpix``, …;
        ``ra``, ``ALPHA_J2000``, …; ``id``, ``NUMBER``), pixel columns first.
    wcs : astropy.wcs.WCS, optional
        The image's celestial WCS; required for RA/Dec positions.
    origin : {1, 0}
        Index of the first pixel in pixel columns: 1 (FITS / SExtractor, default) or 0.
    hdu : int or str
        Table HDU of a FITS catalogue (default 1).

    Returns
    -------
    SourceCatalog
        Positions as 0-based pixel coordinates of the image.

    Raises
    ------
    CatalogError
        Naming the file and column: unknown file type, unreadable text, a named or needed
        column missing (with the columns available), a non-numeric column, RA/Dec without a
        WCS. :class:`~lensml.data.fits_io.FitsError` for unreadable FITS catalogues.
    """
    path = Path(path)
    if origin not in (0, 1) or isinstance(origin, bool):
        raise ValueError(f"'origin' must be 1 (FITS/SExtractor pixels) or 0, got {origin!r}")
    table = _read_table(path, hdu)
    if columns is not None:
        unknown = set(columns) - set(_AUTO)
        if unknown:
            raise CatalogError(
                f"catalogue {path}: unknown column roles {sorted(unknown)}; use x, y, ra, dec, id"
            )
        roles = dict(columns)
        pixel = "x" in roles or "y" in roles
        sky = "ra" in roles or "dec" in roles
        if pixel == sky:
            raise CatalogError(
                f"catalogue {path}: 'columns' must name either x and y or ra and dec, got {roles}"
            )
        for need in ("x", "y") if pixel else ("ra", "dec"):
            if need not in roles:
                raise CatalogError(f"catalogue {path}: 'columns' names no {need!r} column")
    else:
        found = {role: _find(table, role) for role in _AUTO}
        if found["x"] and found["y"]:
            roles, pixel = {"x": found["x"], "y": found["y"]}, True
        elif found["ra"] and found["dec"]:
            roles, pixel = {"ra": found["ra"], "dec": found["dec"]}, False
        else:
            raise CatalogError(
                f"catalogue {path}: no position columns found (looked for x/y, X_IMAGE/Y_IMAGE, "
                f"ra/dec, ALPHA_J2000/DELTA_J2000); columns: {', '.join(table.colnames)}; "
                "name them with columns={'x': ..., 'y': ...}"
            )
        if found["id"]:
            roles["id"] = found["id"]
    if pixel:
        x = _numeric(table, roles["x"], "x", path) - origin
        y = _numeric(table, roles["y"], "y", path) - origin
    else:
        if wcs is None:
            raise CatalogError(
                f"catalogue {path} gives RA/Dec (columns {roles['ra']!r}, {roles['dec']!r}): "
                "pass the image's WCS (read_image_with_wcs(image).wcs) to convert them to pixels"
            )
        ra = _numeric(table, roles["ra"], "ra", path, unit="deg")
        dec = _numeric(table, roles["dec"], "dec", path, unit="deg")
        x, y = sky_to_pixel(wcs, ra, dec)
    if "id" in roles and roles["id"] not in table.colnames:
        raise CatalogError(
            f"catalogue {path}: column {roles['id']!r} (id) not found; columns: "
            f"{', '.join(table.colnames)}"
        )
    ids = np.asarray(table[roles["id"]]) if "id" in roles else np.arange(len(table))
    return SourceCatalog(x, y, ids, table, roles, "pixel" if pixel else "sky", str(path))


# ----------------------------------------------------------------------------- stamps
@dataclass(frozen=True)
class Stamps:
    """Stamps cut by :func:`cut_stamps`.

    Attributes
    ----------
    images : torch.Tensor
        (N, 1, n, n) float32; pixels outside the image hold ``fill``.
    valid : numpy.ndarray
        (N,) bool, True when ``flags == 0``.
    flags : numpy.ndarray
        (N,) int32 bit mask of ``FLAG_*`` reasons.
    offsets : numpy.ndarray
        (N, 2) float64 (dx, dy) of each source from its stamp centre, pixels, in [−½, ½)
        for positions on or near the image (NaN for bad positions).
    corners : numpy.ndarray
        (N, 2) int64 (j0, i0): image column and row of each stamp's pixel [0, 0].
    """

    images: torch.Tensor
    valid: np.ndarray
    flags: np.ndarray
    offsets: np.ndarray
    corners: np.ndarray


def cut_stamps(
    image: Any, x_pix: Any, y_pix: Any, size: int = 32, fill: float = math.nan
) -> Stamps:
    """Cut ``size × size`` stamps centred on 0-based pixel positions (see module docstring).

    Parameters
    ----------
    image : array-like (H, W)
        The image (numpy array or tensor); ``image[i, j]`` at ``(x, y) = (j, i)``.
    x_pix, y_pix : array-like (N,)
        0-based pixel positions (:func:`read_source_catalog` returns these). NaN positions
        are flagged ``FLAG_BAD_POSITION``.
    size : int
        Stamp side in pixels (>= 1; 32 for the shear CNN).
    fill : float
        Value of stamp pixels outside the image (default NaN, so they cannot pass as data).

    Returns
    -------
    Stamps
        A source whose stamp reaches past the edge is flagged ``FLAG_EDGE`` (and
        ``FLAG_OFF_IMAGE`` if the position itself is outside ``[−½, W − ½) × [−½, H − ½)``);
        a stamp with NaN/inf image pixels ``FLAG_NONFINITE``. Nothing raises for such rows.
    """
    import torch

    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype.kind not in "fiu" or 0 in img.shape:
        raise ValueError(f"'image' must be a non-empty 2-d numeric array, got shape {img.shape}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"'size' must be an integer >= 1 pixels, got {size!r}")
    size = int(size)
    x = np.asarray(x_pix, dtype=np.float64)
    y = np.asarray(y_pix, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"'x_pix' and 'y_pix' must be 1-d of equal length, got {x.shape}, {y.shape}"
        )
    h, w = img.shape
    n = x.size
    half = 0.5 * (size - 1)
    good = np.isfinite(x) & np.isfinite(y)
    # bound the corners so absurd positions cannot overflow the index arithmetic
    xs = np.clip(np.where(good, x, 0.0), -2.0 * size - 1, w + 2.0 * size)
    ys = np.clip(np.where(good, y, 0.0), -2.0 * size - 1, h + 2.0 * size)
    j0 = np.floor(xs - half + 0.5).astype(np.int64)
    i0 = np.floor(ys - half + 0.5).astype(np.int64)
    flags = np.zeros(n, dtype=np.int32)
    flags[~good] |= FLAG_BAD_POSITION
    off = ~((x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5))
    flags[good & off] |= FLAG_OFF_IMAGE
    k = np.arange(size)
    cols, rows = j0[:, None] + k, i0[:, None] + k  # (N, size)
    in_c = (cols >= 0) & (cols < w)
    in_r = (rows >= 0) & (rows < h)
    stamps = img[np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
    stamps = stamps.astype(np.float32)
    outside = ~(in_r[:, :, None] & in_c[:, None, :])
    outside[~good] = True
    stamps[outside] = fill
    flags[good & outside.any(axis=(1, 2))] |= FLAG_EDGE
    nonfinite = (~np.isfinite(stamps) & ~outside).any(axis=(1, 2))
    flags[nonfinite] |= FLAG_NONFINITE
    offsets = np.stack([x - j0 - half, y - i0 - half], axis=1)
    offsets[~good] = np.nan
    corners = np.stack([j0, i0], axis=1)
    return Stamps(
        images=torch.from_numpy(stamps)[:, None],
        valid=flags == 0,
        flags=flags,
        offsets=offsets,
        corners=corners,
    )
