"""Generator ``clusters``: MOKA-like galaxy-cluster convergence and reduced-shear maps.

Each cluster (Giocoli et al. 2012; the cluster weak-lensing CNN paper, Sect. 2) is the sum of

* a **smooth NFW halo** of mass M_smooth = M_vir − Σ m_sub − M_BCG inside the host's R_vir
  with concentration c_smooth (below), made elliptical in projection (triaxial axis ratios
  of Jing & Suto 2002, random orientation, exact projection to (q, φ); see
  :mod:`lensml.sims.halos`). The projected κ is the spherical NFW κ evaluated at the
  area-preserving elliptical radius R_e² = q x'² + y'²/q (x' along the major axis), so the
  mass inside every isodensity ellipse equals the spherical one: triaxiality changes the
  shape, not the spherical-equivalent normalisation (MOKA additionally boosts or lowers
  the projected normalisation with the line-of-sight elongation — not modelled here);
* a **Hernquist BCG** at the centre, stellar mass from the Moster et al. (2013) relation;
* **subhalos** from the Giocoli et al. (2010) mass function above ``subhalo_m_min``, 3-d
  distances from the paper's eq. 5 (inside R_vir), isotropic directions, each a truncated
  SIS of total mass m with tidal truncation radius
  (:func:`lensml.sims.halos.subhalo_truncation_radius`) and θ_E = m / (π r_t Σcrit)
  (the total projected mass of a tSIS is π θ_E r_t Σcrit).

**c_smooth** (documented choice): removing the subhalos, which are less centrally
concentrated than the dark matter, and the BCG leaves a smooth component that is more
concentrated than the whole halo. c_smooth is the concentration of the NFW of mass
M_smooth inside R_vir whose 3-d mass inside the host's scale radius r_s = R_vir / c equals
the host NFW's mass there minus the subhalo mass (of this realisation) and the BCG mass
inside r_s: M_smooth μ(c_smooth / c) / μ(c_smooth) = M_vir μ(1) / μ(c) − M_sub(<r_s) −
M_BCG(<r_s), μ(x) = ln(1 + x) − x / (1 + x). Without subhalos and BCG, c_smooth = c.
f_smooth = M_smooth / M_vir (paper eq. 6).

From the total κ on the grid, γ1, γ2 follow by FFT with zero padding
(:func:`lensml.physics.fft_lensing.lensing_fields`), and the reduced shear g = γ / (1 − κ).
Where κ > 1 (the strong-lensing core of massive clusters) the observable ellipticity
response is 1 / g* (Seitz & Schneider 1997): those pixels store 1 / g*, so |g| <= 1
everywhere and the maps stay finite.

Units and defaults (the paper's text lost most numbers; these are documented choices):
masses in M_sun / h (the paper's unit; h from the cosmology, Planck18 by default), virial
overdensity of Bryan & Norman (1998); z_l = 0.2, z_s = 1.0; 512 × 512 pixels of 2″
(17.1′ field, ≈ 3.4 Mpc at z = 0.2); log10 M_vir in [14, 15.5] drawn in four bins with the
paper's test-set proportions 2324 : 2013 : 565 : 98 (the bin edges were lost and are
chosen equally spaced). Preset ``"small"`` (128² pixels of 8″, same field) is for tests
and CPU work.

Outputs of :meth:`ClusterGenerator.generate`: ``"image"`` (n, 2, H, W) float32 noiseless
(g1, g2) — shape noise is added at training time with :class:`lensml.sims.surveys.ShapeNoise`;
``"kappa"`` (n, H, W) float32; optionally ``"gamma"`` (n, 2, H, W); ``"labels"`` (n, 5)
float32: log10 M_vir [M_sun/h], c_vir, c_smooth, N_sub, f_smooth; metadata (n,) arrays
listed in :data:`METADATA_UNITS`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from lensml.config import ConfigModel
from lensml.registry import GENERATORS
from lensml.sims.base import SampleGenerator

__all__ = [
    "LABEL_UNITS",
    "METADATA_UNITS",
    "PRESETS",
    "ClusterGenerator",
    "cluster_config",
]

_ARCSEC = math.pi / 180.0 / 3600.0

LABELS = ("log10_mvir", "c_vir", "c_smooth", "n_sub", "f_smooth")
#: Unit and meaning of each label (written in FITS headers).
LABEL_UNITS = {
    "log10_mvir": ("dex(M_sun/h)", "log10 virial mass (Bryan & Norman 1998 overdensity)"),
    "c_vir": ("", "NFW concentration of the whole halo, R_vir / r_s"),
    "c_smooth": ("", "NFW concentration of the smooth component"),
    "n_sub": ("", "number of subhalos inside R_vir above subhalo_m_min"),
    "f_smooth": ("", "smooth mass fraction M_smooth / M_vir"),
}
#: Unit and meaning of the per-cluster metadata arrays.
METADATA_UNITS = {
    "z_l": ("", "lens redshift"),
    "z_s": ("", "source redshift"),
    "q": ("", "projected axis ratio of the smooth halo"),
    "phi": ("rad", "position angle of the major axis, CCW from +x"),
    "a_over_c": ("", "3-d minor-to-major axis ratio"),
    "b_over_c": ("", "3-d intermediate-to-major axis ratio"),
    "log10_m_bcg": ("dex(M_sun/h)", "log10 BCG stellar mass (-inf if no BCG)"),
    "m_sub_total": ("M_sun/h", "total subhalo mass"),
    "r_vir": ("arcsec", "virial radius"),
    "rs_smooth": ("arcsec", "scale radius of the smooth NFW"),
    "kappa_s": ("", "rho_s r_s / Sigma_crit of the smooth NFW"),
    "bcg_rs": ("arcsec", "Hernquist scale radius of the BCG"),
    "sigma_crit": ("M_sun/arcsec^2", "critical surface density at the lens"),
}

#: Named configurations: ``"paper"`` (defaults) and ``"small"`` (CPU / tests).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"size": 128, "pixel_scale": 8.0},
}


@GENERATORS.register("clusters")
class ClusterGenerator(SampleGenerator):
    """MOKA-like galaxy clusters: κ, γ and reduced-shear maps with five structural labels.

    See the module docstring for the physics and :class:`Config` for every option.
    """

    name = "clusters"
    inputs = ("image",)
    targets = ("labels",)

    class Config(ConfigModel):
        """Settings of the ``clusters`` generator (masses in M_sun / h, angles in arcsec)."""

        size: int = Field(512, ge=16, le=4096, description="map side, pixels")
        pixel_scale: float = Field(2.0, gt=0, le=60, description="arcsec / pixel")
        z_lens: float = Field(0.2, gt=0, le=3, description="lens redshift (lower bound)")
        z_lens_max: float | None = Field(
            None, gt=0, le=3, description="if set, z_l ~ U(z_lens, z_lens_max)"
        )
        z_source: float = Field(1.0, gt=0, le=10, description="source redshift")
        cosmology: str = Field("Planck18", description="astropy cosmology name")
        mass_sampling: Literal["bins", "log_uniform", "power_law"] = Field(
            "bins",
            description="'bins': bin by weight, log-uniform inside; 'log_uniform'; "
            "'power_law': dn/dlnM ∝ M^-slope (Tinker-like below the cut-off)",
        )
        log10_mass_min: float = Field(14.0, ge=10, le=16.5, description="log10 M_vir min")
        log10_mass_max: float = Field(15.5, ge=10, le=16.5, description="log10 M_vir max")
        mass_bin_edges: list[float] = Field(
            [14.0, 14.375, 14.75, 15.125, 15.5], description="log10 M_vir bin edges ('bins')"
        )
        mass_bin_weights: list[float] = Field(
            [2324, 2013, 565, 98], description="relative number per bin (paper test set)"
        )
        power_law_slope: float = Field(0.9, ge=0, le=5, description="slope for 'power_law'")
        sigma_lnc: float = Field(0.25, ge=0, le=2, description="log-normal scatter of c")
        triaxial: bool = Field(True, description="triaxial halos (False: q = 1)")
        m_star: float = Field(
            1.5e12, gt=0, description="non-linear mass M* in M_sun/h (Jing & Suto scaling)"
        )
        bcg: bool = Field(True, description="add a Hernquist BCG")
        bcg_scatter_dex: float = Field(0.15, ge=0, le=1, description="SHMR scatter, dex")
        subhalos: bool = Field(True, description="add truncated-SIS subhalos")
        subhalo_m_min: float = Field(1e10, gt=0, description="smallest subhalo mass, M_sun/h")
        shmf_amplitude: float = Field(9.33e-3, gt=0, description="Giocoli+10 A")
        shmf_alpha: float = Field(-0.9, lt=0, gt=-2, description="Giocoli+10 alpha")
        shmf_beta: float = Field(12.2715, ge=0, description="Giocoli+10 beta")
        max_subhalos: int = Field(20000, ge=1, description="cap on subhalos per cluster")
        pad_factor: int = Field(2, ge=1, le=8, description="FFT zero-padding factor")
        store_gamma: bool = Field(False, description="also store gamma (n, 2, H, W)")
        subhalo_chunk: int = Field(
            16, ge=1, le=4096, description="subhalos rendered at once (memory ~ chunk × H × W)"
        )
        subhalo_stamp_factor: float = Field(
            20.0, ge=2, description="subhalo stamp half-width in units of its r_t"
        )

        @model_validator(mode="after")
        def _consistent(self) -> ClusterGenerator.Config:
            if self.log10_mass_max <= self.log10_mass_min:
                raise ValueError("log10_mass_max must be > log10_mass_min")
            if self.z_lens_max is not None and self.z_lens_max < self.z_lens:
                raise ValueError("z_lens_max must be >= z_lens")
            if self.z_source <= (self.z_lens_max or self.z_lens):
                raise ValueError("z_source must be > every lens redshift")
            edges = self.mass_bin_edges
            if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError("mass_bin_edges must be >= 2 increasing values")
            if len(self.mass_bin_weights) != len(edges) - 1:
                raise ValueError("mass_bin_weights needs one weight per bin (len(edges) - 1)")
            if any(w < 0 for w in self.mass_bin_weights) or sum(self.mass_bin_weights) <= 0:
                raise ValueError("mass_bin_weights must be >= 0 with a positive sum")
            from lensml.physics.cosmology import _NAMED

            if self.cosmology.lower() not in _NAMED:
                raise ValueError(f"cosmology must be one of {sorted(_NAMED)}")
            return self

    # ------------------------------------------------------------------ interface
    def label_names(self, config: BaseModel) -> list[str]:
        return list(LABELS)

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        return dict.fromkeys(LABELS, "scalar")

    def pixel_scale(self, config: BaseModel) -> float:
        return float(config.pixel_scale)

    def generate(self, n: int, rng: Any, config: BaseModel) -> dict[str, Any]:
        """Draw ``n`` clusters (see the module docstring for the outputs)."""
        import torch

        from lensml.physics.fft_lensing import lensing_fields

        if not isinstance(n, int) or n < 1:
            raise ValueError(f"clusters.generate: n must be an int >= 1, got {n!r}")
        params = self.draw_params(n, rng, config)
        kappa = self.render_kappa(params, config)
        f = lensing_fields(
            kappa, config.pixel_scale, ("gamma1", "gamma2"), pad_factor=config.pad_factor
        )
        g1, g2 = observable_reduced_shear(f["gamma1"], f["gamma2"], kappa)
        out: dict[str, Any] = {
            "image": torch.stack([g1, g2], dim=1).to(torch.float32),
            "kappa": kappa.to(torch.float32),
        }
        if config.store_gamma:
            out["gamma"] = torch.stack([f["gamma1"], f["gamma2"]], dim=1).to(torch.float32)
        out["labels"] = params["labels"].to(torch.float32)
        for key in METADATA_UNITS:
            out[key] = params[key].to(torch.float32)
        return out

    # ------------------------------------------------------------------ parameters
    def draw_params(self, n: int, rng: Any, config: BaseModel) -> dict[str, Any]:
        """Draw every random ingredient of ``n`` clusters (no rendering).

        Returns
        -------
        dict
            (n,) float64 tensors (``log10_mvir``, ``c_vir``, ``c_smooth``, ``n_sub``,
            ``f_smooth``, ``labels`` (n, 5), the :data:`METADATA_UNITS` keys, ``m_vir``
            and ``m_smooth`` in M_sun/h, ``alpha_rs`` (arcsec), ``bcg_sigma0``) and the
            flat subhalo arrays ``sub_owner`` (int64), ``sub_mass`` (M_sun/h),
            ``sub_x``, ``sub_y``, ``sub_theta_e``, ``sub_rt`` (arcsec), ``sub_d3`` (3-d
            distance in R_vir).
        """
        import numpy as np
        import torch

        from lensml.physics import cosmology as cosmo_mod
        from lensml.physics.mass.nfw import kappa_s_to_alpha_rs
        from lensml.sims import halos

        c = config
        f64 = torch.float64
        cosmo = cosmo_mod.get_cosmology(c.cosmology)
        h = float(cosmo.h)
        # redshifts
        u = torch.rand(n, generator=rng, dtype=f64)
        z_hi = c.z_lens_max if c.z_lens_max is not None else c.z_lens
        z_l = c.z_lens + (z_hi - c.z_lens) * u
        z_s = torch.full((n,), float(c.z_source), dtype=f64)
        zl_np = z_l.numpy()
        d_l = torch.as_tensor(np.asarray(cosmo_mod.lens_distances(zl_np, c.z_source, cosmo)[0]))
        d_l = d_l.reshape(n).to(f64)
        scrit = torch.as_tensor(np.asarray(cosmo_mod.sigma_crit_arcsec(zl_np, c.z_source, cosmo)))
        scrit = scrit.reshape(n).to(f64)
        rho_vir = torch.as_tensor(np.asarray(cosmo_mod.overdensity_density(zl_np, "vir", cosmo)))
        rho_vir = rho_vir.reshape(n).to(f64)
        om_z = float(np.mean(cosmo.Om(zl_np)))
        # masses (M_sun/h) and concentrations
        log_m = self._draw_log_mass(n, rng, c)
        m_vir = 10.0**log_m
        conc = halos.draw_concentration(m_vir, z_l, c.sigma_lnc, rng)
        m_sun = m_vir / h
        r_vir_mpc = (3.0 * m_sun / (4.0 * math.pi * rho_vir)) ** (1.0 / 3.0)
        r_vir = r_vir_mpc / d_l / _ARCSEC
        # shape
        if c.triaxial:
            a_c, b_c = halos.draw_axis_ratios(m_vir, om_z, c.m_star, rng)
            q, phi = halos.project_ellipsoid(a_c, b_c, halos.random_rotations(n, rng))
        else:
            a_c = b_c = q = torch.ones(n, dtype=f64)
            phi = torch.zeros(n, dtype=f64)
        # BCG (stellar mass in M_sun, converted to M_sun/h for the budget)
        if c.bcg:
            m_bcg_sun = halos.bcg_stellar_mass(m_sun, z_l, c.bcg_scatter_dex, rng)
            bcg_a_mpc = halos.bcg_scale_radius_kpc(m_bcg_sun) / 1000.0
        else:
            m_bcg_sun = torch.zeros(n, dtype=f64)
            bcg_a_mpc = torch.full((n,), 1e-3, dtype=f64)
        bcg_rs = bcg_a_mpc / d_l / _ARCSEC
        bcg_sigma0 = m_bcg_sun / (2.0 * math.pi * bcg_rs**2 * scrit)
        # subhalos
        if c.subhalos:
            sub_mass, owner = halos.draw_subhalo_masses(
                m_vir, c.subhalo_m_min, z_l, rng, c.shmf_amplitude, c.shmf_alpha,
                c.shmf_beta, c.max_subhalos,
            )  # fmt: skip
            d3 = halos.draw_subhalo_radii(conc[owner], rng)
            direction = halos.isotropic_directions(len(owner), rng)
        else:
            sub_mass = torch.zeros(0, dtype=f64)
            owner = torch.zeros(0, dtype=torch.int64)
            d3 = torch.zeros(0, dtype=f64)
            direction = torch.zeros(0, 3, dtype=f64)
        n_sub = torch.bincount(owner, minlength=n).to(f64)
        m_sub_total = torch.zeros(n, dtype=f64).index_add_(0, owner, sub_mass)
        rt_rvir = halos.subhalo_truncation_radius(sub_mass, d3, m_vir[owner], conc[owner])
        sub_rt = rt_rvir * r_vir[owner]
        sub_theta_e = (sub_mass / h) / (math.pi * sub_rt * scrit[owner])
        sub_x = d3 * direction[:, 0] * r_vir[owner]
        sub_y = d3 * direction[:, 1] * r_vir[owner]
        # smooth component
        m_bcg = m_bcg_sun * h
        m_smooth = m_vir - m_sub_total - m_bcg
        if bool((m_smooth <= 0).any()):
            raise ValueError("clusters: subhalos and BCG exceed the virial mass; lower the SHMF")
        f_smooth = m_smooth / m_vir
        inner_sub = torch.zeros(n, dtype=f64).index_add_(
            0, owner, sub_mass * (d3 < 1.0 / conc[owner]).to(f64)
        )
        rs_mpc = r_vir_mpc / conc
        inner_bcg = m_bcg * rs_mpc**2 / (rs_mpc + bcg_a_mpc) ** 2
        one = torch.ones((), dtype=f64)
        target = m_vir * halos.nfw_mass_fraction(one) / halos.nfw_mass_fraction(conc)
        c_smooth = _solve_c_smooth((target - inner_sub - inner_bcg) / m_smooth, conc)
        rs_smooth = r_vir / c_smooth
        kappa_s = (m_smooth / h) / (
            4.0 * math.pi * rs_smooth**2 * halos.nfw_mass_fraction(c_smooth) * scrit
        )
        alpha_rs = kappa_s_to_alpha_rs(kappa_s, rs_smooth)
        labels = torch.stack([log_m, conc, c_smooth, n_sub, f_smooth], dim=1)
        log_bcg = torch.log10(m_bcg) if c.bcg else torch.full((n,), -math.inf, dtype=f64)
        return {
            "labels": labels,
            "log10_mvir": log_m, "c_vir": conc, "c_smooth": c_smooth, "n_sub": n_sub,
            "f_smooth": f_smooth, "m_vir": m_vir, "m_smooth": m_smooth,
            "z_l": z_l, "z_s": z_s, "q": q, "phi": phi, "a_over_c": a_c, "b_over_c": b_c,
            "log10_m_bcg": log_bcg, "m_sub_total": m_sub_total, "r_vir": r_vir,
            "rs_smooth": rs_smooth, "kappa_s": kappa_s, "alpha_rs": alpha_rs,
            "bcg_rs": bcg_rs, "bcg_sigma0": bcg_sigma0, "sigma_crit": scrit,
            "sub_owner": owner, "sub_mass": sub_mass, "sub_x": sub_x, "sub_y": sub_y,
            "sub_theta_e": sub_theta_e, "sub_rt": sub_rt, "sub_d3": d3,
        }  # fmt: skip

    @staticmethod
    def _draw_log_mass(n: int, rng: Any, c: BaseModel) -> Any:
        import torch

        f64 = torch.float64
        lo, hi = c.log10_mass_min, c.log10_mass_max
        u = torch.rand(n, generator=rng, dtype=f64)
        if c.mass_sampling == "log_uniform":
            return lo + (hi - lo) * u
        if c.mass_sampling == "power_law":
            s = c.power_law_slope
            if s == 0:
                return lo + (hi - lo) * u
            a, b = 10.0 ** (-s * lo), 10.0 ** (-s * hi)  # inverse CDF of M^-s in ln M
            return -torch.log10(a + u * (b - a)) / s
        edges = torch.tensor(c.mass_bin_edges, dtype=f64)
        w = torch.tensor(c.mass_bin_weights, dtype=f64)
        k = torch.multinomial(w, n, replacement=True, generator=rng)
        return edges[k] + (edges[k + 1] - edges[k]) * u

    # ------------------------------------------------------------------ rendering
    def render_kappa(
        self,
        params: Mapping[str, Any],
        config: BaseModel,
        components: tuple[str, ...] = ("smooth", "bcg", "subhalos"),
        dtype: Any = None,
    ) -> Any:
        """Total convergence (n, H, W) of the clusters in ``params`` (from :meth:`draw_params`).

        ``components`` selects which of ``"smooth"``, ``"bcg"``, ``"subhalos"`` are summed
        (for tests and diagnostics). float32 by default. Each subhalo's tSIS κ
        (θ_E/2)(1/R − 1/√(R² + r_t²)) is evaluated on a square stamp of half-width
        ``subhalo_stamp_factor × r_t`` around it (the full map when that is larger), batched
        over subhalos ``subhalo_chunk`` at a time and scatter-added; the mass beyond the stamp,
        a fraction ≈ 1 / (2 × subhalo_stamp_factor) of each stamped subhalo (2.5 % by default,
        ~0.1 % of M_vir), is not placed.
        """
        import torch

        from lensml.physics.grids import PixelGrid
        from lensml.physics.mass import hernquist, nfw

        dtype = dtype or torch.float32
        bad = [k for k in components if k not in ("smooth", "bcg", "subhalos")]
        if bad:
            raise ValueError(f"render_kappa: unknown components {bad}")
        n = len(params["labels"])
        grid = PixelGrid.square(config.size, config.pixel_scale)
        x, y = grid.coordinates(dtype=dtype)
        kappa = torch.zeros(n, config.size, config.size, dtype=dtype)

        def t(key: str) -> Any:
            return params[key].to(dtype)

        if "smooth" in components:
            cphi, sphi = torch.cos(t("phi"))[:, None, None], torch.sin(t("phi"))[:, None, None]
            q = t("q")[:, None, None]
            xp = x * cphi + y * sphi
            yp = -x * sphi + y * cphi
            r_e = torch.sqrt(q * xp * xp + yp * yp / q)
            kappa = kappa + nfw.convergence(
                r_e, torch.zeros_like(r_e), t("rs_smooth"), t("alpha_rs")
            )
        if "bcg" in components and config.bcg:
            kappa = kappa + hernquist.convergence(x, y, t("bcg_sigma0"), t("bcg_rs"))
        if "subhalos" in components and len(params["sub_owner"]):
            _add_subhalos(kappa, params, config, x, y)
        return kappa

    # ------------------------------------------------------------------ FITS
    def write_fits(
        self, path: Path, item: Mapping[str, Any], label_names: list[str], config: BaseModel
    ) -> None:
        """One FITS file per cluster: extensions KAPPA, GAMMA1, GAMMA2, G1, G2; labels in the
        primary header with units (the paper's format), plus the metadata."""
        import numpy as np
        import torch

        from lensml.data.fits_io import write_image_fits
        from lensml.physics.fft_lensing import shear_from_kappa

        kappa = np.asarray(item["kappa"], dtype=np.float32)
        if "gamma" in item:
            gamma = np.asarray(item["gamma"], dtype=np.float32)
            g1_, g2_ = gamma[0], gamma[1]
        else:
            gg = shear_from_kappa(torch.as_tensor(kappa)[None], pad_factor=config.pad_factor)
            g1_, g2_ = gg[0][0].numpy(), gg[1][0].numpy()
        image = np.asarray(item["image"], dtype=np.float32)
        maps = {"kappa": kappa, "gamma1": g1_, "gamma2": g2_, "g1": image[0], "g2": image[1]}
        labels: dict[str, float] = {}
        units: dict[str, str] = {}
        comments: dict[str, str] = {}
        values = np.asarray(item["labels"]).reshape(-1)
        for name, value in zip(label_names, values, strict=True):
            labels[name] = float(value)
            units[name], comments[name] = LABEL_UNITS.get(name, ("", ""))
        for key, (unit, doc) in METADATA_UNITS.items():
            if key in item:
                v = float(np.asarray(item[key]).reshape(()))
                if math.isfinite(v):
                    labels[key] = v
                    units[key], comments[key] = unit, doc
        write_image_fits(
            path, maps, pixel_scale=self.pixel_scale(config), labels=labels,
            label_units=units, label_comments=comments,
        )  # fmt: skip


def _add_subhalos(kappa: Any, params: Mapping[str, Any], config: BaseModel, x: Any, y: Any) -> None:
    """Add every subhalo's truncated-SIS κ to ``kappa`` (n, H, W) in place (see render_kappa)."""
    import torch

    _, h, w = kappa.shape
    dtype = kappa.dtype
    scale = float(config.pixel_scale)
    owner = params["sub_owner"]
    te = params["sub_theta_e"].to(dtype)
    rt = params["sub_rt"].to(dtype)
    sx, sy = params["sub_x"], params["sub_y"]
    # stamp half-width in pixels, rounded up to a multiple of 4 so subhalos share stamp sizes
    need = torch.ceil(config.subhalo_stamp_factor * params["sub_rt"] / scale / 4.0)
    half = (4 * need.clamp(min=1)).to(torch.int64)
    full = 2 * half + 1 >= max(h, w)
    jc = torch.round(sx / scale + (w - 1) / 2).to(torch.int64)  # nearest column
    ic = torch.round(sy / scale + (h - 1) / 2).to(torch.int64)  # nearest row
    flat = kappa.view(-1)
    chunk = int(config.subhalo_chunk)

    def tsis(dx: Any, dy: Any, te_: Any, rt_: Any) -> Any:
        r = torch.sqrt(dx * dx + dy * dy + 1e-12)
        root = torch.sqrt(r * r + rt_ * rt_)
        return 0.5 * te_ * rt_ * rt_ / (r * root * (root + r))

    # full-map subhalos
    for part in torch.nonzero(full).flatten().split(chunk):
        dx = x - sx[part].to(dtype)[:, None, None]
        dy = y - sy[part].to(dtype)[:, None, None]
        k = tsis(dx, dy, te[part][:, None, None], rt[part][:, None, None])
        kappa.index_add_(0, owner[part], k)
    # stamped subhalos, grouped by stamp size
    for hw in torch.unique(half[~full]).tolist():
        sel = torch.nonzero((half == hw) & ~full).flatten()
        off = torch.arange(-hw, hw + 1)
        per = max(1, (chunk * h * w) // (2 * hw + 1) ** 2)
        for part in sel.split(per):
            ii = ic[part][:, None, None] + off[None, :, None]
            jj = jc[part][:, None, None] + off[None, None, :]
            dx = ((jj - (w - 1) / 2) * scale - sx[part][:, None, None]).to(dtype)
            dy = ((ii - (h - 1) / 2) * scale - sy[part][:, None, None]).to(dtype)
            k = tsis(dx, dy, te[part][:, None, None], rt[part][:, None, None])
            inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
            index = owner[part][:, None, None] * (h * w) + ii * w + jj
            flat.index_add_(0, index[inside], k[inside])


def _solve_c_smooth(fraction: Any, conc: Any, iterations: int = 60) -> Any:
    """Solve μ(c_s / c) / μ(c_s) = fraction for c_s in [0.1, 200] by bisection in ln c_s."""
    import torch

    from lensml.sims.halos import nfw_mass_fraction

    def ratio(cs: Any) -> Any:
        return nfw_mass_fraction(cs / conc) / nfw_mass_fraction(cs)

    lo = torch.full_like(conc, math.log(0.1))
    hi = torch.full_like(conc, math.log(200.0))
    frac = torch.minimum(torch.maximum(fraction, ratio(lo.exp())), ratio(hi.exp()))
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = ratio(mid.exp()) < frac
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return torch.exp(0.5 * (lo + hi))


def observable_reduced_shear(gamma1: Any, gamma2: Any, kappa: Any) -> tuple[Any, Any]:
    """g = γ / (1 − κ) where κ < 1, and the observable 1 / g* where that exceeds 1 in modulus.

    The denominator is kept at least 1e-6 in modulus so the maps stay finite at κ = 1.
    """
    import torch

    denom = 1.0 - kappa
    denom = torch.where(denom.abs() < 1e-6, torch.full_like(denom, 1e-6), denom)
    g1, g2 = gamma1 / denom, gamma2 / denom
    mod2 = g1 * g1 + g2 * g2
    big = mod2 > 1.0
    safe = torch.where(big, mod2, torch.ones_like(mod2))
    return torch.where(big, g1 / safe, g1), torch.where(big, g2 / safe, g2)


def cluster_config(preset: str = "paper", **overrides: Any) -> BaseModel:
    """A validated :class:`ClusterGenerator.Config` from a named preset plus overrides.

    Raises
    ------
    ValueError
        Unknown preset; :class:`lensml.config.ConfigError` for bad overrides.
    """
    from lensml.sims.base import validate_config

    if preset not in PRESETS:
        raise ValueError(f"cluster_config: preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return validate_config(ClusterGenerator(), {**PRESETS[preset], **overrides})
