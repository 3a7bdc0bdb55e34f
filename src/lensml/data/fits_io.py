"""FITS interchange: images and maps with WCS and labels, catalogues, user cutouts.

Writing
-------
:func:`write_image_fits` writes one image (primary HDU) or several maps (one
image extension per map, e.g. ``KAPPA``, ``GAMMA1``, ``GAMMA2``, with an empty
primary HDU) with

* a celestial TAN WCS when the pixel scale is known: ``CTYPE = RA---TAN /
  DEC--TAN``, ``CRPIX`` at the image centre (``(W + 1) / 2``, ``(H + 1) / 2`` in
  FITS' 1-based convention, so the centre of an even-sized image falls between
  pixels as in :class:`lensml.physics.grids.PixelGrid`), ``CDELT1 = -scale``,
  ``CDELT2 = +scale`` in degrees (RA grows to the left, x to the right: array
  column ``j`` is x, row ``i`` is y, y up), ``CRVAL`` the given (RA, Dec) or
  (0, 0) for a local frame, and ``PIXSCALE`` in arcsec / pixel for humans;
* the labels in the header (of the primary HDU; also of the image when it is
  the primary HDU). A label whose name is a valid short FITS keyword (1–8
  characters of ``A-Z 0-9 _ -``, not a structural or WCS keyword) is written
  under its upper-cased name, every other under ``HIERARCH LABEL <name>``; the
  comment holds ``[unit] description``. ``LABELS`` lists the original names
  (comma-separated, long-string ``CONTINUE`` cards when needed) so
  :func:`read_labels` returns them with their case.

Every writer is atomic: it writes ``.<name>.tmp-<uuid>`` in the target
directory, then :func:`os.replace` s it onto the target.

Reading
-------
:func:`read_cutouts` turns a user's cutouts (several files, or one file with one
cutout per image extension) into float32 tensors ``(N, 1, H, W)`` with optional
PSF, variance or weight images and the pixel scale from the header or given.
Everything that can go wrong with a file (missing, truncated, corrupt, missing
extension or keyword, NaN/inf pixels, inconsistent pixel scales or shapes)
raises :class:`FitsError` (a :class:`ValueError`) naming the file and what is
wrong; no other exception escapes from the readers for bad file contents.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from astropy.io.fits import Header
    from astropy.table import Table

__all__ = [
    "Cutouts",
    "FitsError",
    "label_key",
    "pixel_scale_from_header",
    "read_catalog",
    "read_cutouts",
    "read_image_fits",
    "read_labels",
    "write_catalog",
    "write_image_fits",
]

PathLike = str | os.PathLike

_SHORT_KEY = re.compile(r"[A-Za-z0-9_-]{1,8}")
_LABEL_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,60}")
_RESERVED = {
    "SIMPLE", "BITPIX", "EXTEND", "BSCALE", "BZERO", "BUNIT", "BLANK", "EXTNAME", "EXTVER",
    "XTENSION", "PCOUNT", "GCOUNT", "END", "COMMENT", "HISTORY", "LABELS", "PIXSCALE",
    "RADESYS", "EQUINOX", "LONPOLE", "LATPOLE", "WCSAXES", "DATE", "ORIGIN", "OBJECT",
    "CHECKSUM", "DATASUM", "CONTINUE", "HIERARCH", "INHERIT", "LENSMLV",
}  # fmt: skip
_RESERVED_PREFIX = ("NAXIS", "CRPIX", "CDELT", "CTYPE", "CRVAL", "CUNIT", "CD1_", "CD2_", "PC1_",
                    "PC2_", "TTYPE", "TFORM", "TUNIT", "TDIM", "PV1_", "PV2_")  # fmt: skip
_UNIT_TO_ARCSEC = {"deg": 3600.0, "degree": 3600.0, "arcmin": 60.0, "arcsec": 1.0,
                   "rad": 180.0 / math.pi * 3600.0, "mas": 1e-3}  # fmt: skip


class FitsError(ValueError):
    """A FITS file is missing, unreadable, corrupt or inconsistent with the request."""


# --------------------------------------------------------------------------- helpers


def write_hdulist_atomic(hdul: Any, path: Path, overwrite: bool = True) -> Path:
    """Write an astropy ``HDUList`` to ``path`` atomically (temporary file + rename).

    Raises
    ------
    FitsError
        ``path`` exists and ``overwrite`` is false, is a directory, or its directory is missing.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FitsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise FitsError(f"{path} is a directory, expected a FITS file path")
    if not path.parent.is_dir():
        raise FitsError(f"directory {path.parent} of {path.name} does not exist")
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        hdul.writeto(tmp, output_verify="exception")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def label_key(name: str) -> str:
    """FITS keyword under which the label ``name`` is stored (see module docstring).

    Raises
    ------
    FitsError
        If ``name`` has characters other than ``A-Z a-z 0-9 _ . + -`` or is longer
        than 60 characters.
    """
    if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
        raise FitsError(
            f"label name {name!r} must be 1-60 characters of A-Z a-z 0-9 _ . + - to go in a header"
        )
    up = name.upper()
    if _SHORT_KEY.fullmatch(name) and up not in _RESERVED and not up.startswith(_RESERVED_PREFIX):
        return up
    return f"HIERARCH LABEL {name}"


def _wcs_cards(shape: tuple[int, int], pixel_scale: float, center_radec: Any) -> dict[str, Any]:
    h, w = shape
    ra, dec = (
        (0.0, 0.0) if center_radec is None else (float(center_radec[0]), float(center_radec[1]))
    )
    deg = pixel_scale / 3600.0
    return {
        "WCSAXES": (2, "number of WCS axes"),
        "CTYPE1": ("RA---TAN", "gnomonic projection"),
        "CTYPE2": ("DEC--TAN", "gnomonic projection"),
        "CRPIX1": ((w + 1) / 2.0, "reference pixel: image centre (1-based)"),
        "CRPIX2": ((h + 1) / 2.0, "reference pixel: image centre (1-based)"),
        "CRVAL1": (ra, "[deg] RA at the reference pixel"),
        "CRVAL2": (dec, "[deg] Dec at the reference pixel"),
        "CDELT1": (-deg, "[deg] pixel size along x (RA grows to the left)"),
        "CDELT2": (deg, "[deg] pixel size along y"),
        "CUNIT1": ("deg", ""),
        "CUNIT2": ("deg", ""),
        "RADESYS": ("ICRS", ""),
        "PIXSCALE": (pixel_scale, "[arcsec/pixel] pixel scale"),
    }


def _put_labels(
    header: Header,
    labels: Mapping[str, float],
    units: Mapping[str, str] | None,
    comments: Mapping[str, str] | None,
) -> None:
    units = units or {}
    comments = comments or {}
    names = list(labels)
    for name in names:
        value = labels[name]
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, int | float | bool | str):
            raise FitsError(
                f"label {name!r} must be a number or string, got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise FitsError(f"label {name!r} is {value}; FITS headers need finite numbers")
        comment = f"[{units.get(name, '')}] {comments.get(name, '')}".strip()
        header[label_key(name)] = (value, comment)
    if names:
        header["LABELS"] = (",".join(names), "label names, in order")


def write_image_fits(
    path: PathLike,
    image: Any,
    *,
    pixel_scale: float | None = None,
    labels: Mapping[str, float] | None = None,
    label_units: Mapping[str, str] | None = None,
    label_comments: Mapping[str, str] | None = None,
    center_radec: tuple[float, float] | None = None,
    header: Mapping[str, Any] | None = None,
    overwrite: bool = True,
    extension_scales: Mapping[str, float] | None = None,
) -> Path:
    """Write an image, or several maps as extensions, with WCS and labels, atomically.

    Parameters
    ----------
    path : path-like
        Output file; its directory must exist.
    image : array-like (H, W) or mapping of str to array-like (H, W)
        One image (written as the primary HDU) or named maps (one image extension
        each, ``EXTNAME`` = upper-cased name, in the mapping's order; the primary
        HDU is empty and carries the labels). Tensors are accepted.
    pixel_scale : float, optional
        arcsec / pixel, > 0. When given, every image gets the TAN WCS described in
        the module docstring.
    labels : mapping of str to float, optional
        Values written in the primary header.
    label_units, label_comments : mapping of str to str, optional
        Unit and description of each label, written in the card comment.
    center_radec : (float, float), optional
        (RA, Dec) in degrees of the image centre; default (0, 0) (local frame).
    header : mapping, optional
        Extra primary-header cards ``{key: value or (value, comment)}``.
    overwrite : bool
        Replace an existing file (default True).
    extension_scales : mapping of str to float, optional
        Pixel scales (arcsec, > 0) of named maps that differ from ``pixel_scale`` (e.g. a
        source-plane grid next to the image grid).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    FitsError
        For non-2-d or non-finite images, invalid label names or values, a
        non-positive pixel scale or an existing file with ``overwrite=False``.
    """
    from astropy.io import fits

    from lensml import __version__

    path = Path(path)
    if pixel_scale is not None and not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise FitsError(f"pixel_scale must be a finite number > 0 arcsec/pixel, got {pixel_scale}")
    maps = dict(image) if isinstance(image, Mapping) else {None: image}
    if not maps:
        raise FitsError(f"nothing to write to {path}: no maps given")
    scales = dict(extension_scales or {})
    for name, value in scales.items():
        if name not in maps:
            raise FitsError(f"extension_scales names {name!r}, which is not a map to write")
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise FitsError(f"extension_scales[{name!r}] must be a finite number > 0, got {value}")
    arrays = {}
    for name, arr in maps.items():
        a = _to_numpy(arr)
        what = f"map {name!r}" if name is not None else "image"
        if a.ndim != 2:
            raise FitsError(f"{what} for {path} must be 2-d (H, W), got shape {a.shape}")
        if not np.isfinite(a).all() and a.dtype.kind == "f":
            raise FitsError(f"{what} for {path} has {int((~np.isfinite(a)).sum())} NaN/inf pixels")
        arrays[name] = a
    primary = fits.PrimaryHDU()
    primary.header["LENSMLV"] = (__version__, "lensml version that wrote this file")
    for key, value in (header or {}).items():
        primary.header[key] = value
    _put_labels(primary.header, labels or {}, label_units, label_comments)
    hdus = [primary]
    for name, a in arrays.items():
        if name is None:
            primary.data = a
            target = primary
        else:
            target = fits.ImageHDU(a, name=str(name).upper())
            hdus.append(target)
        scale = scales.get(name, pixel_scale) if name is not None else pixel_scale
        if scale is not None:
            for key, card in _wcs_cards(a.shape, float(scale), center_radec).items():
                target.header[key] = card
    return write_hdulist_atomic(fits.HDUList(hdus), path, overwrite)


def _to_numpy(arr: Any) -> np.ndarray:
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    a = np.asarray(arr)
    if a.dtype == np.float16 or a.dtype.kind == "b":
        a = a.astype(np.float32)
    return a


def write_catalog(
    path: PathLike,
    data: Mapping[str, Any] | Table,
    *,
    units: Mapping[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a catalogue as a FITS binary table (extension 1, ``EXTNAME = CATALOG``), atomically.

    Parameters
    ----------
    path : path-like
        Output file.
    data : mapping of str to array-like, or astropy.table.Table
        Columns of equal length (vector columns allowed).
    units : mapping of str to str, optional
        Unit of each column (``TUNITn``), e.g. ``{"ra": "deg"}``.
    overwrite : bool
        Replace an existing file (default True).
    """
    from astropy.io import fits
    from astropy.table import Table

    try:
        table = (
            data.copy()
            if isinstance(data, Table)
            else Table({k: _to_numpy(v) for k, v in data.items()})
        )
    except (ValueError, TypeError) as err:
        raise FitsError(f"catalogue for {path}: columns must have equal lengths ({err})") from None
    for name, unit in (units or {}).items():
        if name not in table.colnames:
            raise FitsError(f"catalogue for {path}: unit given for unknown column {name!r}")
        table[name].unit = unit
    hdu = fits.table_to_hdu(table)
    hdu.name = "CATALOG"
    return write_hdulist_atomic(fits.HDUList([fits.PrimaryHDU(), hdu]), Path(path), overwrite)


def read_catalog(path: PathLike, hdu: int | str = 1) -> Table:
    """Read a FITS binary table into an :class:`astropy.table.Table` (units kept).

    Raises
    ------
    FitsError
        If the file is missing, corrupt, or ``hdu`` is absent or not a table.
    """
    from astropy.io import fits
    from astropy.table import Table

    path = Path(path)
    with _open_checked(path) as hdul:
        target = _select(hdul, hdu, path)
        if not isinstance(target, fits.BinTableHDU | fits.TableHDU):
            raise FitsError(f"{path}: HDU {hdu!r} is not a table")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unit strings astropy does not know
                return Table.read(target, format="fits", unit_parse_strict="silent")
        except Exception as err:
            raise FitsError(f"{path}: cannot read table HDU {hdu!r}: {err}") from None


def read_labels(header: Header) -> dict[str, Any]:
    """Labels written by :func:`write_image_fits`, in order, keyed by their original names.

    Raises
    ------
    FitsError
        If ``LABELS`` names a label whose keyword is missing.
    """
    names = str(header.get("LABELS", "")).split(",")
    out = {}
    for name in (n for n in names if n):
        key = label_key(name)
        if key not in header:
            raise FitsError(f"header lists label {name!r} but keyword {key!r} is missing")
        out[name] = header[key]
    return out


def read_image_fits(path: PathLike, hdu: int | str | None = None) -> tuple[np.ndarray, Header]:
    """Read one image HDU (default: the first with 2-d data) and its header.

    Returns
    -------
    data : numpy.ndarray
        The image, (H, W), in its stored dtype.
    header : astropy.io.fits.Header
        Its header.
    """
    path = Path(path)
    with _open_checked(path) as hdul:
        target = _select(hdul, hdu, path) if hdu is not None else _first_image(hdul, path)
        data = _force_data(target, path, hdu)
        return data, target.header.copy()


# --------------------------------------------------------------------------- reading


_MAX_HDUS = 1000
_BITPIX = {8, 16, 32, 64, -32, -64}


def _check_structure(h: Any, i: int, path: Path, file_size: int, last_end: int) -> int:
    """Validate the structural keywords and file span of HDU ``i``; return where it ends.

    astropy trusts NAXISn / BITPIX to find the next HDU: a negative or absurd value
    sends it backwards through the file (an endless loop), so check before asking
    for the next HDU.
    """
    hdr = h.header
    where = f"{path} HDU {i}"
    naxis = hdr.get("NAXIS", 0)
    if isinstance(naxis, bool) or not isinstance(naxis, int) or not 0 <= naxis <= 999:
        raise FitsError(f"{where}: keyword NAXIS = {naxis!r} is not an integer in [0, 999]")
    for k in range(1, naxis + 1):
        v = hdr.get(f"NAXIS{k}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise FitsError(f"{where}: keyword NAXIS{k} = {v!r} is not an integer >= 0")
    bitpix = hdr.get("BITPIX")
    if bitpix not in _BITPIX or isinstance(bitpix, bool):
        raise FitsError(f"{where}: keyword BITPIX = {bitpix!r} is not one of {sorted(_BITPIX)}")
    for key in ("PCOUNT", "GCOUNT"):
        v = hdr.get(key, 0 if key == "PCOUNT" else 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise FitsError(f"{where}: keyword {key} = {v!r} is not an integer >= 0")
    info = h.fileinfo()
    start, data_at, span = info["hdrLoc"], info["datLoc"], info["datSpan"]
    if start < last_end or data_at < start or span < 0:
        raise FitsError(f"{where}: inconsistent HDU layout (corrupt header)")
    nbytes = (
        abs(bitpix)
        // 8
        * hdr.get("GCOUNT", 1)
        * (
            hdr.get("PCOUNT", 0)
            + (math.prod(hdr[f"NAXIS{k}"] for k in range(1, naxis + 1)) if naxis else 0)
        )
    )
    if data_at + nbytes > file_size:
        raise FitsError(
            f"{path} is truncated: HDU {i} needs {data_at + nbytes} bytes, the file has {file_size}"
        )
    return data_at + span


class _open_checked:
    """Open a FITS file, check every HDU's layout and parse every card.

    Every failure (missing file, corrupt or truncated content, whatever astropy
    raises) becomes a FitsError naming the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hdul = None

    def __enter__(self) -> Any:
        from astropy.io import fits

        path = self.path
        if not path.exists():
            raise FitsError(f"FITS file {path} does not exist")
        if not path.is_file():
            raise FitsError(f"{path} is not a file")
        file_size = path.stat().st_size
        hdul = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
                end, i = 0, 0
                while True:
                    try:
                        h = hdul[i]  # lazy: reads HDU i only now
                    except IndexError:
                        break
                    for card in h.header.cards:  # astropy parses values lazily: parse now
                        _ = card.value, card.comment
                    end = _check_structure(h, i, path, file_size, end)
                    i += 1
                    if i > _MAX_HDUS:
                        raise FitsError(f"{path} has more than {_MAX_HDUS} HDUs")
            if i == 0:
                raise FitsError(f"{path} holds no HDU")
        except FitsError:
            if hdul is not None:
                hdul.close()
            raise
        except Exception as err:  # astropy raises many types for corrupt input
            if hdul is not None:
                with contextlib.suppress(Exception):
                    hdul.close()
            raise FitsError(f"{path} is not a readable FITS file: {err}") from None
        for w in caught:
            if "truncated" in str(w.message):
                hdul.close()
                raise FitsError(f"{path} is truncated: {w.message}")
        self.hdul = hdul
        return hdul

    def __exit__(self, *exc: object) -> None:
        if self.hdul is not None:
            with contextlib.suppress(Exception):  # closing a corrupt file must not mask errors
                self.hdul.close()


def _select(hdul: Any, hdu: int | str, path: Path) -> Any:
    try:
        return hdul[hdu]
    except (KeyError, IndexError):
        names = [h.name or str(i) for i, h in enumerate(hdul)]
        raise FitsError(f"{path}: extension {hdu!r} not found; HDUs: {', '.join(names)}") from None
    except Exception as err:
        raise FitsError(f"{path}: cannot access extension {hdu!r}: {err}") from None


def _is_image(h: Any) -> bool:
    from astropy.io import fits

    if not isinstance(h, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
        return False
    try:
        return int(h.header.get("NAXIS", 0)) >= 2 or h.header.get("ZNAXIS", 0) >= 2
    except (TypeError, ValueError):
        return False


def _first_image(hdul: Any, path: Path) -> Any:
    for h in hdul:
        if _is_image(h):
            return h
    raise FitsError(f"{path} has no image HDU with 2-d data")


def _force_data(h: Any, path: Path, hdu: int | str | None) -> np.ndarray:
    """Read the data now (astropy reads lazily) and check it is a complete 2-d image."""
    where = f"{path}[{hdu if hdu is not None else h.name or 0}]"
    if not _is_image(h):
        raise FitsError(f"{where} is not an image HDU with 2-d data")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = h.data
            arr = None
            if data is not None:
                kind = np.float64 if data.dtype.kind in "iub" else data.dtype
                arr = np.array(data, dtype=kind)
    except Exception as err:
        raise FitsError(
            f"{where}: cannot read the image data (corrupt or truncated?): {err}"
        ) from None
    for w in caught:
        if "truncated" in str(w.message):
            raise FitsError(f"{where} is truncated: {w.message}")
    if arr is None:
        raise FitsError(f"{where} has no data")
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim != 2:
        raise FitsError(f"{where}: expected a 2-d image, got shape {arr.shape}")
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def pixel_scale_from_header(header: Header, where: str = "header") -> float | None:
    """Pixel scale in arcsec / pixel from ``CD``, ``CDELT`` (with ``PC``) or ``PIXSCALE``.

    Looks, in order, for a ``CDi_j`` matrix, ``CDELTi`` (times the ``PCi_j``
    column norms), then ``PIXSCALE`` / ``PIXSCAL1`` / ``SECPIX`` (arcsec). Angular
    units follow ``CUNITi`` (default degrees).

    Returns
    -------
    float or None
        None when the header has none of these keywords.

    Raises
    ------
    FitsError
        Naming ``where`` and the keyword for non-numeric, non-finite, zero or
        non-square (|Δx| ≠ |Δy| by more than 1e-6 relative) pixel scales, or an
        unknown ``CUNIT``.
    """

    def num(key: str, default: float | None = None) -> float:
        if key not in header:
            if default is None:
                raise FitsError(f"{where}: keyword {key} missing")
            return default
        value = header[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FitsError(f"{where}: keyword {key} = {value!r} is not a number")
        if not math.isfinite(value):
            raise FitsError(f"{where}: keyword {key} = {value} is not finite")
        return float(value)

    def unit(axis: int) -> float:
        u = str(header.get(f"CUNIT{axis}", "deg")).strip().lower() or "deg"
        if u not in _UNIT_TO_ARCSEC:
            raise FitsError(f"{where}: CUNIT{axis} = {u!r} is not an angle unit")
        return _UNIT_TO_ARCSEC[u]

    if any(k in header for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")):
        cd = np.array(
            [[num("CD1_1", 0.0), num("CD1_2", 0.0)], [num("CD2_1", 0.0), num("CD2_2", 0.0)]]
        )
        sx = math.hypot(cd[0, 0] * unit(1), cd[1, 0] * unit(2))
        sy = math.hypot(cd[0, 1] * unit(1), cd[1, 1] * unit(2))
        source = "CD matrix"
    elif "CDELT1" in header or "CDELT2" in header:
        pc = np.array(
            [[num("PC1_1", 1.0), num("PC1_2", 0.0)], [num("PC2_1", 0.0), num("PC2_2", 1.0)]]
        )
        c1, c2 = num("CDELT1") * unit(1), num("CDELT2") * unit(2)
        sx = math.hypot(pc[0, 0] * c1, pc[1, 0] * c2)
        sy = math.hypot(pc[0, 1] * c1, pc[1, 1] * c2)
        source = "CDELT1/CDELT2"
    else:
        for key in ("PIXSCALE", "PIXSCAL1", "SECPIX"):
            if key in header:
                sx = sy = abs(num(key))
                source = key
                break
        else:
            return None
    if not (math.isfinite(sx) and math.isfinite(sy)) or sx <= 0 or sy <= 0:
        raise FitsError(
            f"{where}: pixel scale from {source} is not positive and finite ({sx}, {sy})"
        )
    if abs(sx - sy) > 1e-6 * max(sx, sy):
        raise FitsError(
            f"{where}: pixels are not square ({sx:.6g} x {sy:.6g} arcsec from {source}); "
            "resample first"
        )
    return 0.5 * (sx + sy)


@dataclass
class Cutouts:
    """Cutouts read by :func:`read_cutouts`.

    Attributes
    ----------
    images : torch.Tensor
        (N, 1, H, W) float32.
    pixel_scale : float
        arcsec / pixel.
    psf : torch.Tensor or None
        (1, 1, K, K) shared or (N, 1, K, K) per cutout, float32, unit sum.
    variance : torch.Tensor or None
        (N, 1, H, W) float32 per-pixel variance (inf where the weight was 0).
    mask : torch.Tensor or None
        (N, 1, H, W) bool, True for unusable pixels (NaN/inf with
        ``nan_policy="mask"``, zero weight); None if nothing is masked.
    sources : list of str
        ``"file[hdu]"`` of each cutout.
    headers : list of astropy.io.fits.Header
        Header of each cutout's HDU.
    """

    images: torch.Tensor
    pixel_scale: float
    psf: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    sources: list[str] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)


def _as_paths(source: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(source, str | os.PathLike):
        return [Path(source)]
    paths = [Path(p) for p in source]
    if not paths:
        raise FitsError("no FITS files given")
    return paths


def _read_cutout_hdus(
    path: Path, hdu: int | str | None, exclude: set[Any], all_images: bool
) -> list[tuple[str, np.ndarray, Any, Any]]:
    """(source, data, header, primary header) for the cutouts of one file."""
    out = []
    with _open_checked(path) as hdul:
        primary = hdul[0].header
        if hdu is not None:
            targets = [(hdu, _select(hdul, hdu, path))]
        elif all_images:
            targets = [
                (h.name or i, h)
                for i, h in enumerate(hdul)
                if _is_image(h) and i not in exclude and (h.name or "").upper() not in exclude
            ]
            if not targets:
                raise FitsError(f"{path} has no image HDU with 2-d data")
        else:
            first = _first_image(hdul, path)
            targets = [(first.name or 0, first)]
        for key, h in targets:
            out.append((f"{path}[{key}]", _force_data(h, path, key), h.header.copy(), primary))
    return out


def _read_aux(
    what: str, value: Any, hdu_name: int | str | None, paths: list[Path], n: int, shape: Any
) -> np.ndarray | None:
    """PSF / variance / weight as (n or 1, H, W) float64 from arrays, files or extensions."""
    if value is not None and hdu_name is not None:
        raise FitsError(f"give either {what} or {what}_hdu, not both")
    arrays: list[np.ndarray] = []
    if hdu_name is not None:
        for p in paths:
            data, _ = read_image_fits(p, hdu_name)
            arrays.append(data)
        if len(paths) == 1 and n > 1:
            arrays = arrays * 1  # one shared auxiliary image for all cutouts of the file
    elif value is None:
        return None
    elif isinstance(value, str | os.PathLike):
        arrays = [read_image_fits(value)[0]]
    elif isinstance(value, Sequence) and value and isinstance(value[0], str | os.PathLike):
        arrays = [read_image_fits(v)[0] for v in value]
    else:
        a = _to_numpy(value).astype(np.float64)
        if a.ndim == 4 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise FitsError(
                f"{what} array must be (K, K), (N, K, K) or (N, 1, K, K), got {a.shape}"
            )
        arrays = list(a)
    if len(arrays) not in (1, n) or (len(paths) > 1 and hdu_name is not None and len(arrays) != n):
        raise FitsError(f"{what}: got {len(arrays)} images for {n} cutouts (give 1 or {n})")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise FitsError(f"{what} images have different shapes: {sorted(shapes)}")
    stack = np.stack(arrays).astype(np.float64)
    if not np.isfinite(stack).all():
        raise FitsError(f"{what} has {int((~np.isfinite(stack)).sum())} NaN/inf pixels")
    if shape is not None and stack.shape[1:] != tuple(shape):
        raise FitsError(f"{what} images have shape {stack.shape[1:]}, cutouts {tuple(shape)}")
    return stack


def read_cutouts(
    source: PathLike | Sequence[PathLike],
    *,
    hdu: int | str | None = None,
    psf: Any = None,
    variance: Any = None,
    weight: Any = None,
    psf_hdu: int | str | None = None,
    variance_hdu: int | str | None = None,
    weight_hdu: int | str | None = None,
    pixel_scale: float | None = None,
    override: bool = False,
    nan_policy: Literal["raise", "mask"] = "raise",
    normalize_psf: bool = True,
) -> Cutouts:
    """Read FITS cutouts into float32 tensors ``(N, 1, H, W)``.

    Parameters
    ----------
    source : path-like or sequence of path-like
        Several files (one cutout each: HDU ``hdu``, default the first HDU with
        2-d data) or one file (HDU ``hdu`` if given, otherwise one cutout per
        image HDU with data, leaving out those named by ``*_hdu``).
    hdu : int or str, optional
        Index or ``EXTNAME`` of the cutout HDU in each file.
    psf : path-like, sequence of path-like or array-like, optional
        One shared PSF or one per cutout; normalised to unit sum unless
        ``normalize_psf=False``.
    variance, weight : path-like, sequence of path-like or array-like, optional
        Per-pixel variance (> = 0) or inverse-variance weight (>= 0, converted
        to variance = 1 / weight; weight 0 gives variance inf and a masked
        pixel). Give at most one.
    psf_hdu, variance_hdu, weight_hdu : int or str, optional
        The same, read from an extension of each cutout's own file.
    pixel_scale : float, optional
        arcsec / pixel; required when no header has ``CD``/``CDELT``/``PIXSCALE``.
        If a header disagrees by more than 1e-4 relative, a FitsError is raised
        unless ``override=True`` (the given value is then used).
    override : bool
        Use ``pixel_scale`` even where headers disagree.
    nan_policy : {"raise", "mask"}
        NaN/inf pixels raise (default) or are set to 0 and flagged in ``mask``.
    normalize_psf : bool
        Scale each PSF to unit sum (default True).

    Returns
    -------
    Cutouts

    Raises
    ------
    FitsError
        Missing, truncated or corrupt files; missing extensions or keywords;
        NaN/inf pixels (naming file and count); differing shapes or pixel
        scales (naming both files and values); bad PSF/variance/weight.
    """
    import torch

    if nan_policy not in ("raise", "mask"):
        raise FitsError(f"nan_policy must be 'raise' or 'mask', got {nan_policy!r}")
    if pixel_scale is not None and not (
        isinstance(pixel_scale, int | float) and math.isfinite(pixel_scale) and pixel_scale > 0
    ):
        raise FitsError(
            f"pixel_scale must be a finite number > 0 arcsec/pixel, got {pixel_scale!r}"
        )
    if (variance is not None or variance_hdu is not None) and (
        weight is not None or weight_hdu is not None
    ):
        raise FitsError("give a variance or a weight image, not both")
    paths = _as_paths(source)
    aux = [x for x in (psf_hdu, variance_hdu, weight_hdu) if x is not None]
    exclude = {x if isinstance(x, int) else str(x).upper() for x in aux}
    items = []
    for p in paths:
        items.extend(_read_cutout_hdus(p, hdu, exclude, all_images=len(paths) == 1))
    n = len(items)
    shapes = {}
    for src, data, _, _ in items:
        shapes.setdefault(data.shape, src)
    if len(shapes) > 1:
        desc = "; ".join(f"{s} in {src}" for s, src in shapes.items())
        raise FitsError(f"cutouts have different shapes: {desc}")
    shape = items[0][1].shape

    # pixel scale: from each header (falling back to the primary header), then the given value
    found: list[tuple[str, float]] = []
    for src, _, header, primary in items:
        scale = pixel_scale_from_header(header, src)
        if scale is None and primary is not header:
            scale = pixel_scale_from_header(primary, src)
        if scale is not None:
            found.append((src, scale))
    for src, scale in found[1:]:
        if abs(scale - found[0][1]) > 1e-4 * found[0][1]:
            raise FitsError(
                f"pixel scales differ: {found[0][1]:.6g} arcsec/pixel in {found[0][0]} "
                f"but {scale:.6g} in {src}"
            )
    if pixel_scale is not None:
        if found and abs(found[0][1] - pixel_scale) > 1e-4 * pixel_scale and not override:
            raise FitsError(
                f"given pixel_scale={pixel_scale:.6g} arcsec/pixel differs from "
                f"{found[0][1]:.6g} in the header of {found[0][0]}; pass override=True to use it"
            )
        scale_out = float(pixel_scale)
    elif found:
        scale_out = found[0][1]
    else:
        raise FitsError(
            f"no pixel scale in the headers of {items[0][0]} (CD, CDELT or PIXSCALE keywords); "
            "pass pixel_scale="
        )

    stack = np.stack([d for _, d, _, _ in items]).astype(np.float64)
    bad = ~np.isfinite(stack)
    mask = None
    if bad.any():
        if nan_policy == "raise":
            per = [(src, int(b.sum())) for (src, *_), b in zip(items, bad, strict=True) if b.any()]
            desc = ", ".join(f"{src}: {c}" for src, c in per)
            raise FitsError(
                f"NaN/inf pixels in cutouts ({desc}); use nan_policy='mask' to mask them"
            )
        mask = bad.copy()
        stack[bad] = 0.0

    psf_arr = _read_aux("psf", psf, psf_hdu, paths, n, None)
    if psf_arr is not None:
        sums = psf_arr.sum(axis=(1, 2))
        if normalize_psf:
            if (sums <= 0).any():
                raise FitsError("psf: a PSF image has non-positive sum and cannot be normalised")
            psf_arr = psf_arr / sums[:, None, None]
    var_arr = _read_aux("variance", variance, variance_hdu, paths, n, shape)
    if var_arr is not None and (var_arr < 0).any():
        raise FitsError(f"variance has {int((var_arr < 0).sum())} negative pixels")
    w_arr = _read_aux("weight", weight, weight_hdu, paths, n, shape)
    if w_arr is not None:
        if (w_arr < 0).any():
            raise FitsError(f"weight has {int((w_arr < 0).sum())} negative pixels")
        with np.errstate(divide="ignore"):
            var_arr = np.where(w_arr > 0, 1.0 / np.where(w_arr > 0, w_arr, 1.0), np.inf)
        zero = np.broadcast_to(w_arr == 0, stack.shape)
        if zero.any():
            mask = zero.copy() if mask is None else (mask | zero)
    if var_arr is not None:
        var_arr = np.broadcast_to(var_arr, stack.shape)

    def t(a: np.ndarray | None, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        return None if a is None else torch.tensor(np.asarray(a), dtype=dtype)[:, None]

    return Cutouts(
        images=t(stack),
        pixel_scale=scale_out,
        psf=t(psf_arr),
        variance=t(var_arr),
        mask=t(mask, torch.bool),
        sources=[src for src, *_ in items],
        headers=[h for _, _, h, _ in items],
    )
