"""The batched draw → render → select → background → noise loop of the ``sersic`` generator.

:func:`generate_batch` is what :meth:`lensml.sims.sersic.SersicGenerator.generate` runs;
see :mod:`lensml.sims.sersic` for the physics and the output contract.  Candidates are drawn
in batches of at most ``chunk_size``, sized from the running acceptance fraction; the
background, neighbours and noise are made only for accepted galaxies.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lensml.physics.grids import PixelGrid
from lensml.sims.imaging import ImagingSurvey

__all__ = ["generate_batch"]

_MIN_DRAWS = 256


def _index(d: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v[idx] for k, v in d.items()}


def _flux(mag: Tensor, survey: ImagingSurvey) -> Tensor:
    return survey.exptime * torch.pow(10.0, -0.4 * (mag.to(torch.float64) - survey.zeropoint_adu))


def _synthetic_scene(
    grid: PixelGrid,
    gal: dict[str, Tensor],
    psf: dict[str, Tensor],
    box: Tensor,
    rng: torch.Generator,
    cfg: Any,
    survey: ImagingSurvey,
) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour galaxies and stars, ``((B, 1, H, W) ADU, n_galaxies, n_stars)``."""
    from lensml.sims.sersic_priors import draw_priors
    from lensml.sims.sersic_scene import draw_neighbours, render_galaxies, render_points

    b = gal["x"].shape[0]
    half = (grid.nx - 1) / 2 * grid.pixel_scale
    nb = draw_neighbours(gal["x"], gal["y"], rng, cfg, half)
    scene = torch.zeros(b, 1, grid.ny, grid.nx)
    owner = nb["gal_owner"]
    if owner.numel():
        shapes = draw_priors(owner.numel(), rng, cfg)
        shapes.update(x=nb["gal_x"], y=nb["gal_y"], flux=_flux(nb["gal_mag"], survey))
        img = render_galaxies(grid, shapes, _index(psf, owner), cfg.psf_size, box[owner])
        scene.index_add_(0, owner, img)
    s_owner = nb["star_owner"]
    if s_owner.numel():
        img = render_points(
            grid, nb["star_x"], nb["star_y"], _flux(nb["star_mag"], survey),
            _index(psf, s_owner), cfg.psf_size, box[s_owner],
        )  # fmt: skip
        scene.index_add_(0, s_owner, img)
    n_gal = torch.bincount(owner, minlength=b)
    n_star = torch.bincount(s_owner, minlength=b)
    return scene, n_gal, n_star


def generate_batch(
    n: int,
    rng: torch.Generator,
    cfg: Any,
    survey: ImagingSurvey,
    stats: dict[str, int] | None = None,
) -> dict:
    """``n`` accepted galaxies with images, PSFs, variances, models, labels and aux.

    ``stats``, if given, receives the numbers of candidates ``drawn``, ``passed`` (S/N
    above the threshold; the acceptance fraction is ``passed / drawn``) and ``accepted``
    (= n; the last batch may pass more than needed).
    """
    from lensml.physics.noise import noise_variance_map, poisson_read_noise
    from lensml.sims.sersic_background import draw_cutouts, robust_sigma
    from lensml.sims.sersic_priors import LABELS, draw_priors
    from lensml.sims.sersic_scene import (
        aperture_mask,
        aperture_snr,
        draw_psf,
        psf_boxes,
        render_galaxies,
    )

    grid = PixelGrid.square(cfg.stamp_size, survey.pixel_scale)
    mask = aperture_mask(grid, cfg.snr_radius)
    use_fits = bool(cfg.background_fits)
    gain = survey.gain
    sky_var = survey.sky_adu() / gain + survey.read_variance_adu()
    read_e = survey.read_noise * math.sqrt(survey.n_exposures)
    max_draws = max(_MIN_DRAWS, math.ceil(cfg.max_draws_factor * n))
    parts: dict[str, list[Tensor]] = {}
    accepted = drawn = passed = 0
    while accepted < n:
        need = n - accepted
        frac = max(accepted / drawn, 0.05) if drawn else 0.5
        m = min(cfg.chunk_size, max(16, math.ceil(1.2 * need / frac)), max_draws - drawn)
        if m <= 0:
            raise ValueError(
                f"sersic: the S/N > {cfg.snr_min} selection (aperture radius "
                f'{cfg.snr_radius}") accepted {accepted} of {drawn} candidates '
                f"({accepted / max(drawn, 1):.1%}); the prior cannot supply {n} galaxies "
                f"within max_draws_factor={cfg.max_draws_factor}: lower snr_min, choose "
                f"brighter mag_min/mag_max, or a deeper survey (exptime, zeropoint, sky_mag)"
            )
        gal = draw_priors(m, rng, cfg)
        gal["flux"] = _flux(gal["mag"], survey)
        psf = draw_psf(m, rng, cfg, survey)
        if use_fits:
            cut = draw_cutouts(
                m, rng, list(cfg.background_fits), cfg.stamp_size, cfg.background_scale,
                cfg.background_subtract_median,
            )  # fmt: skip
            bvar = robust_sigma(cut) ** 2
        else:
            bvar = torch.full((m,), sky_var, dtype=torch.float64)
        boxes = psf_boxes(psf, cfg.psf_size, survey.pixel_scale)
        box = boxes.sum((-2, -1))
        model = render_galaxies(grid, gal, psf, cfg.psf_size, box)
        snr = aperture_snr(model, bvar, gain, mask)
        drawn += m
        keep = torch.nonzero(snr > cfg.snr_min).flatten()
        passed += keep.numel()
        keep = keep[:need]
        if keep.numel() == 0:
            continue
        accepted += keep.numel()
        gal, psf, box, bvar = _index(gal, keep), _index(psf, keep), box[keep], bvar[keep]
        model, snr = model[keep], snr[keep]
        kernel = (boxes[keep] / box[:, None, None]).unsqueeze(1)
        if use_fits:
            noisy = poisson_read_noise(model, 0.0, gain, 0.0, generator=rng)
            image = noisy + cut[keep].unsqueeze(1)
            variance = model.clamp_min(0.0) / gain + bvar.to(torch.float32)[:, None, None, None]
            n_gal = n_star = torch.zeros(keep.numel(), dtype=torch.long)
        else:
            scene, n_gal, n_star = _synthetic_scene(grid, gal, psf, box, rng, cfg, survey)
            expected = model + scene
            image = poisson_read_noise(expected, read_e, gain, survey.sky_adu(), generator=rng)
            variance = noise_variance_map(expected, read_e, gain, survey.sky_adu())
        k = keep.numel()
        aux = torch.stack(
            [
                snr, psf["fwhm_total"], torch.sqrt(bvar),
                torch.full((k,), survey.zeropoint_adu, dtype=torch.float64),
                torch.full((k,), survey.exptime, dtype=torch.float64),
                torch.full((k,), gain, dtype=torch.float64),
                gal["flux"], psf["beta"], psf["q"], torch.rad2deg(psf["phi"]),
                n_gal.to(torch.float64), n_star.to(torch.float64),
            ],
            dim=1,
        )  # fmt: skip
        labels = torch.stack([gal[key] for key in LABELS], dim=1).to(torch.float32)
        pa = labels[:, LABELS.index("pa")]
        pa[pa >= 180.0] -= 180.0  # float32 rounding of 179.99999... must not reach 180
        out = {
            "image": image, "psf": kernel, "variance": variance, "model": model,
            "labels": labels, "aux": aux,
        }  # fmt: skip
        for key, value in out.items():
            parts.setdefault(key, []).append(value.to(torch.float32))
    if stats is not None:
        stats.update(drawn=drawn, passed=passed, accepted=accepted)
    return {key: torch.cat(chunks).contiguous() for key, chunks in parts.items()}
