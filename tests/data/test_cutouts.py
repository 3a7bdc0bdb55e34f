"""Source catalogues (pixel and RA/Dec), images with WCS, stamp cutting and flags."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.data.cutouts import (
    FLAG_BAD_POSITION,
    FLAG_EDGE,
    FLAG_NONFINITE,
    FLAG_OFF_IMAGE,
    CatalogError,
    cut_stamps,
    read_image_with_wcs,
    read_source_catalog,
    sky_to_pixel,
)
from lensml.data.fits_io import FitsError, write_catalog

H, W, SIGMA = 220, 260, 1.4


def _positions(rng, half_integer=False):
    """Sources on a coarse lattice (≥ 40 px apart, ≥ 20 px from the edges), sub-pixel offsets."""
    gx, gy = np.meshgrid(np.arange(30.0, W - 29, 40.0), np.arange(30.0, H - 29, 40.0))
    x, y = gx.ravel(), gy.ravel()
    if half_integer:
        return x + 0.5, y + 0.5
    return x + rng.uniform(-0.5, 0.5, x.size), y + rng.uniform(-0.5, 0.5, x.size)


def _image(x, y):
    """Gaussian point sources (σ = 1.4 px) at 0-based positions; pixel centres at (j, i)."""
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    img = np.zeros((H, W))
    for a, b in zip(x, y, strict=True):
        img += np.exp(-((jj - a) ** 2 + (ii - b) ** 2) / (2 * SIGMA**2))
    return img


def _wcs():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [260.0, 35.5]
    w.wcs.crpix = [W / 2 + 0.3, H / 2 - 0.2]
    rot, s = math.radians(30.0), 0.065 / 3600
    w.wcs.cd = [[-s * math.cos(rot), s * math.sin(rot)], [s * math.sin(rot), s * math.cos(rot)]]
    return w


def _centroids(stamps):
    """First moments of each stamp about its centre, pixels (x right, y up)."""
    s = stamps.images[:, 0].double().numpy()
    n = s.shape[-1]
    c = np.arange(n) - (n - 1) / 2
    tot = s.sum(axis=(1, 2))
    return np.stack([(s * c[None, None, :]).sum((1, 2)) / tot,
                     (s * c[None, :, None]).sum((1, 2)) / tot], 1)  # fmt: skip


def test_pixel_catalogue_csv_one_based_puts_sources_at_stamp_centre(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _positions(rng)
    img = _image(x, y)
    cat = tmp_path / "cat.csv"
    rows = "\n".join(
        f"{k},{a + 1:.9f},{b + 1:.9f}" for k, (a, b) in enumerate(zip(x, y, strict=True))
    )
    cat.write_text("NUMBER,X_IMAGE,Y_IMAGE\n" + rows + "\n")
    src = read_source_catalog(cat)  # 1-based FITS/SExtractor convention by default
    assert src.frame == "pixel" and src.columns == {"x": "X_IMAGE", "y": "Y_IMAGE", "id": "NUMBER"}
    np.testing.assert_allclose(src.x, x, atol=1e-8)
    np.testing.assert_allclose(src.y, y, atol=1e-8)
    st = cut_stamps(torch.tensor(img), src.x, src.y, size=32)
    assert st.images.shape == (x.size, 1, 32, 32) and st.images.dtype == torch.float32
    assert st.valid.all() and (st.flags == 0).all()
    assert (np.abs(st.offsets) <= 0.5).all()
    # the source sits at its stamp offset from the centre (float32 stamps: 1e-4 px)
    np.testing.assert_allclose(_centroids(st), st.offsets, atol=1e-4)
    # the stamp is the image at the recorded corner
    j0, i0 = st.corners[3]
    np.testing.assert_array_equal(
        st.images[3, 0].numpy(), img[i0 : i0 + 32, j0 : j0 + 32].astype(np.float32)
    )


def test_half_integer_positions_land_exactly_on_the_centre_and_origin_zero(tmp_path):
    x, y = _positions(None, half_integer=True)
    img = _image(x, y)
    path = tmp_path / "cat.fits"
    write_catalog(path, {"xpix": x, "ypix": y})
    src = read_source_catalog(path, origin=0)
    for size in (32, 33):
        st = cut_stamps(img, src.x, src.y, size=size)
        expect = 0.0 if size % 2 == 0 else -0.5  # odd stamps centre on a pixel
        np.testing.assert_allclose(st.offsets, expect, atol=1e-12)
        np.testing.assert_allclose(_centroids(st), expect, atol=1e-5)


def test_radec_catalogue_through_the_image_wcs(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(2)
    x, y = _positions(rng)
    w = _wcs()
    img_path = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(_image(x, y), header=w.to_header(), name="SCI")]
                 ).writeto(img_path)  # fmt: skip
    image = read_image_with_wcs(img_path, require_wcs=True)
    assert image.data.shape == (H, W) and image.wcs is not None and "SCI" in image.source
    ra, dec = w.all_pix2world(x, y, 0)
    cat = tmp_path / "radec.fits"
    write_catalog(cat, {"ID": np.arange(x.size) + 100, "RA": ra * 60.0, "DEC": dec},
                  units={"RA": "arcmin", "DEC": "deg"})  # fmt: skip
    src = read_source_catalog(cat, wcs=image.wcs)
    assert src.frame == "sky" and src.ids[0] == 100
    np.testing.assert_allclose(src.x, x, atol=1e-6)
    np.testing.assert_allclose(src.y, y, atol=1e-6)
    st = cut_stamps(image.data, src.x, src.y)
    assert st.valid.all()
    np.testing.assert_allclose(_centroids(st), st.offsets, atol=1e-4)
    # explicit column names; sky_to_pixel on its own
    src2 = read_source_catalog(cat, {"ra": "RA", "dec": "DEC"}, wcs=image.wcs)
    np.testing.assert_array_equal(src2.x, src.x)
    px, _ = sky_to_pixel(image.wcs, ra, dec)
    np.testing.assert_allclose(px, x, atol=1e-6)


def test_edge_off_image_nan_pixels_and_bad_positions_are_flagged_not_raised():
    img = _image([50.0], [50.0])
    img[100, 120] = np.nan
    xs = np.array([50.0, 3.2, -4.0, 120.0, np.nan, W - 0.6, 1e30])
    ys = np.array([50.0, 100.0, 60.0, 95.0, 10.0, H - 0.6, 1e30])
    st = cut_stamps(img, xs, ys, size=32)
    assert st.valid.tolist() == [True, False, False, False, False, False, False]
    assert st.flags[1] == FLAG_EDGE
    assert st.flags[2] == FLAG_EDGE | FLAG_OFF_IMAGE
    assert st.flags[3] == FLAG_NONFINITE
    assert st.flags[4] == FLAG_BAD_POSITION and np.isnan(st.offsets[4]).all()
    assert st.flags[5] == FLAG_EDGE  # last pixel is on the image, its stamp is not
    assert st.flags[6] == FLAG_EDGE | FLAG_OFF_IMAGE
    # outside pixels are filled (NaN by default, never a silent zero); inside pixels are data
    edge = st.images[1, 0].numpy()
    assert np.isnan(edge[:, :12]).all() and np.isfinite(edge[:, 12:]).all()
    assert torch.isnan(st.images[4]).all()
    filled = cut_stamps(img, xs[:2], ys[:2], size=32, fill=0.0)
    assert (filled.images[1, 0, :, :12] == 0).all() and filled.flags[1] == FLAG_EDGE


# ----------------------------------------------------------------------------- bad input
def test_catalogue_errors_name_file_and_column(tmp_path):
    missing = tmp_path / "nope.fits"
    with pytest.raises(FitsError, match=r"nope.fits"):
        read_source_catalog(missing)
    with pytest.raises(CatalogError, match=r"nope.csv does not exist"):
        read_source_catalog(tmp_path / "nope.csv")
    cat = tmp_path / "c.csv"
    cat.write_text("a,b,flux\n1,2,3\n")
    with pytest.raises(CatalogError, match=r"c\.csv: no position columns found.*a, b, flux"):
        read_source_catalog(cat)
    with pytest.raises(CatalogError, match=r"column 'XX' \(x\) not found; columns: a, b, flux"):
        read_source_catalog(cat, {"x": "XX", "y": "b"})
    with pytest.raises(CatalogError, match="either x and y or ra and dec"):
        read_source_catalog(cat, {"x": "a", "dec": "b"})
    txt = tmp_path / "s.csv"
    txt.write_text("ra,dec\nabc,1\n")
    with pytest.raises(CatalogError, match=r"column 'ra' \(ra\) is not numeric"):
        read_source_catalog(txt, wcs=_wcs())
    sky = tmp_path / "sky.csv"
    sky.write_text("ra,dec\n260.0,35.5\n")
    with pytest.raises(CatalogError, match=r"sky.csv gives RA/Dec.*pass the image's WCS"):
        read_source_catalog(sky)
    with pytest.raises(CatalogError, match=r"unknown file type '.xlsx'"):
        read_source_catalog(tmp_path / "c.xlsx")
    with pytest.raises(ValueError, match="'origin'"):
        read_source_catalog(cat, origin=2)
    bad_unit = tmp_path / "u.fits"
    write_catalog(bad_unit, {"RA": [1.0], "DEC": [2.0]}, units={"RA": "m", "DEC": "deg"})
    with pytest.raises(CatalogError, match=r"'RA' .* unit m"):
        read_source_catalog(bad_unit, wcs=_wcs())


def test_image_errors_name_the_file(tmp_path):
    from astropy.io import fits

    table_only = tmp_path / "table_only.fits"
    write_catalog(table_only, {"x": [1.0]})
    with pytest.raises(FitsError, match=r"table_only.fits has no image HDU"):
        read_image_with_wcs(table_only)
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.zeros((8, 8))).writeto(plain)
    assert read_image_with_wcs(plain).wcs is None
    with pytest.raises(FitsError, match=r"plain.fits\[.*no celestial WCS.*RA/Dec"):
        read_image_with_wcs(plain, require_wcs=True)
    with pytest.raises(FitsError, match=r"missing.fits does not exist"):
        read_image_with_wcs(tmp_path / "missing.fits")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((4, 4, 4)), [1.0], [1.0]), "'image' must be a non-empty 2-d"),
        ((np.zeros((8, 8)), [1.0, 2.0], [1.0]), "'x_pix' and 'y_pix'"),
    ],
)
def test_cut_stamps_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        cut_stamps(*args)
    with pytest.raises(ValueError, match="'size'"):
        cut_stamps(np.zeros((8, 8)), [1.0], [1.0], size=0)
