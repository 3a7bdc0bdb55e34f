"""Generator ``strong-pixelated``: training set of the pixelated source + κ RIM (Adam et al., §3).

Each example is a pair (source map, κ map) and its simulated observation (§3.3):

1. **Source** (§3.1) on the source grid (``n_source``² pixels over ``source_fov`` = 3″), surface
   brightness normalised to peak 1, drawn from a mixture (``cosmos_fraction``):

   * *COSMOS*: the parametric fits of the 100 real HST/ACS F814W < 23.5 COSMOS galaxies shipped
     in :mod:`lensml.resources` (GalSim's ``real_galaxy_catalog_23.5_example_fits``), rendered
     analytically with :func:`lensml.sims.strong_sources.sersic_subpixel_flux`
     (:mod:`lensml.physics.light.sersic`, cusp-corrected pixel integrals): a de Vaucouleurs bulge
     + exponential disk where ``use_bulgefit`` (``bulgefit[0:8]`` disk, ``[8:16]`` bulge,
     fluxes ``flux[1:3]``), else the single Sérsic of ``sersicfit`` (n clipped to [0.3, 6.2] as
     GalSim does); radii ``hlr`` are circularised (GalSim's area-preserving shear), so the
     semi-major R_e = hlr/√q; angles ``[7]``/``[15]`` rad. Rows whose fit failed
     (``fit_status`` 0 or 5 for the fit used, or ``viable_sersic = 0``) are dropped. The paper
     crops 128 native 0.03″ pixels (3.84″) and calls them a 3″ field, i.e. shrinks every galaxy
     by 3/3.84; ``cosmos_size_scale`` = 0.78125 does the same, and sizes are further capped at
     a circularised half-light radius of ``cosmos_max_hlr`` (0.5″) so that the galaxy fits the
     field. Augmentations as in §3.1: a rotation by a multiple of 90° (applied to the profile
     angles, so no resampling) and a random shift (below).
   * *analytic*: the ``strong`` generator's galaxies (:mod:`lensml.sims.strong_sources`: Sérsic
     bulge + exponential disk, clumps, spiral arms, companions; morphology mixture of the
     ``source_variant`` preset, default v6) rendered with
     :meth:`lensml.sims.strong_sources.SourceModel.render`. Their angles are already uniform,
     so no 90° rotation is applied.

   Both are centred at a random shift uniform in a disc of radius ``source_shift_max`` (0.25″)
   about the optical axis, then normalised to peak 1.
2. **κ** from :func:`lensml.sims.kappa_maps.draw_kappa_maps` (``kappa`` block; paper: 400k TNG
   + 200k SIE → 2/3 realistic, 1/3 SIE).
3. **Observation** (:func:`simulate_observations`, Table 1): Gaussian PSF of FWHM
   ~ TN(0.06, 0.3; 0.08, 0.05)″ (:func:`lensml.physics.pixelated_lensing.gaussian_psf_kernels`,
   ``psf_size``² kernel), y = F(source, κ) ⊛ PSF + σ n with σ ~ TN(0.001, 0.1; 0.01, 0.03)
   (:meth:`lensml.physics.pixelated_lensing.PixelatedLensing.simulate`). The truncations are
   in arcsec for every preset (the paper's are for its 0.06″ pixels).
   With ``vae_source`` / ``vae_kappa`` (model directories of the VAEs trained on such maps,
   :func:`lensml.pipelines.strong_pixelated.train_vae`) a fraction ``vae_fraction`` of the
   examples take their source and/or κ map from the VAE instead (the paper's enlarged training
   set, §3: "1 600 000 simulated observations from the VAE background sources and convergence
   maps"); they pass the same validity checks. ``vae_mode="prior"`` (the paper) decodes
   z ~ N(0, I); ``"posterior"`` decodes a posterior sample of the analytic map just drawn
   (a variation of it), which stays on the data manifold when the VAE is undertrained and its
   aggregate posterior is far from N(0, I) (the CPU benchmark's case).
4. **Validity** (§3.3; :func:`check_validity` on the noiseless, PSF-free lensed image): draws
   failing any check are redrawn (at most ``max_draw_factor`` × n draws, else ValueError).

Validity checks (:class:`ValidityConfig`)
-----------------------------------------
* *magnification* μ = Σ lensed · a_image / Σ source · a_source ≥ ``min_magnification`` (3)
  (the forward model point-samples the source, so for sources smaller than an image pixel the
  sum is a noisy flux estimate; for a resolved source and κ = 0 it gives 1 to < 3 %).
* *rays inside the source field*: of the image pixels within ``ray_radius`` × θ̂_E (2×) of the
  lens centre (κ-weighted centroid of the κ > 1 pixels, else the field centre; θ̂_E the κ > 1
  estimate), the fraction whose β = θ − α(θ) lands inside the source field is
  ≥ ``min_ray_fraction`` (0.9). The paper's "most pixel coordinates" cannot mean all pixels: a
  3″ source field seen through a θ_E = 0.7″ lens covers only ~20 % of a 7.69″ image; the
  neighbourhood of the Einstein ring is where lensed light can appear.
* *no single image*: the bright pixels (lensed > ``bright_fraction`` × its peak, 0.1) at
  ≥ 0.25 θ̂_E from the lens centre must span ≥ ``min_arc_span`` degrees (120°) of azimuth
  about it (360° minus the largest empty azimuthal gap). A ring spans 360°, a quad ~270°, a
  double's images sit ~140–180° apart, a single (arc-like) image of a source outside the
  caustics far less.
* *no cropped ring*: the lensed brightness within ``border_width`` (0.12″, at least one pixel)
  of the field edge stays below ``border_fraction`` (0.05) × its peak.

Outputs of :meth:`StrongPixelatedGenerator.generate` (float32)
-------------------------------------------------------------
``image`` (n, 1, N, N)        noisy observation y (units of the source: peak-1 surface brightness).
``source`` (n, 1, Ns, Ns)     true source, peak 1.
``kappa`` (n, 1, N, N)        true convergence on the image grid.
``psf`` (n, 1, K, K)          PSF kernel (unit sum).
``sigma`` (n,)                noise σ (SNR = 1/σ).
``labels`` (n, 4)             theta_e (κ > 1 estimate, arcsec; θ_E/√2 for the SIE family),
                              psf_fwhm (arcsec), sigma, magnification.
metadata (n,)                 :data:`METADATA_UNITS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import Tensor

from lensml.config import ConfigModel
from lensml.registry import GENERATORS
from lensml.sims.base import SampleGenerator
from lensml.sims.kappa_maps import KappaMapConfig

__all__ = [
    "LABELS",
    "LABEL_UNITS",
    "METADATA_UNITS",
    "PRESETS",
    "StrongPixelatedConfig",
    "StrongPixelatedGenerator",
    "ValidityConfig",
    "check_validity",
    "cosmos_sources",
    "draw_sources",
    "load_cosmos_parametric",
    "make_lens",
    "simulate_observations",
    "strong_pixelated_config",
    "validity_diagnostics",
]

LABELS = ("theta_e", "psf_fwhm", "sigma", "magnification")
#: Unit and meaning of each label (FITS headers).
LABEL_UNITS = {
    "theta_e": ("arcsec", "Einstein radius, kappa>1 mass estimate"),
    "psf_fwhm": ("arcsec", "Gaussian PSF FWHM"),
    "sigma": ("", "noise sigma (SNR = 1/sigma)"),
    "magnification": ("", "lensed / source flux"),
}
#: Unit and meaning of the per-item metadata arrays.
METADATA_UNITS = {
    "pixel_scale": ("arcsec", "image pixel scale"),
    "source_pixel_scale": ("arcsec", "source pixel scale"),
    "kappa_family": ("", "0 realistic, 1 sie"),
    "theta_e_param": ("arcsec", "SIE theta_E or rescaling target"),
    "kappa_scale": ("", "kappa rescaling factor (1 for SIE)"),
    "source_kind": ("", "0 analytic, 1 cosmos"),
    "cosmos_index": ("", "row of the COSMOS fits (-1: analytic)"),
    "arc_span": ("deg", "azimuthal span of the bright lensed light"),
    "ray_fraction": ("", "rays near the ring landing in the source field"),
}

#: Grid presets: image side, field of view, source side and field, PSF kernel side, source
#: rendering supersampling. CPU presets keep both fields of view (pixel scales ×2, ×4).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "n_image": 128,
        "fov": 7.69,
        "n_source": 128,
        "source_fov": 3.0,
        "psf_size": 21,
        "source_supersample": 2,
    },
    "small": {
        "n_image": 64,
        "fov": 7.69,
        "n_source": 64,
        "source_fov": 3.0,
        "psf_size": 11,
        "source_supersample": 4,
    },
    "tiny": {
        "n_image": 32,
        "fov": 7.69,
        "n_source": 32,
        "source_fov": 3.0,
        "psf_size": 7,
        "source_supersample": 4,
    },
}
COSMOS_PIXEL = 0.03  # arcsec, native pixel of the COSMOS fits
_CHUNK = 16  # candidates simulated at once


def _f(default: Any, doc: str, **kw: Any) -> Any:
    return Field(default, description=doc, **kw)


TN = tuple[float, float, float, float]


class ValidityConfig(ConfigModel):
    """Thresholds of :func:`check_validity` (module docstring)."""

    min_magnification: float = _f(3.0, "minimum flux magnification (§3.3)", ge=0)
    min_ray_fraction: float = _f(0.9, "rays near the ring inside the source field", ge=0, le=1)
    ray_radius: float = _f(2.0, "ray-check region radius, units of theta_E estimate", gt=0)
    bright_fraction: float = _f(0.1, "bright pixels: lensed > this x peak", gt=0, lt=1)
    min_arc_span: float = _f(120.0, "azimuthal span of bright light, degrees", ge=0, le=360)
    border_width: float = _f(0.12, "border band width, arcsec (>= 1 pixel)", ge=0)
    border_fraction: float = _f(0.05, "max lensed brightness in the band / peak", gt=0, le=1)


class StrongPixelatedConfig(ConfigModel):
    """Settings of the ``strong-pixelated`` generator; ``preset`` (paper / small / tiny) fills
    the grid fields not given explicitly from :data:`PRESETS`."""

    preset: Literal["paper", "small", "tiny"] = _f("paper", "grid preset")
    n_image: int = _f(128, "image (and kappa) side, pixels", ge=8, le=1024)
    fov: float = _f(7.69, "image field of view, arcsec", gt=0)
    n_source: int = _f(128, "source side, pixels", ge=8, le=1024)
    source_fov: float = _f(3.0, "source field of view, arcsec", gt=0)
    psf_size: int = _f(21, "PSF kernel side, pixels (odd)", ge=3, le=101)
    source_supersample: int = _f(2, "sub-pixels per source pixel side", ge=1, le=8)
    psf_fwhm_tn: TN = _f((0.06, 0.3, 0.08, 0.05), "PSF FWHM ~ TN(lo, hi; mean, sd), arcsec")
    noise_sigma_tn: TN = _f((0.001, 0.1, 0.01, 0.03), "noise sigma ~ TN(lo, hi; mean, sd)")
    cosmos_fraction: float = _f(0.5, "probability of a COSMOS source", ge=0, le=1)
    cosmos_size_scale: float = _f(0.78125, "COSMOS size factor (3/3.84, the paper's crop)", gt=0)
    cosmos_max_hlr: float = _f(0.5, "cap on the scaled circularised hlr, arcsec", gt=0)
    cosmos_dir: str | None = _f(None, "COSMOS data directory (default: shipped copy)")
    source_variant: Literal["v1", "v2", "v3", "v4", "v5", "v6"] = _f(
        "v6", "strong-generator preset of the analytic source morphologies"
    )
    source_shift_max: float = _f(0.25, "source centre within this radius, arcsec", ge=0)
    kernel: Literal["point", "pixel", "linear"] = _f(
        "point", "deflection kernel (paper: point; linear: most accurate near a cusp)"
    )
    kappa: KappaMapConfig = Field(
        default_factory=KappaMapConfig, description="kappa-map families (kappa_maps)"
    )
    validity: ValidityConfig = Field(default_factory=ValidityConfig, description="validity checks")
    max_draw_factor: float = _f(20.0, "at most this x n draws", ge=1)
    vae_source: str | None = _f(
        None, "source VAE model directory: draw sources from it (lensml train strong-pixelated)"
    )
    vae_kappa: str | None = _f(None, "kappa VAE model directory: draw kappa maps from it")
    vae_fraction: float = _f(
        1.0, "probability that an example's maps come from the VAE(s) given", ge=0, le=1
    )
    vae_mode: Literal["prior", "posterior"] = _f(
        "prior",
        "VAE draws: decoded prior samples z ~ N(0, I) (paper), or posterior samples of the "
        "freshly drawn analytic maps z ~ N(mu(x), sigma(x)^2) (variations of them)",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        name = data.get("preset", "paper")
        if name not in PRESETS:
            return data  # the Literal check reports it
        return {**PRESETS[name], **data}

    @model_validator(mode="after")
    def _consistent(self) -> StrongPixelatedConfig:
        if self.psf_size % 2 == 0:
            raise ValueError(f"psf_size must be odd; got {self.psf_size}")
        for name in ("psf_fwhm_tn", "noise_sigma_tn"):
            lo, hi, mu, sd = getattr(self, name)
            if not (0 < lo < hi and math.isfinite(hi) and sd > 0 and math.isfinite(mu)):
                raise ValueError(
                    f"{name} must be (lo, hi, mean, sd) with 0 < lo < hi and sd > 0; "
                    f"got {getattr(self, name)}"
                )
        if self.source_shift_max >= 0.5 * self.source_fov:
            raise ValueError(
                f"source_shift_max must be < source_fov / 2 = {0.5 * self.source_fov}; "
                f"got {self.source_shift_max}"
            )
        lo = self.kappa.theta_e_range[0]
        if math.pi * lo * lo <= (self.fov / self.n_image) ** 2:
            raise ValueError("kappa.theta_e_range must exceed one image pixel's radius")
        return self


@GENERATORS.register("strong-pixelated")
class StrongPixelatedGenerator(SampleGenerator):
    """Source maps, κ maps and their noisy lensed observations (Adam et al. §3).

    See the module docstring for the protocol and outputs, :class:`Config` for every option.
    """

    name = "strong-pixelated"
    inputs = ("image",)
    targets = ("source", "kappa", "labels")
    Config = StrongPixelatedConfig

    def label_names(self, config: BaseModel) -> list[str]:
        return list(LABELS)

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        return {"theta_e": "size", "psf_fwhm": "size"}

    def pixel_scale(self, config: BaseModel) -> float | None:
        """Image pixel scale, arcsec (``fov / n_image``)."""
        return float(config.fov) / int(config.n_image)

    def generate(self, n: int, rng: torch.Generator, config: BaseModel) -> dict[str, Any]:
        """Draw ``n`` valid examples (see the module docstring for the outputs).

        Raises
        ------
        ValueError
            If ``n`` is not an int >= 1, or if fewer than n of ``max_draw_factor`` × n draws
            pass the validity checks (the message gives the acceptance rate).
        """
        from lensml.sims.kappa_maps import draw_kappa_maps

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"strong-pixelated.generate: n must be an int >= 1, got {n!r}")
        c = config
        lens = make_lens(c)
        f32 = torch.float32
        keep: dict[str, list[Tensor]] = {}
        count, draws = 0, 0
        max_draws = math.ceil(c.max_draw_factor * n)
        while count < n:
            if draws >= max_draws:
                raise ValueError(
                    f"strong-pixelated: only {count} of {draws} draws passed the validity "
                    f"checks (acceptance {count / draws:.1%}); relax 'validity' "
                    f"({c.validity.model_dump()}) or the kappa/source settings"
                )
            m = min(_CHUNK, max(n - count, 1), max_draws - draws)
            kap = draw_kappa_maps(m, rng, c.n_image, c.fov, c.kappa, dtype=f32)
            src = draw_sources(m, rng, c)
            if c.vae_source or c.vae_kappa:
                _replace_with_vae_draws(src, kap, rng, c, lens)
            lensed = lens.lens(src["source"], kap["kappa"])
            diag = validity_diagnostics(lens, src["source"], kap["kappa"], lensed, c)
            ok = torch.nonzero(diag["valid"]).flatten()[: n - count]
            draws += m
            if not len(ok):
                continue
            count += len(ok)
            parts = {
                "source": src["source"],
                "kappa": kap["kappa"],
                "theta_e": kap["theta_e"],
                "kappa_family": kap["family"],
                "theta_e_param": kap["theta_e_param"],
                "kappa_scale": kap["scale"],
                "source_kind": src["kind"],
                "cosmos_index": src["cosmos_index"],
                "magnification": diag["magnification"],
                "arc_span": diag["arc_span"],
                "ray_fraction": diag["ray_fraction"],
            }
            for key, value in parts.items():
                keep.setdefault(key, []).append(value[ok])
        cat = {key: torch.cat(v) for key, v in keep.items()}
        obs = simulate_observations(lens, cat["source"], cat["kappa"], rng, c)
        labels = torch.stack(
            [cat["theta_e"], obs["psf_fwhm"], obs["sigma"], cat["magnification"]], dim=1
        )
        out: dict[str, Any] = {
            "image": obs["image"].to(f32),
            "source": cat["source"].to(f32),
            "kappa": cat["kappa"].to(f32),
            "psf": obs["psf"].to(f32),
            "sigma": obs["sigma"].to(f32),
            "labels": labels.to(f32),
            "pixel_scale": torch.full((n,), lens.pixel_scale, dtype=f32),
            "source_pixel_scale": torch.full((n,), lens.source_pixel_scale, dtype=f32),
        }
        for key in METADATA_UNITS:
            if key in cat:
                out[key] = cat[key].to(f32)
        return out

    def write_fits(
        self, path: Path, item: Mapping[str, Any], label_names: list[str], config: BaseModel
    ) -> None:
        """One FITS file per example: extensions IMAGE, SOURCE, KAPPA, PSF; labels, σ and
        metadata with units in the primary header. SOURCE's WCS uses the source pixel scale
        (``SRCSCALE``). Written atomically (temporary file, then rename)."""
        import numpy as np

        from lensml.data.fits_io import write_image_fits
        from lensml.sims.base import label_cards

        def plane(key: str) -> np.ndarray:
            return np.asarray(item[key], dtype=np.float32).reshape(item[key].shape[-2:])

        scale = self.pixel_scale(config)
        src_scale = float(config.source_fov) / int(config.n_source)
        maps = {key: plane(key) for key in ("image", "source", "kappa", "psf")}
        labels, units, comments = label_cards(item, label_names, LABEL_UNITS, METADATA_UNITS)
        header = {
            "GENERATR": ("strong-pixelated", "lensml generator"),
            "PRESET": (str(config.preset), "grid preset"),
            "BUNIT": ("", "surface brightness, source peak = 1"),
            "SRCSCALE": (src_scale, "source pixel scale, arcsec"),
        }
        write_image_fits(
            path, maps, pixel_scale=scale, labels=labels, label_units=units,
            label_comments=comments, header=header, extension_scales={"source": src_scale},
        )  # fmt: skip


def strong_pixelated_config(preset: str = "paper", **overrides: Any) -> BaseModel:
    """A validated :class:`StrongPixelatedGenerator.Config` of ``preset`` with ``overrides``.

    Raises
    ------
    lensml.config.ConfigError
        Unknown preset or bad overrides, naming the field.
    """
    from lensml.sims.base import validate_config

    return validate_config(StrongPixelatedGenerator(), {"preset": preset, **overrides})


@functools.lru_cache(maxsize=4)
def load_vae_model(path: str) -> Any:
    """A trained VAE (:func:`lensml.pipelines.strong_pixelated.train_vae`), eval mode, CPU."""
    from lensml.train import load_model

    try:
        net, _info = load_model(path, device="cpu")
    except (OSError, ValueError) as err:
        raise ValueError(f"vae model {path}: cannot be loaded ({err})") from None
    if not callable(getattr(net, "sample", None)) or not hasattr(net, "data_key"):
        raise ValueError(f"vae model {path}: not a VAE (no sample() / data_key)")
    return net.eval()


def _replace_with_vae_draws(
    src: dict[str, Tensor], kap: dict[str, Tensor], rng: torch.Generator, config: BaseModel,
    lens: Any,
) -> None:  # fmt: skip
    """Swap the maps of a random ``vae_fraction`` of the draws for VAE samples, in place.

    §3: the VAEs trained on the source and κ maps enlarge the training set. Sources are peak
    normalised like the others; a VAE κ map's θ_E label is re-estimated (κ > 1 mass) and its
    family is ``len(FAMILIES)`` ("vae"); VAE sources get kind 2.
    """
    from lensml.physics.pixelated_lensing import einstein_radius_from_kappa

    c = config
    use = torch.rand(src["source"].shape[0], generator=rng) < c.vae_fraction
    k = int(use.sum())
    if not k:
        return
    for key, path, size in (("source", c.vae_source, c.n_source),
                            ("kappa", c.vae_kappa, c.n_image)):  # fmt: skip
        if not path:
            continue
        vae = load_vae_model(str(path))
        if vae.data_key != key or int(vae.size) != int(size):
            raise ValueError(
                f"vae_{key} {path}: a {vae.data_key!r} VAE of {vae.size}² maps; expected a "
                f"{key!r} VAE of {size}² maps"
            )
        if c.vae_mode == "prior":
            maps = vae.sample(k, rng)
        else:  # a variation of the analytic map just drawn: decode a posterior sample
            with torch.no_grad():
                base = (src["source"] if key == "source" else kap["kappa"])[use]
                mu, logvar = vae.encode(base.to(next(vae.parameters()).dtype))
                eps = torch.randn(mu.shape, generator=rng, dtype=mu.dtype)
                maps = vae.decode(mu + torch.exp(0.5 * logvar) * eps)
        maps = maps.to(src["source"].dtype)
        if key == "source":
            src["source"][use] = _peak_normalise(maps.clamp_min(0))
            src["kind"][use] = 2
        else:
            kap["kappa"][use] = maps
            kap["theta_e"][use] = einstein_radius_from_kappa(maps, lens.pixel_scale).to(
                kap["theta_e"].dtype
            )
            kap["family"][use] = 2


def make_lens(config: BaseModel) -> Any:
    """The :class:`lensml.physics.pixelated_lensing.PixelatedLensing` of a config."""
    from lensml.physics.pixelated_lensing import PixelatedLensing

    c = config
    return PixelatedLensing(
        n_image=int(c.n_image),
        fov=float(c.fov),
        n_source=int(c.n_source),
        source_fov=float(c.source_fov),
        kernel=str(c.kernel),
    )


# ---------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=4)
def load_cosmos_parametric(directory: str | None = None) -> dict[str, Tensor]:
    """The usable parametric fits of the COSMOS catalogue as float64 ``(G,)`` tensors.

    Keys: ``index`` (row), ``bulge_flux, bulge_r, bulge_n, bulge_q, bulge_phi, disk_flux,
    disk_r, disk_q, disk_phi`` (radii: semi-major R_e in arcsec at the native scale; single
    Sérsic fits have zero disk flux), ``hlr`` (circularised half-light radius of the whole
    galaxy, arcsec; for bulge + disk the flux-weighted mean of the two, an approximation used
    only for the size cap). Rows are selected as in the module docstring.

    Raises
    ------
    ValueError
        If the file cannot be read or holds no usable row.
    """
    import numpy as np
    from astropy.io import fits

    from lensml.resources import cosmos_file

    path = cosmos_file("fits", directory)
    try:
        with fits.open(path, memmap=False) as hdul:
            d = hdul[1].data
            sfit = np.asarray(d["sersicfit"], dtype=np.float64)
            bfit = np.asarray(d["bulgefit"], dtype=np.float64)
            hlr = np.asarray(d["hlr"], dtype=np.float64)
            flux = np.asarray(d["flux"], dtype=np.float64)
            status = np.asarray(d["fit_status"])
            use_b = np.asarray(d["use_bulgefit"]).astype(bool)
            viable = np.asarray(d["viable_sersic"]).astype(bool)
    except (OSError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"cosmos fits '{path}': cannot read the parametric fits: {err}") from None
    bad_b = (status[:, 0] == 0) | (status[:, 0] == 5)
    bad_s = (status[:, 4] == 0) | (status[:, 4] == 5) | ~viable
    ok = np.where(use_b, ~bad_b, ~bad_s)
    ok &= np.isfinite(sfit).all(1) & np.isfinite(bfit).all(1) & np.isfinite(hlr).all(1)
    q_s, q_d, q_b = sfit[:, 3], bfit[:, 3], bfit[:, 11]
    ok &= np.where(use_b, (q_d > 0) & (q_b > 0) & (hlr[:, 1] > 0) & (hlr[:, 2] > 0), q_s > 0)
    ok &= np.where(use_b, (flux[:, 1] >= 0) & (flux[:, 2] >= 0), flux[:, 0] > 0) & (hlr[:, 0] > 0)
    idx = np.nonzero(ok)[0]
    if not len(idx):
        raise ValueError(f"cosmos fits '{path}': no usable parametric fit")
    ub = use_b[idx]
    q_s, q_d, q_b = (
        np.clip(q_s[idx], 0.05, 1),
        np.clip(q_d[idx], 0.05, 1),
        np.clip(q_b[idx], 0.05, 1),
    )
    fb = np.where(ub, flux[idx, 1], flux[idx, 0])
    fd = np.where(ub, flux[idx, 2], 0.0)
    hb = np.where(ub, hlr[idx, 1], hlr[idx, 0])
    hd = np.where(ub, hlr[idx, 2], hlr[idx, 0])
    qb = np.where(ub, q_b, q_s)
    qd = np.where(ub, q_d, q_s)
    total = fb + fd
    out = {
        "index": idx.astype(np.float64),
        "bulge_flux": fb / total,
        "bulge_r": hb / np.sqrt(qb),
        "bulge_n": np.where(ub, 4.0, np.clip(sfit[idx, 2], 0.3, 6.2)),
        "bulge_q": qb,
        "bulge_phi": np.where(ub, bfit[idx, 15], sfit[idx, 7]),
        "disk_flux": fd / total,
        "disk_r": hd / np.sqrt(qd),
        "disk_q": qd,
        "disk_phi": np.where(ub, bfit[idx, 7], sfit[idx, 7]),
        "hlr": (fb * hb + fd * hd) / total,
    }
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in out.items()}


def cosmos_sources(
    n: int,
    rng: torch.Generator,
    config: BaseModel,
    x0: Tensor,
    y0: Tensor,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """``n`` COSMOS galaxies on the source grid, peak 1, and their catalogue rows.

    Galaxies are drawn uniformly from :func:`load_cosmos_parametric`, scaled by
    ``cosmos_size_scale`` (capped at ``cosmos_max_hlr``), rotated by k·90° (k ~ U{0..3}) and
    centred at ``(x0, y0)`` (arcsec, (n,)).

    Returns
    -------
    tuple of Tensor
        ``(n, 1, Ns, Ns)`` maps and ``(n,)`` float64 row indices.
    """
    from lensml.physics.grids import PixelGrid
    from lensml.sims.strong_sources import sersic_subpixel_flux

    c = config
    cat = load_cosmos_parametric(c.cosmos_dir)
    pick = torch.randint(len(cat["index"]), (n,), generator=rng)
    rot = torch.randint(4, (n,), generator=rng).to(torch.float64) * (math.pi / 2)
    g = {k: v[pick] for k, v in cat.items()}
    scale = torch.clamp(c.cosmos_size_scale * g["hlr"], max=c.cosmos_max_hlr) / g["hlr"]
    grid = PixelGrid.square(int(c.n_source), float(c.source_fov) / int(c.n_source))
    k = int(c.source_supersample)
    xs, ys = grid.axes(k, dtype=dtype)
    h = grid.pixel_scale / k
    x0, y0 = x0.to(torch.float64), y0.to(torch.float64)
    fine = sersic_subpixel_flux(
        xs, ys, h, g["bulge_flux"], g["bulge_r"] * scale, g["bulge_n"], g["bulge_q"],
        g["bulge_phi"] + rot, x0, y0,
    )  # fmt: skip
    has_disk = g["disk_flux"] > 0
    if bool(has_disk.any()):
        fine = fine + sersic_subpixel_flux(
            xs, ys, h, g["disk_flux"], g["disk_r"] * scale, torch.ones_like(scale),
            g["disk_q"], g["disk_phi"] + rot, x0, y0,
        )  # fmt: skip
    img = torch.nn.functional.avg_pool2d(fine.unsqueeze(1), k) * (k * k)
    return _peak_normalise(img), g["index"]


def _peak_normalise(img: Tensor) -> Tensor:
    img = img.clamp_min(0.0)
    peak = img.amax(dim=(1, 2, 3), keepdim=True)
    if bool((peak <= 0).any()):
        raise ValueError("source rendering: a source has no flux on the source grid")
    return img / peak


@functools.lru_cache(maxsize=8)
def _strong_source_config(variant: str) -> Any:
    from lensml.sims.strong import strong_config

    return strong_config(variant)


def draw_sources(
    n: int, rng: torch.Generator, config: BaseModel, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """``n`` source maps of the COSMOS / analytic mixture (module docstring).

    Returns
    -------
    dict of Tensor
        ``source`` ``(n, 1, Ns, Ns)`` (peak 1), ``kind`` (n,) int64 (0 analytic, 1 COSMOS),
        ``cosmos_index`` (n,) float64 (-1 for analytic sources), ``x0, y0`` (n,) arcsec.
    """
    from lensml.physics.grids import PixelGrid
    from lensml.sims.strong_sources import SourceModel, draw_source_params

    c = config
    f64 = torch.float64
    r = c.source_shift_max * torch.sqrt(torch.rand(n, generator=rng, dtype=f64))
    a = 2 * math.pi * torch.rand(n, generator=rng, dtype=f64)
    x0, y0 = r * torch.cos(a), r * torch.sin(a)
    is_cosmos = torch.rand(n, generator=rng, dtype=f64) < c.cosmos_fraction
    out = torch.zeros(n, 1, int(c.n_source), int(c.n_source), dtype=dtype)
    index = torch.full((n,), -1.0, dtype=f64)
    ic = torch.nonzero(is_cosmos).flatten()
    ia = torch.nonzero(~is_cosmos).flatten()
    if len(ic):
        out[ic], index[ic] = cosmos_sources(len(ic), rng, c, x0[ic], y0[ic], dtype)
    if len(ia):
        params = draw_source_params(
            len(ia), rng, _strong_source_config(c.source_variant), x0[ia], y0[ia]
        )
        grid = PixelGrid.square(int(c.n_source), float(c.source_fov) / int(c.n_source))
        img = SourceModel(params, dtype=dtype).render(grid, int(c.source_supersample))
        out[ia] = _peak_normalise(img)
    return {"source": out, "kind": is_cosmos.long(), "cosmos_index": index, "x0": x0, "y0": y0}


# ---------------------------------------------------------------------- observation
def simulate_observations(
    lens: Any, source: Tensor, kappa: Tensor, rng: torch.Generator, config: BaseModel
) -> dict[str, Tensor]:
    """Draw a PSF and a noise level per example and simulate the observations (§3.3).

    Parameters
    ----------
    lens : PixelatedLensing
        Forward model (:func:`make_lens`).
    source : Tensor
        ``(B, 1, Ns, Ns)`` source maps (peak 1 by convention).
    kappa : Tensor
        ``(B, 1, N, N)`` κ maps on the image grid.
    rng : torch.Generator
        Draws FWHM, σ (truncated normals of ``psf_fwhm_tn``, ``noise_sigma_tn``) and the noise.
    config : StrongPixelatedGenerator.Config
        Supplies ``psf_fwhm_tn``, ``noise_sigma_tn`` and ``psf_size``.

    Returns
    -------
    dict of Tensor
        ``image`` (B, 1, N, N) noisy y = F(source, κ) ⊛ PSF + σ n
        (:meth:`~lensml.physics.pixelated_lensing.PixelatedLensing.simulate`), ``psf``
        (B, 1, K, K) unit sum (both in the dtype of ``kappa``), ``psf_fwhm`` (B,) arcsec and
        ``sigma`` (B,) (float64 draws).
    """
    from lensml.physics.pixelated_lensing import gaussian_psf_kernels, truncated_normal

    c = config
    b = kappa.shape[0]
    if source.shape[0] != b:
        raise ValueError(
            f"simulate_observations: source and kappa batch sizes differ ({source.shape[0]} vs {b})"
        )
    dtype = kappa.dtype
    fwhm = truncated_normal(b, *c.psf_fwhm_tn, rng)
    sigma = truncated_normal(b, *c.noise_sigma_tn, rng)
    psf = gaussian_psf_kernels(fwhm, lens.pixel_scale, size=int(c.psf_size)).to(dtype)
    psf = psf / psf.sum(dim=(-1, -2), keepdim=True)
    image = lens.simulate(source.to(dtype), kappa, psf, sigma.to(dtype), rng)
    return {"image": image, "psf": psf, "psf_fwhm": fwhm, "sigma": sigma}


# ---------------------------------------------------------------------- validity
def _validity_config(config: BaseModel) -> ValidityConfig:
    if isinstance(config, ValidityConfig):
        return config
    v = getattr(config, "validity", None)
    if not isinstance(v, ValidityConfig):
        raise ValueError(
            "check_validity: 'config' must be a ValidityConfig or a strong-pixelated Config"
        )
    return v


def validity_diagnostics(
    lens: Any, source: Tensor, kappa: Tensor, noiseless: Tensor, config: BaseModel
) -> dict[str, Tensor]:
    """The quantities behind :func:`check_validity`, each ``(B,)``.

    Returns
    -------
    dict of Tensor
        ``magnification``, ``ray_fraction``, ``arc_span`` (degrees), ``border`` (max lensed
        brightness in the border band / peak), float64, and ``valid`` (bool).
    """
    from lensml.physics.pixelated_lensing import einstein_radius_from_kappa

    v = _validity_config(config)
    f64 = torch.float64
    img = noiseless.detach().to(f64).reshape(noiseless.shape[0], *noiseless.shape[-2:])
    src = source.detach().to(f64).reshape(source.shape[0], -1)
    b, h, w = img.shape
    if kappa.shape[0] != b or src.shape[0] != b:
        raise ValueError("check_validity: source, kappa and noiseless batch sizes differ")
    a_img, a_src = lens.pixel_scale**2, lens.source_pixel_scale**2
    mag = img.sum(dim=(1, 2)) * a_img / (src.sum(dim=1) * a_src).clamp_min(1e-300)
    # lens centre and θ̂_E from κ
    k = kappa.detach().to(f64).reshape(b, h, w)
    theta = einstein_radius_from_kappa(k, lens.pixel_scale).to(f64)
    x, y = lens.image_grid.coordinates(dtype=f64)
    sup = torch.where(k > 1, k, torch.zeros_like(k))
    tot = sup.sum(dim=(1, 2))
    cx = torch.where(tot > 0, (sup * x).sum(dim=(1, 2)) / tot.clamp_min(1e-300), 0.0)
    cy = torch.where(tot > 0, (sup * y).sum(dim=(1, 2)) / tot.clamp_min(1e-300), 0.0)
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    rad = torch.sqrt(dx * dx + dy * dy)
    # rays near the ring inside the source field
    bx, by = lens.ray_trace(kappa.detach())
    half = 0.5 * lens.source_grid.fov[0]
    inside = (bx.to(f64).abs() <= half) & (by.to(f64).abs() <= half)
    near = rad <= v.ray_radius * theta.clamp_min(lens.pixel_scale)[:, None, None]
    near = near | (rad <= rad.flatten(1).min(dim=1).values[:, None, None])
    ray_frac = (inside & near).sum(dim=(1, 2)) / near.sum(dim=(1, 2)).clamp_min(1)
    # azimuthal span of the bright lensed light
    peak = img.amax(dim=(1, 2))
    bright = (img > v.bright_fraction * peak[:, None, None]) & (peak[:, None, None] > 0)
    bright = bright & (rad >= 0.25 * theta[:, None, None])
    span = _azimuthal_span(torch.atan2(dy, dx), bright)
    # border band
    width = max(1, math.ceil(v.border_width / lens.pixel_scale - 1e-9))
    band = torch.ones(h, w, dtype=torch.bool)
    band[width:-width, width:-width] = False
    border = img[:, band].amax(dim=1) / peak.clamp_min(1e-300)
    valid = (
        (mag >= v.min_magnification)
        & (ray_frac >= v.min_ray_fraction)
        & (span >= v.min_arc_span)
        & (border <= v.border_fraction)
        & (peak > 0)
    )
    return {
        "magnification": mag,
        "ray_fraction": ray_frac.to(f64),
        "arc_span": span,
        "border": border,
        "valid": valid,
    }


def _azimuthal_span(angle: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` degrees: 360 minus the largest circular gap between the azimuths (rad, (B,
    H, W)) of the pixels in ``mask``; 0 for fewer than two pixels."""
    b = angle.shape[0]
    out = torch.zeros(b, dtype=torch.float64)
    for i in range(b):
        a = angle[i][mask[i]]
        if a.numel() < 2:
            continue
        a, _ = torch.sort(a)
        gaps = torch.diff(a)
        wrap = a[0] + 2 * math.pi - a[-1]
        largest = torch.maximum(gaps.max(), wrap)
        out[i] = 360.0 - math.degrees(float(largest))
    return out


def check_validity(
    lens: Any, source: Tensor, kappa: Tensor, noiseless: Tensor, config: BaseModel
) -> Tensor:
    """Which examples are valid strong lenses (§3.3; module docstring for the criteria).

    Parameters
    ----------
    lens : PixelatedLensing
        The forward model of the maps.
    source : Tensor
        ``(B, 1, Ns, Ns)`` source maps.
    kappa : Tensor
        ``(B, 1, N, N)`` κ maps.
    noiseless : Tensor
        ``(B, 1, N, N)`` noiseless lensed image (``lens.lens(source, kappa)``; a PSF-blurred
        one works too).
    config : ValidityConfig or StrongPixelatedGenerator.Config
        Thresholds (its ``validity`` block for a generator config).

    Returns
    -------
    Tensor
        ``(B,)`` bool.
    """
    return validity_diagnostics(lens, source, kappa, noiseless, config)["valid"]
