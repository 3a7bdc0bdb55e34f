"""Generator ``shear``: realistic galaxy stamps with a known reduced shear (CNN shear paper §3).

Each stamp (32 × 32 by default, ``preset`` "clash": HST/ACS 0.065″ pixels, Gaussian PSF FWHM
0.121″; "euclid-vis", "ground": see :mod:`lensml.sims.shear_presets`) holds one galaxy

1. of reduced shear g1, g2 ~ U(−``shear_max``, ``shear_max``) independently (|g| < 1 since
   ``shear_max`` <= 0.7), the labels (GalSim convention, g1 > 0 stretches along x);
2. drawn either (fraction ``cosmos_fraction``) from the real COSMOS parametric fits rendered by
   GalSim, or from lensml's own bulge + disk + clumps model rendered in batches by torch
   (:mod:`lensml.sims.shear_galaxies`), at a uniformly random orientation;
3. with (magnitude, half-light radius) from a parametric distribution — dN/dm ∝ 10^(0.3 m)
   on [``mag_min``, ``mag_max``] (a slope typical of faint I-band galaxy counts), log10 r | m
   normal with mean log10 ``hlr_at_23`` +
   ``hlr_slope`` (m − 23) and ``hlr_scatter`` dex, truncated to [``hlr_min``, ``hlr_max``]
   (defaults: a least-squares fit to the single-Sérsic half-light radii of the shared COSMOS
   sample, magnitudes 17–22.5, extrapolated to fainter galaxies) —
   optionally resampled to match a ``target_catalog`` in the (magnitude, log10 radius) plane by
   histogram-ratio weights (the paper's §3.2). With ``cosmos_scaling="native"`` the COSMOS
   galaxies keep their own catalogue magnitude and size instead, rescaled as in the paper's
   §3.1–3.2 (radius × ``cosmos_size_scale``, flux × its square, plus ``cosmos_mag_shift``)
   and matched to the target by resampling the catalogue;
4. sheared, offset from the stamp centre after the shear by a uniform random offset of total
   extent ``offset_range`` (in pixels, or in units of the galaxy's half-light radius as in the
   paper's §5.2), convolved with the PSF and integrated over the pixels;
5. plus background noise, correlated like drizzled ACS noise (GalSim's COSMOS F814W
   correlation function, applied in pixel lags) or white, with a per-stamp level set by the
   signal-to-noise ratio.

``ring_pairs`` (off by default) makes calibration sets for the shape-noise-cancelled
measurement of m and c (a ring test): item 2k+1 is item 2k's galaxy turned by 90° before the
shear, with the same shear, offset, S/N and PSF and new noise. Pairs are counted within each
generated batch (each store shard), so use an even shard size.

S/N definition
--------------
``snr = sqrt(Σ_pixels clean²) / σ_pix`` with σ_pix the per-pixel standard deviation of the
background noise: the matched-filter S/N of the noiseless stamp in white noise of that
level (the usual GREAT3 / GalSim definition). For correlated noise the true matched-filter
S/N differs (positively correlated noise has more power on galaxy scales, so it is lower);
the definition is kept so that S/N means the same for every noise model. ``snr_mode``:
``"log_uniform"`` draws snr ~ logU(``snr_min``, ``snr_max``) per stamp and scales the noise to
it; ``"fixed_noise"`` uses one σ_pix for all stamps, set so that a round exponential galaxy of
half-light radius 0.2″ and magnitude ``depth_mag`` (convolved with the preset PSF) has S/N 10 —
the S/N then follows from each galaxy's magnitude and size, as in a survey of fixed depth.

Outputs of :meth:`ShearGenerator.generate`
------------------------------------------
``"image"`` (n, 1, S, S) float32 noisy stamp, flux units per pixel with
flux = 10^(−0.4 (mag − ``zeropoint``)); ``"clean"`` the same without noise; ``"psf"``
(n, 1, S, S) float32 unit-sum pixel-integrated PSF at the stamp scale, centred at the stamp
centre like the galaxies before their offset; ``"labels"`` (n, 2) float32 g1, g2 (``spin2``);
``"aux"`` (n, k) float32 with columns :meth:`ShearGenerator.aux_names` (units in
:data:`AUX_UNITS`).

Deviations from the paper (and why)
-----------------------------------
* The paper renders the real COSMOS *images* (GalSim's reconvolution, shrunk by α = 0.542 and
  masked below S/N 3.5 to hide their own noise, §3.1); only the parametric fits are available
  here (the image files are not shared), and they are noiseless, so no shrinking or masking is
  needed: by default COSMOS galaxies are rescaled to the drawn (magnitude, radius) instead.
* The paper's noise is the CLASH background covariance (a 7 × 7 kernel, §2.1.4); that
  measurement is not available, so the COSMOS F814W correlation function stands in (both are
  MultiDrizzle / MosaicDrizzle ACS co-adds; the COSMOS one is at 0.03″, CLASH at 0.065″).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from lensml.config import ConfigModel
from lensml.registry import GENERATORS
from lensml.sims.base import SampleGenerator

__all__ = [
    "AUX_NAMES",
    "AUX_UNITS",
    "LABEL_UNITS",
    "ShearGenerator",
    "draw_mag_radius",
    "instrument",
    "shear_config",
]

LABELS = ("g1", "g2")
#: Unit and meaning of the labels (written in FITS headers).
LABEL_UNITS = {
    "g1": ("", "reduced shear 1, >0 along x"),
    "g2": ("", "reduced shear 2, >0 along y=x"),
}
#: Columns of ``"aux"`` with their units and (short, FITS-comment) meaning:
#: ``mag`` total magnitude (config zeropoint); ``hlr_arcsec`` circularised half-light radius
#: before shear and PSF; ``snr`` sqrt(sum clean²) / per-pixel noise σ; ``dx_pix, dy_pix``
#: post-shear centroid offset from the stamp centre; ``noise_sigma`` per-pixel σ of the
#: background noise; ``source`` 0 = lensml bulge + disk + clumps, 1 = COSMOS fit (GalSim);
#: ``bulge_fraction`` B/T (own; -1 for COSMOS); ``n_clumps`` (own; -1 for COSMOS);
#: ``cosmos_index`` catalogue row (-1 for own); ``psf_index`` COSMOS PSF (-1: preset PSF);
#: ``orientation`` disk position angle (own) or rotation applied (COSMOS).
AUX_UNITS = {
    "mag": ("mag", "total magnitude"),
    "hlr_arcsec": ("arcsec", "half-light radius"),
    "snr": ("", "sqrt(sum clean^2)/sigma"),
    "dx_pix": ("pixel", "centroid offset x"),
    "dy_pix": ("pixel", "centroid offset y"),
    "noise_sigma": ("flux/pixel", "noise sigma"),
    "source": ("", "0 own, 1 COSMOS"),
    "bulge_fraction": ("", "B/T (-1: COSMOS)"),
    "n_clumps": ("", "clumps (-1: COSMOS)"),
    "cosmos_index": ("", "COSMOS row (-1: own)"),
    "psf_index": ("", "COSMOS PSF (-1: preset)"),
    "orientation": ("rad", "position angle"),
}
AUX_NAMES = tuple(AUX_UNITS)


@GENERATORS.register("shear")
class ShearGenerator(SampleGenerator):
    """Galaxy stamps with known reduced shear; see the module docstring."""

    name = "shear"
    inputs = ("image",)
    targets = ("labels",)

    class Config(ConfigModel):
        """Settings of the ``shear`` generator (angles in arcsec unless stated)."""

        preset: Literal["clash", "euclid-vis", "ground"] = Field(
            "clash", description="instrument: pixel scale, PSF, default noise"
        )
        size: int = Field(32, ge=8, le=256, description="stamp side, pixels")
        pixel_scale: float | None = Field(None, gt=0, le=2, description="override, arcsec/px")
        psf: Literal["preset", "cosmos"] = Field(
            "preset", description="'preset' PSF or a measured ACS PSF per stamp ('cosmos')"
        )
        psf_profile: Literal["gaussian", "moffat"] | None = Field(None, description="override")
        psf_fwhm: float | None = Field(None, gt=0, le=5, description="override, arcsec")
        psf_beta: float | None = Field(None, gt=1.1, le=20, description="override, Moffat beta")
        cosmos_dir: str | None = Field(
            None, description="GalSim COSMOS example data (default: LENSML_COSMOS_DIR or "
            "../shared/data/cosmos next to the repository)",
        )  # fmt: skip
        cosmos_exclusion: Literal["none", "bad_stamp", "bad_fits", "marginal"] = Field(
            "marginal", description="COSMOSCatalog exclusion_level (GalSim's default)"
        )
        shear_max: float = Field(0.2, gt=0, le=0.7, description="g1, g2 ~ U(-max, max)")
        cosmos_fraction: float = Field(0.5, ge=0, le=1, description="fraction from COSMOS fits")
        cosmos_scaling: Literal["draw", "native"] = Field(
            "draw", description="COSMOS galaxies rescaled to drawn (mag, hlr) or kept native"
        )
        cosmos_size_scale: float = Field(0.542, gt=0, le=2, description="'native': alpha")
        cosmos_mag_shift: float = Field(1.236, ge=-5, le=10, description="'native': Delta M")
        zeropoint: float = Field(
            25.94, description="mag of unit flux (ACS/WFC F814W AB, Sirianni et al. 2005)"
        )
        mag_min: float = Field(20.0, ge=10, le=35, description="brightest magnitude")
        mag_max: float = Field(26.0, ge=10, le=35, description="faintest magnitude")
        mag_slope: float = Field(0.3, ge=-1, le=1, description="dN/dm ∝ 10^(slope m)")
        hlr_at_23: float = Field(0.30, gt=0, le=5, description="median hlr at mag 23, arcsec")
        hlr_slope: float = Field(-0.118, ge=-1, le=1, description="d log10 hlr / d mag")
        hlr_scatter: float = Field(0.16, ge=0, le=1, description="log10 hlr scatter, dex")
        hlr_min: float = Field(0.03, gt=0, le=5, description="smallest hlr, arcsec")
        hlr_max: float = Field(1.0, gt=0, le=5, description="largest hlr, arcsec")
        target_catalog: str | None = Field(None, description="FITS table to match (mag, hlr)")
        target_mag_column: str = Field("mag", description="magnitude column of the target")
        target_radius_column: str = Field("hlr", description="half-light radius column")
        target_radius_unit: Literal["arcsec", "pixel"] = Field("arcsec", description="its unit")
        target_radius_kind: Literal["intrinsic", "observed"] = Field(
            "intrinsic", description="'observed': PSF-convolved, compared with "
            "sqrt(hlr² + hlr_psf²) (exact for Gaussians, approximate otherwise)",
        )  # fmt: skip
        match_bins: tuple[int, int] = Field((16, 16), description="(mag, log r) bins")
        match_pool_factor: int = Field(
            8, ge=1, le=100, description="drawn pool / n (pool at least 50 per bin)"
        )
        offset_unit: Literal["pixel", "hlr"] = Field("pixel", description="unit of offset_range")
        offset_range: float = Field(1.0, ge=0, le=20, description="total extent of the offset")
        snr_mode: Literal["log_uniform", "fixed_noise"] = Field(
            "log_uniform", description="S/N ~ logU(snr_min, snr_max), or one noise level"
        )
        snr_min: float = Field(10.0, gt=0, description="'log_uniform' lower S/N")
        snr_max: float = Field(100.0, gt=0, description="'log_uniform' upper S/N")
        depth_mag: float = Field(26.0, ge=10, le=35, description="'fixed_noise': S/N 10 mag")
        noise: Literal["preset", "cosmos", "white"] = Field("preset", description="correlation")
        noise_cf_file: str | None = Field(None, description="override of the COSMOS CF file")
        bulge_dominated_fraction: float = Field(0.2, ge=0, le=1, description="B/T ~ U(.6, 1)")
        disk_bt_max: float = Field(0.5, ge=0, le=1, description="disks: B/T ~ U(0, max)")
        n_bulge_min: float = Field(1.5, ge=0.3, le=8, description="bulge Sérsic n range")
        n_bulge_max: float = Field(4.5, ge=0.3, le=8, description="bulge Sérsic n range")
        disk_thickness: float = Field(0.2, ge=0.05, le=1, description="intrinsic disk q0")
        clump_mean: float = Field(2.0, ge=0, le=20, description="Poisson mean of clumps")
        clump_max: int = Field(8, ge=0, le=32, description="most clumps per galaxy")
        clump_flux_max: float = Field(0.4, ge=0, le=1, description="clump share ~ U(0, max)")
        oversample: int | None = Field(
            None, ge=1, le=4, description="own-galaxy render sub-grid factor; None: preset"
        )
        batch_size: int = Field(128, ge=1, le=4096, description="own galaxies per torch batch")
        ring_pairs: bool = Field(
            False, description="shape-noise cancellation: odd items are the preceding even "
            "item's galaxy rotated 90 deg before shear (same shear, offset, S/N, PSF; new noise)",
        )  # fmt: skip

        @model_validator(mode="after")
        def _consistent(self) -> ShearGenerator.Config:
            if self.mag_max <= self.mag_min:
                raise ValueError("mag_max must be > mag_min")
            if self.hlr_max <= self.hlr_min:
                raise ValueError("hlr_max must be > hlr_min")
            if self.snr_max < self.snr_min:
                raise ValueError("snr_max must be >= snr_min")
            if self.n_bulge_max < self.n_bulge_min:
                raise ValueError("n_bulge_max must be >= n_bulge_min")
            if min(self.match_bins) < 1:
                raise ValueError("match_bins must be two integers >= 1")
            needs_data = (
                self.cosmos_fraction > 0
                or self.psf == "cosmos"
                or (self.noise == "cosmos" and self.noise_cf_file is None)
                or (self.noise == "preset" and instrument(self).noise == "cosmos"
                    and self.noise_cf_file is None)
            )  # fmt: skip
            if needs_data:
                from lensml.sims.shear_presets import cosmos_data_dir

                cosmos_data_dir(self.cosmos_dir)
            if self.noise_cf_file is not None and not Path(self.noise_cf_file).is_file():
                raise ValueError(f"noise_cf_file {self.noise_cf_file!r} is not a file")
            if self.target_catalog is not None:
                from lensml.sims.shear_galaxies import read_target_catalog

                if not Path(self.target_catalog).is_file():
                    raise ValueError(f"target_catalog {self.target_catalog!r} is not a file")
                read_target_catalog(
                    self.target_catalog, self.target_mag_column, self.target_radius_column,
                    self.target_radius_unit, instrument(self).pixel_scale,
                )  # fmt: skip
            return self

    # ------------------------------------------------------------------ interface
    def label_names(self, config: BaseModel) -> list[str]:
        return list(LABELS)

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        return dict.fromkeys(LABELS, "spin2")

    def aux_names(self, config: BaseModel) -> list[str]:
        """Columns of the ``"aux"`` array (see :data:`AUX_UNITS`)."""
        return list(AUX_NAMES)

    def pixel_scale(self, config: BaseModel) -> float:
        return float(instrument(config).pixel_scale)

    def generate(self, n: int, rng: Any, config: BaseModel) -> dict[str, Any]:
        """Draw ``n`` stamps (see the module docstring for the outputs)."""
        import torch

        from lensml.sims import shear_galaxies as sg

        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"shear.generate: n must be an int >= 1, got {n!r}")
        c = config
        inst = instrument(c)
        ps, size = inst.pixel_scale, c.size
        f64 = torch.float64
        # ---- labels, sources, magnitudes and radii -------------------------------------
        g = (2 * torch.rand(n, 2, generator=rng, dtype=f64) - 1) * c.shear_max
        is_cosmos = torch.rand(n, generator=rng, dtype=f64) < c.cosmos_fraction
        mag, hlr = draw_mag_radius(n, rng, c, inst)
        cat = None
        cosmos_idx = torch.full((n,), -1, dtype=torch.int64)
        rotation = 2 * math.pi * torch.rand(n, generator=rng, dtype=f64)
        if bool(is_cosmos.any()):
            cat = sg.load_cosmos_catalog(str(_data_dir(c)), c.cosmos_exclusion)
            idx = torch.randint(0, len(cat), (n,), generator=rng)
            if c.cosmos_scaling == "native":
                idx, mag_n, hlr_n = _native_cosmos(n, rng, c, inst, cat)
                mag = torch.where(is_cosmos, mag_n, mag)
                hlr = torch.where(is_cosmos, hlr_n, hlr)
            cosmos_idx = torch.where(is_cosmos, idx, cosmos_idx)
        u = torch.rand(n, 2, generator=rng, dtype=f64) - 0.5
        unit = hlr if c.offset_unit == "hlr" else torch.full((n,), ps, dtype=f64)
        offset = u * c.offset_range * unit[:, None]  # arcsec
        own = sg.draw_own_galaxies(n, rng, c, hlr)
        snr_draw = torch.exp(
            math.log(c.snr_min)
            + math.log(c.snr_max / c.snr_min) * torch.rand(n, generator=rng, dtype=f64)
        )
        bank = None
        psf_idx = torch.full((n,), -1, dtype=torch.int64)
        if c.psf == "cosmos":
            bank = _cosmos_psf_bank(c, inst)
            psf_idx = torch.randint(0, len(bank), (n,), generator=rng)
        if c.ring_pairs:
            g, is_cosmos, mag, hlr, rotation, cosmos_idx, offset, snr_draw, psf_idx, own = (
                _ring_pairs(g, is_cosmos, mag, hlr, rotation, cosmos_idx, offset, snr_draw,
                            psf_idx, own)
            )  # fmt: skip
        flux = torch.pow(10.0, -0.4 * (mag - c.zeropoint))
        # ---- rendering -----------------------------------------------------------------
        clean = torch.zeros(n, 1, size, size, dtype=torch.float32)
        own_rows = torch.nonzero(~is_cosmos).flatten()
        for part in own_rows.split(c.batch_size) if len(own_rows) else ():
            p = {k: v[part] for k, v in own.items()}
            rpsf = _render_psf(c, inst, bank, psf_idx[part])
            clean[part] = sg.render_own_galaxies(
                p, flux[part], g[part, 0], g[part, 1], offset[part, 0], offset[part, 1],
                size, ps, rpsf,
            )  # fmt: skip
        if cat is not None:
            galsim_psf = inst.galsim_psf()
            for i in torch.nonzero(is_cosmos).flatten().tolist():
                j = int(cosmos_idx[i])
                stamp = sg.render_cosmos_stamp(
                    cat.prototypes[j], float(rotation[i]), float(hlr[i]) / float(cat.hlr[j]),
                    float(flux[i]), float(g[i, 0]), float(g[i, 1]), float(offset[i, 0]),
                    float(offset[i, 1]),
                    galsim_psf if bank is None else bank.objects[int(psf_idx[i])], size, ps,
                )  # fmt: skip
                clean[i, 0] = torch.from_numpy(stamp).to(torch.float32)
        # ---- noise ---------------------------------------------------------------------
        signal = clean.to(f64).pow(2).sum(dim=(1, 2, 3)).sqrt()
        if c.snr_mode == "log_uniform":
            sigma = signal / snr_draw
        else:
            sigma = torch.full((n,), _depth_sigma(c, inst), dtype=f64)
        snr = signal / sigma
        noise = _noise(c, inst, (n, 1, size, size), sigma, rng)
        image = clean + noise.to(torch.float32)
        if bank is None:
            psf = _preset_psf_image(inst, size).expand(n, 1, size, size).clone()
        else:
            psf = bank.images[psf_idx].to(torch.float32)
        aux = {
            "mag": mag, "hlr_arcsec": hlr, "snr": snr,
            "dx_pix": offset[:, 0] / ps, "dy_pix": offset[:, 1] / ps,
            "noise_sigma": sigma, "source": is_cosmos.to(f64),
            "bulge_fraction": torch.where(is_cosmos, -1.0, own["bt"]),
            "n_clumps": torch.where(is_cosmos, -1.0, own["n_clumps"]),
            "cosmos_index": cosmos_idx.to(f64), "psf_index": psf_idx.to(f64),
            "orientation": torch.where(is_cosmos, rotation, own["phi_d"]),
        }  # fmt: skip
        return {
            "image": image,
            "clean": clean,
            "psf": psf,
            "labels": g.to(torch.float32),
            "aux": torch.stack([aux[k] for k in AUX_NAMES], dim=1).to(torch.float32),
        }

    # ------------------------------------------------------------------ FITS
    def write_fits(
        self, path: Path, item: Mapping[str, Any], label_names: list[str], config: BaseModel
    ) -> None:
        """One FITS file per stamp: extensions IMAGE, PSF, CLEAN; g1, g2 and the aux values in
        the primary header with units."""
        import numpy as np

        from lensml.data.fits_io import write_image_fits

        maps = {
            key: np.asarray(item[key], dtype=np.float32).reshape(item[key].shape[-2:])
            for key in ("image", "psf", "clean")
            if key in item
        }
        labels: dict[str, float] = {}
        units: dict[str, str] = {}
        comments: dict[str, str] = {}
        values = np.asarray(item["labels"]).reshape(-1)
        for name, value in zip(label_names, values, strict=True):
            labels[name] = float(value)
            units[name], comments[name] = LABEL_UNITS.get(name, ("", ""))
        if "aux" in item:
            for name, value in zip(AUX_NAMES, np.asarray(item["aux"]).reshape(-1), strict=True):
                labels[name] = float(value)
                units[name], comments[name] = AUX_UNITS[name]
        write_image_fits(
            path, maps, pixel_scale=self.pixel_scale(config), labels=labels,
            label_units=units, label_comments=comments,
        )  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _ring_pairs(
    g: Any,
    is_cosmos: Any,
    mag: Any,
    hlr: Any,
    rotation: Any,
    cosmos_idx: Any,
    offset: Any,
    snr_draw: Any,
    psf_idx: Any,
    own: dict[str, Any],
) -> tuple[Any, ...]:
    """Make item 2k+1 the galaxy of item 2k turned by 90° before the shear (a ring test).

    The intrinsic ellipticity changes sign (e → e·exp(iπ) for a 90° turn), so the mean of the
    two estimates of a pair cancels the shape noise to first order (Nakajima & Bernstein 2007;
    Massey et al. 2007, STEP2). The pair shares the shear, offset, magnitude, size, S/N draw
    and PSF; the noise is drawn independently. An odd last item stays unpaired.
    """
    import torch

    n = int(g.shape[0])
    even, odd = torch.arange(0, n - 1, 2), torch.arange(1, n, 2)

    def pair(x: Any) -> Any:
        x = x.clone()
        x[odd] = x[even]
        return x

    g, is_cosmos, mag, hlr, cosmos_idx, offset, snr_draw, psf_idx = (
        pair(x) for x in (g, is_cosmos, mag, hlr, cosmos_idx, offset, snr_draw, psf_idx)
    )
    rotation = pair(rotation)
    rotation[odd] = rotation[odd] + math.pi / 2
    own = {k: pair(v) for k, v in own.items()}
    for k in ("phi_b", "phi_d"):
        own[k][odd] = own[k][odd] + math.pi / 2
    cx, cy = own["clump_x"][odd].clone(), own["clump_y"][odd].clone()
    own["clump_x"][odd], own["clump_y"][odd] = -cy, cx  # (x, y) → (−y, x): +90°
    return g, is_cosmos, mag, hlr, rotation, cosmos_idx, offset, snr_draw, psf_idx, own


def instrument(config: BaseModel) -> Any:
    """The :class:`~lensml.sims.shear_presets.Instrument` of a config (preset + overrides)."""
    from lensml.sims.shear_presets import resolve_instrument

    return resolve_instrument(
        config.preset, pixel_scale=config.pixel_scale, psf_profile=config.psf_profile,
        psf_fwhm=config.psf_fwhm, psf_beta=config.psf_beta, oversample=config.oversample,
    )  # fmt: skip


def _data_dir(c: BaseModel) -> Path:
    from lensml.sims.shear_presets import cosmos_data_dir

    return cosmos_data_dir(c.cosmos_dir)


def _match_radius(c: BaseModel, inst: Any, hlr: Any) -> Any:
    """Radius compared with the target catalogue's (intrinsic or PSF-convolved)."""
    if c.target_radius_kind == "intrinsic":
        return hlr
    from lensml.sims.shear_presets import psf_hlr

    return (hlr**2 + psf_hlr(inst) ** 2) ** 0.5


@functools.lru_cache(maxsize=8)
def _target(path: str, mtime: int, mag_col: str, r_col: str, unit: str, ps: float) -> Any:
    from lensml.sims.shear_galaxies import read_target_catalog

    return read_target_catalog(path, mag_col, r_col, unit, ps)


def _target_of(c: BaseModel, inst: Any) -> Any:
    path = Path(c.target_catalog).resolve()
    return _target(
        str(path), path.stat().st_mtime_ns, c.target_mag_column, c.target_radius_column,
        c.target_radius_unit, inst.pixel_scale,
    )  # fmt: skip


def draw_mag_radius(n: int, rng: Any, c: BaseModel, inst: Any | None = None) -> tuple[Any, Any]:
    """Magnitudes and half-light radii (arcsec) of ``n`` galaxies, ``(n,)`` float64 each.

    Parametric draws (:func:`~lensml.sims.shear_galaxies.draw_magnitudes`,
    :func:`~lensml.sims.shear_galaxies.draw_radii`); with ``target_catalog`` a pool of
    ``max(match_pool_factor n, 50 × bins)`` draws is resampled by histogram-ratio weights to
    the catalogue's (mag, log10 radius) distribution, the radius compared being the intrinsic
    one or, for ``target_radius_kind="observed"``, sqrt(hlr² + hlr_psf²).
    """
    inst = instrument(c) if inst is None else inst
    import numpy as np

    from lensml.sims import shear_galaxies as sg

    bins = c.match_bins[0] * c.match_bins[1]
    m = n if c.target_catalog is None else max(n * c.match_pool_factor, 50 * bins)
    mag = sg.draw_magnitudes(m, rng, c.mag_min, c.mag_max, c.mag_slope)
    hlr = sg.draw_radii(mag, rng, c.hlr_at_23, c.hlr_slope, c.hlr_scatter, c.hlr_min, c.hlr_max)
    if c.target_catalog is None:
        return mag, hlr
    t_mag, t_r = _target_of(c, inst)
    w = sg.histogram_ratio_weights(
        mag.numpy(), np.log10(_match_radius(c, inst, hlr.numpy())), t_mag, np.log10(t_r),
        tuple(c.match_bins),
    )  # fmt: skip
    idx = sg.resample_indices(w.weights, n, rng)
    return mag[idx], hlr[idx]


def _native_cosmos(n: int, rng: Any, c: BaseModel, inst: Any, cat: Any) -> tuple[Any, Any, Any]:
    """Catalogue rows, magnitudes and radii of COSMOS galaxies kept at their native (rescaled)
    magnitude and size: hlr × alpha, mag − 5 log10(alpha) + Delta M; matched to the target."""
    import numpy as np
    import torch

    from lensml.sims import shear_galaxies as sg

    alpha = c.cosmos_size_scale
    mag = torch.as_tensor(cat.mag - 5.0 * math.log10(alpha) + c.cosmos_mag_shift)
    hlr = torch.as_tensor(cat.hlr * alpha)
    if c.target_catalog is None:
        idx = torch.randint(0, len(cat), (n,), generator=rng)
    else:
        t_mag, t_r = _target_of(c, inst)
        w = sg.histogram_ratio_weights(
            mag.numpy(), np.log10(_match_radius(c, inst, hlr.numpy())), t_mag, np.log10(t_r),
            tuple(c.match_bins),
        )  # fmt: skip
        idx = sg.resample_indices(w.weights, n, rng)
    return idx, mag[idx].to(torch.float64), hlr[idx].to(torch.float64)


def _margin(c: BaseModel, inst: Any) -> int:
    from lensml.sims.shear_presets import psf_margin

    if c.psf == "cosmos":  # the ACS PSF images are 37-39 pixels of 0.03″
        return max(2, math.ceil(20 * 0.03 / inst.pixel_scale))
    return psf_margin(inst)


def _cosmos_psf_bank(c: BaseModel, inst: Any) -> Any:
    from lensml.sims.shear_presets import COSMOS_FILES, load_cosmos_psfs

    m, fb = _margin(c, inst), inst.oversample
    path = str(_data_dir(c) / COSMOS_FILES["psf"])
    return load_cosmos_psfs(path, inst.pixel_scale, c.size, fb, m)


@functools.lru_cache(maxsize=16)
def _preset_psf_image(inst: Any, size: int) -> Any:
    from lensml.sims.shear_presets import parametric_psf_image

    return parametric_psf_image(inst, size)


def _render_psf(c: BaseModel, inst: Any, bank: Any, psf_idx: Any) -> Any:
    import torch

    from lensml.sims.shear_galaxies import RenderPSF

    if bank is None:
        return RenderPSF(inst.psf_params(), _margin(c, inst), inst.oversample)
    return RenderPSF(bank.kernels[psf_idx].to(torch.float32), _margin(c, inst), inst.oversample)


def _depth_sigma(c: BaseModel, inst: Any) -> float:
    """Per-pixel σ giving S/N 10 to a round exponential of hlr 0.2″ at ``depth_mag``."""
    import torch

    from lensml.sims.shear_galaxies import render_own_galaxies

    f64 = torch.float64
    one, zero = torch.ones(1, dtype=f64), torch.zeros(1, dtype=f64)
    p = {
        "bt": zero, "n_b": one * 4, "q_b": one, "phi_b": zero, "r_b": one * 0.1,
        "q_d": one, "phi_d": zero, "r_d": one * 0.2, "clump_frac": zero,
        "clump_x": torch.zeros(1, 0, dtype=f64), "clump_y": torch.zeros(1, 0, dtype=f64),
        "clump_sigma": torch.ones(1, 0, dtype=f64), "clump_weight": torch.zeros(1, 0, dtype=f64),
    }  # fmt: skip
    flux = one * 10.0 ** (-0.4 * (c.depth_mag - c.zeropoint))
    rpsf = _render_psf(c.model_copy(update={"psf": "preset"}), inst, None, None)
    img = render_own_galaxies(p, flux, zero, zero, zero, zero, c.size, inst.pixel_scale, rpsf, f64)
    return float(img.pow(2).sum().sqrt()) / 10.0


@functools.lru_cache(maxsize=4)
def _correlation(path: str) -> Any:
    from lensml.physics.noise import read_correlation_function

    try:
        return read_correlation_function(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"noise_cf_file {path}: cannot read a correlation function ({err})"
        ) from None


def _noise(c: BaseModel, inst: Any, shape: tuple[int, ...], sigma: Any, rng: Any) -> Any:
    """Background noise of per-pixel σ ``sigma`` ((n,) arcsec-free flux units)."""
    import torch

    from lensml.physics.noise import correlated_noise
    from lensml.sims.shear_presets import COSMOS_FILES

    kind = inst.noise if c.noise == "preset" else c.noise
    if kind == "white":
        return torch.randn(shape, generator=rng, dtype=torch.float64) * sigma[:, None, None, None]
    path = c.noise_cf_file or str(_data_dir(c) / COSMOS_FILES["noise_cf"])
    cf = _correlation(str(path))
    return correlated_noise(shape, sigma, generator=rng, correlation=cf, dtype=torch.float64)


def shear_config(preset: str = "clash", **overrides: Any) -> BaseModel:
    """A validated :class:`ShearGenerator.Config` for ``preset`` plus overrides.

    Raises
    ------
    lensml.config.ConfigError
        For unknown or invalid fields (naming them).
    """
    from lensml.sims.base import validate_config

    return validate_config(ShearGenerator(), {"preset": preset, **overrides})
