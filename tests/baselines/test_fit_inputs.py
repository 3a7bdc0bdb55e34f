"""lensml.baselines.fit_inputs: the input checks both likelihood fitters share."""

from __future__ import annotations

import math

import pytest
import torch

from lensml.baselines.fit_inputs import check_fit_inputs


def _good(n=2, size=12):
    img = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    psf = torch.full((1, 1, 3, 3), 1 / 9)
    return img, torch.ones_like(img), psf


def test_masked_pixels_are_neutralised_and_dtype_is_float64():
    img, noise, psf = _good()
    img[0, 0, 2, 3] = math.nan
    noise[0, 0, 2, 3] = 0.0
    mask = torch.zeros_like(img, dtype=torch.bool)
    mask[0, 0, 2, 3] = True
    ok = check_fit_inputs("Fit", img, noise, psf, mask, 0.1, 1e-3)
    assert ok.image.dtype == ok.noise.dtype == ok.psf.dtype == torch.float64
    assert float(ok.image[0, 0, 2, 3]) == 0.0 and float(ok.noise[0, 0, 2, 3]) == 1.0
    assert bool(ok.mask[0, 0, 2, 3]) and int(ok.mask.sum()) == 1
    torch.testing.assert_close(ok.image[1], img[1].double())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"pixel_scale": 0.0}, "Fit: 'pixel_scale' must be a finite number > 0"),
        ({"noise": torch.ones(2, 1, 12, 11)}, "Fit: 'variance' must have the image's shape"),
        ({"noise": -torch.ones(2, 1, 12, 12)}, "Fit: 'variance' must be finite and > 0"),
        ({"image": torch.rand(2, 1, 12, 10)}, "Fit: 'image' stamps must be square"),
        ({"image": torch.rand(2, 1, 6, 6)}, r"Fit: 'image' must hold >= 1 image of >= 9×9"),
        ({"image": torch.zeros(2, 1, 12, 12, dtype=torch.int64)}, "'image' must be a floating"),
        ({"psf": torch.full((1, 1, 4, 4), 1 / 16)}, "K odd"),
        ({"psf": torch.full((1, 1, 3, 3), 0.2)}, "unit sum"),
        ({"mask": torch.ones(2, 1, 12, 12, dtype=torch.bool)}, "'mask' hides every pixel"),
        ({"mask": torch.ones(3, 3)}, "'mask' must be a bool tensor"),
    ],
)
def test_bad_inputs_name_the_argument(kw, match):
    img, noise, psf = _good()
    args = {"image": img, "noise": noise, "psf": psf, "mask": None, "pixel_scale": 0.1}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        check_fit_inputs("Fit", psf_tol=1e-3, noise_name="variance", min_size=9, square=True,
                         **args)  # fmt: skip
