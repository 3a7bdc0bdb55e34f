"""FITS writing and reading: WCS, labels, catalogues, cutouts, bad files, fuzzing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lensml.data.fits_io import (
    FitsError,
    label_key,
    pixel_scale_from_header,
    read_catalog,
    read_cutouts,
    read_image_fits,
    read_labels,
    write_catalog,
    write_image_fits,
)


def img(h=12, w=12, seed=0):
    return np.random.default_rng(seed).normal(size=(h, w)).astype(np.float32)


def test_image_roundtrip_with_wcs_and_labels(tmp_path):
    p = tmp_path / "a.fits"
    labels = {"g1": 0.1, "log10_Mvir": 14.5, "NAXIS_like": 3.0, "n": 4}
    units = {"log10_Mvir": "log10(Msun)"}
    write_image_fits(
        p, img(), pixel_scale=0.2, labels=labels, label_units=units, center_radec=(150, 2)
    )
    data, header = read_image_fits(p)
    assert np.array_equal(data, img())
    assert read_labels(header) == labels
    assert "HIERARCH LABEL log10_Mvir" in header and "G1" in header
    assert header.comments["HIERARCH LABEL log10_Mvir"].startswith("[log10(Msun)]")
    assert pixel_scale_from_header(header) == pytest.approx(0.2, rel=1e-12)
    w = WCS(header)
    ra, dec = w.all_pix2world([[5.5, 5.5]], 0)[0]  # 0-based centre of a 12-pixel image
    assert ra == pytest.approx(150.0) and dec == pytest.approx(2.0)
    # x to the right = RA decreasing
    ra2, _ = w.all_pix2world([[6.5, 5.5]], 0)[0]
    assert ra2 < ra
    assert not list(tmp_path.glob(".*tmp*"))


def test_label_keys():
    assert label_key("g1") == "G1"
    assert label_key("naxis1") == "HIERARCH LABEL naxis1"
    assert label_key("a_long_name") == "HIERARCH LABEL a_long_name"
    with pytest.raises(FitsError, match=r"label name"):
        label_key("bad name")


def test_multi_extension_maps(tmp_path):
    p = tmp_path / "maps.fits"
    maps = {"kappa": img(seed=1), "gamma1": img(seed=2), "gamma2": img(seed=3)}
    write_image_fits(p, maps, pixel_scale=0.5, labels={"c": 4.0})
    with fits.open(p) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "KAPPA", "GAMMA1", "GAMMA2"]
        assert hdul[0].header["C"] == 4.0 and hdul[0].data is None
        assert np.array_equal(hdul["GAMMA1"].data, maps["gamma1"])
        assert hdul["KAPPA"].header["CRPIX1"] == 6.5
    cut = read_cutouts(p, hdu="GAMMA2")
    assert torch.equal(cut.images[0, 0], torch.from_numpy(maps["gamma2"]))
    allmaps = read_cutouts(p)
    assert allmaps.images.shape == (3, 1, 12, 12) and allmaps.pixel_scale == pytest.approx(0.5)


def test_extension_scales(tmp_path):
    """A source-plane map next to the image gets its own WCS scale; bad overrides refused."""
    p = tmp_path / "lens.fits"
    maps = {"image": img(), "source": img(8, 8, seed=4)}
    write_image_fits(p, maps, pixel_scale=0.06, extension_scales={"source": 0.025})
    with fits.open(p) as hdul:
        assert pixel_scale_from_header(hdul["IMAGE"].header) == pytest.approx(0.06)
        assert pixel_scale_from_header(hdul["SOURCE"].header) == pytest.approx(0.025)
        assert hdul["SOURCE"].header["CRPIX1"] == 4.5
    with pytest.raises(FitsError, match="not a map"):
        write_image_fits(tmp_path / "a.fits", maps, pixel_scale=0.06, extension_scales={"k": 1})
    with pytest.raises(FitsError, match=r"extension_scales\['source'\]"):
        write_image_fits(tmp_path / "b.fits", maps, extension_scales={"source": -1.0})
    assert not (tmp_path / "a.fits").exists() and not (tmp_path / "b.fits").exists()


def test_write_refuses_bad_input_and_leaves_nothing(tmp_path):
    p = tmp_path / "x.fits"
    bad = img()
    bad[0, 0] = np.nan
    with pytest.raises(FitsError, match=r"NaN"):
        write_image_fits(p, bad)
    with pytest.raises(FitsError, match=r"2-d"):
        write_image_fits(p, np.zeros((2, 3, 4)))
    with pytest.raises(FitsError, match=r"pixel_scale"):
        write_image_fits(p, img(), pixel_scale=-1)
    with pytest.raises(FitsError, match=r"finite"):
        write_image_fits(p, img(), labels={"a": float("inf")})
    assert list(tmp_path.iterdir()) == []
    write_image_fits(p, img())
    with pytest.raises(FitsError, match=r"overwrite"):
        write_image_fits(p, img(), overwrite=False)


def test_catalog_roundtrip(tmp_path):
    p = tmp_path / "cat.fits"
    data = {"id": np.arange(5), "ra": np.linspace(0, 1, 5), "vec": np.ones((5, 3), np.float32)}
    write_catalog(p, data, units={"ra": "deg"})
    t = read_catalog(p)
    assert t.colnames == ["id", "ra", "vec"]
    assert np.array_equal(t["ra"], data["ra"]) and t["vec"].shape == (5, 3)
    assert str(t["ra"].unit) == "deg"
    write_catalog(tmp_path / "t2.fits", t)
    assert np.array_equal(read_catalog(tmp_path / "t2.fits")["id"], data["id"])
    with pytest.raises(FitsError, match=r"equal lengths"):
        write_catalog(tmp_path / "bad.fits", {"a": [1, 2], "b": [1]})
    with pytest.raises(FitsError, match=r"not a table"):
        read_catalog(p, hdu=0)


def _cutouts(tmp_path, n=3, scale=0.1):
    paths = []
    for i in range(n):
        p = tmp_path / f"c{i}.fits"
        write_image_fits(p, img(seed=i), pixel_scale=scale)
        paths.append(p)
    return paths


def test_read_cutouts_files_psf_weight(tmp_path):
    paths = _cutouts(tmp_path)
    psf = np.ones((5, 5))
    weight = np.full((12, 12), 4.0)
    weight[0, 0] = 0.0
    c = read_cutouts(paths, psf=psf, weight=weight)
    assert c.images.shape == (3, 1, 12, 12) and c.images.dtype == torch.float32
    assert c.pixel_scale == pytest.approx(0.1)
    assert c.psf.shape == (1, 1, 5, 5) and float(c.psf.sum()) == pytest.approx(1.0)
    assert c.variance.shape == (3, 1, 12, 12)
    assert float(c.variance[1, 0, 3, 3]) == 0.25 and torch.isinf(c.variance[0, 0, 0, 0])
    assert c.mask[:, 0, 0, 0].all() and int(c.mask.sum()) == 3
    # variance / psf from files, one per cutout
    vp = tmp_path / "var.fits"
    write_image_fits(vp, np.full((12, 12), 2.0))
    c = read_cutouts(paths, variance=[vp] * 3, psf=str(vp), pixel_scale=0.1)
    assert float(c.variance.max()) == 2.0 and c.mask is None
    with pytest.raises(FitsError, match=r"not both"):
        read_cutouts(paths, variance=vp, weight=vp)


def test_read_cutouts_extensions_in_one_file(tmp_path):
    p = tmp_path / "m.fits"
    write_image_fits(
        p, {"sci": img(), "psf": np.ones((3, 3)), "wht": np.ones((12, 12))}, pixel_scale=0.1
    )
    c = read_cutouts(p, psf_hdu="PSF", weight_hdu="WHT")
    assert c.images.shape == (1, 1, 12, 12) and c.psf.shape == (1, 1, 3, 3)
    with pytest.raises(FitsError, match=r"'VAR' not found"):
        read_cutouts(p, hdu="SCI", variance_hdu="VAR")


def test_pixel_scale_consistency(tmp_path):
    paths = _cutouts(tmp_path, n=2, scale=0.1)
    other = tmp_path / "other.fits"
    write_image_fits(other, img(), pixel_scale=0.2)
    with pytest.raises(FitsError, match=r"pixel scales differ") as err:
        read_cutouts([paths[0], other])
    assert "c0.fits" in str(err.value) and "other.fits" in str(err.value)
    assert "0.2" in str(err.value)
    with pytest.raises(FitsError, match=r"override=True"):
        read_cutouts(paths, pixel_scale=0.05)
    assert read_cutouts(paths, pixel_scale=0.05, override=True).pixel_scale == 0.05
    # no scale anywhere
    bare = tmp_path / "bare.fits"
    write_image_fits(bare, img())
    with pytest.raises(FitsError, match=r"pixel_scale="):
        read_cutouts(bare)
    assert read_cutouts(bare, pixel_scale=0.3).pixel_scale == 0.3
    # CD matrix and PIXSCALE keywords
    h = fits.Header({"CD1_1": -1e-4, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-4})
    assert pixel_scale_from_header(h) == pytest.approx(0.36)
    assert pixel_scale_from_header(fits.Header({"PIXSCALE": 0.05})) == 0.05
    with pytest.raises(FitsError, match=r"not square"):
        pixel_scale_from_header(fits.Header({"CDELT1": 1e-4, "CDELT2": 2e-4}))
    with pytest.raises(FitsError, match=r"CDELT1"):
        pixel_scale_from_header(fits.Header({"CDELT1": "abc", "CDELT2": 2e-4}))


def test_nan_pixels_raise_or_mask(tmp_path):
    p = tmp_path / "nan.fits"
    a = img()
    a[2, 3] = np.nan
    a[4, 4] = np.inf
    fits.PrimaryHDU(a, header=fits.Header({"PIXSCALE": 0.1})).writeto(p)
    with pytest.raises(FitsError, match=r"nan.fits\[PRIMARY\]: 2"):
        read_cutouts(p)
    c = read_cutouts(p, nan_policy="mask")
    assert int(c.mask.sum()) == 2 and bool(c.mask[0, 0, 2, 3]) and float(c.images[0, 0, 2, 3]) == 0


def test_shape_mismatch_and_missing(tmp_path):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    write_image_fits(a, img(12, 12), pixel_scale=0.1)
    write_image_fits(b, img(10, 10), pixel_scale=0.1)
    with pytest.raises(FitsError, match=r"different shapes"):
        read_cutouts([a, b])
    with pytest.raises(FitsError, match=r"does not exist"):
        read_cutouts(tmp_path / "missing.fits")
    with pytest.raises(FitsError, match=r"not found"):
        read_cutouts(a, hdu="KAPPA")
    with pytest.raises(FitsError, match=r"keyword 'G1'"):
        h = fits.Header({"LABELS": "g1"})
        read_labels(h)


def test_truncated_and_corrupt_files(tmp_path):
    good = tmp_path / "good.fits"
    write_image_fits(good, img(64, 64), pixel_scale=0.1)
    raw = good.read_bytes()
    for cut in (len(raw) - 2880, len(raw) - 100, 2880 + 10, 3000, 100, 0):
        bad = tmp_path / f"t{cut}.fits"
        bad.write_bytes(raw[:cut])
        with pytest.raises(FitsError, match=f"t{cut}.fits"):
            read_cutouts(bad)
    # a negative NAXIS1 in an extension sends astropy backwards through the file forever
    maps = tmp_path / "maps.fits"
    write_image_fits(maps, {"a": img(), "b": img()}, pixel_scale=0.1)
    raw = maps.read_bytes()
    at = raw.index(b"NAXIS1  =", 2880)
    maps.write_bytes(raw[:at] + b"NAXIS1  =            -      12" + raw[at + 30 :])
    with pytest.raises(FitsError, match=r"NAXIS1 = -12"):
        read_cutouts(maps)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a fits file at all" * 200)
    with pytest.raises(FitsError, match=r"junk.fits"):
        read_cutouts(junk)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=0, max_size=6000))
def test_fuzz_random_bytes(tmp_path, data):
    p = tmp_path / "fuzz.fits"
    p.write_bytes(data)
    try:
        read_cutouts(p, pixel_scale=0.1)
    except FitsError:
        pass


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=20000),
    flip=st.integers(0, 20000),
    byte=st.integers(0, 255),
)
def test_fuzz_truncated_and_flipped_valid_files(tmp_path, cut, flip, byte):
    p = tmp_path / "f.fits"
    write_image_fits(p, {"a": img(40, 40), "b": img(40, 40)}, pixel_scale=0.1, labels={"g1": 0.1})
    raw = bytearray(p.read_bytes())
    if flip < len(raw):
        raw[flip] = byte
    p.write_bytes(bytes(raw[: min(cut, len(raw))]) if cut < len(raw) else bytes(raw))
    try:
        c = read_cutouts(p, nan_policy="mask")
        assert c.images.ndim == 4
    except FitsError:
        pass


header_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**40), 2**40),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    st.booleans(),
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.dictionaries(
        st.sampled_from(
            [
                "CDELT1",
                "CDELT2",
                "CD1_1",
                "CD2_2",
                "CD1_2",
                "PIXSCALE",
                "CUNIT1",
                "PC1_1",
                "LABELS",
                "G1",
            ]
        ),
        header_values,
        max_size=5,
    ),
    given_scale=st.one_of(st.none(), st.floats(min_value=0.01, max_value=1.0)),
)
def test_fuzz_header_values(tmp_path, values, given_scale):
    p = tmp_path / "h.fits"
    hdu = fits.PrimaryHDU(img())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, v in values.items():
            try:
                hdu.header[k] = v
            except (ValueError, TypeError):
                continue
        try:
            hdu.writeto(p, overwrite=True, output_verify="silentfix")
        except Exception:
            return  # astropy itself refuses to write this header
    try:
        c = read_cutouts(p, pixel_scale=given_scale, override=True)
        assert c.pixel_scale > 0
        read_labels(c.headers[0])
    except FitsError:
        pass
