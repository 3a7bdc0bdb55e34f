"""``lensml quickstart``: the README's main job — one HTML report of every pipeline.

Sections (``--pipelines`` picks a subset; ``--full`` runs the bigger version of each):

``gallery``
    What the physics core simulates: a strong-lens arc (SIE + shear lensing a Sérsic + clumps
    source, σ_v → θ_E through the cosmology, PSF and CCD noise), an NFW cluster's weak-lensing
    field (κ from (M200c, c), γ by FFT, reduced shear with Euclid shape noise, checked against
    the analytic tangential shear) and a PSF-convolved Sérsic galaxy stamp.
``clusters``, ``sersic``, ``shear``, ``strong``, ``strong-pixelated``
    Each pipeline's ``quickstart_section`` (:mod:`lensml.pipelines`): simulate a small data
    set, use the shipped weights or train a small preset briefly on CPU, and judge the network
    against the pipeline's classical baseline in the paper's table form, with its key figures.

Outputs in ``OUT``: ``report.html`` (self-contained: figures embedded), the PNGs, and
``quickstart.json`` with every number. Everything is seeded and written atomically.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lensml import __version__


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_figure(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic_write_bytes(path, buf.getvalue())
    return path


def _lensed_arc(torch, gen, device) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from lensml.physics import cosmology, noise, psf
    from lensml.physics.grids import PixelGrid
    from lensml.physics.light import gaussian, sersic
    from lensml.physics.mass import shear, sie
    from lensml.physics.raytrace import render_lensed

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    z_l, z_s, sigma_v = 0.5, 2.0, u(230.0, 290.0)
    theta_e = float(cosmology.theta_e_from_sigma_v(sigma_v, z_l, z_s))
    lens = {"theta_e": theta_e, "q": u(0.6, 0.9), "phi": u(0, math.pi), "x0": 0.0, "y0": 0.0}
    ext = {"gamma1": u(-0.05, 0.05), "gamma2": u(-0.05, 0.05)}
    src = {
        "amp": 1.0,
        "r_eff": u(0.15, 0.3),
        "n": u(0.8, 1.5),
        "q": u(0.5, 0.9),
        "phi": u(0, math.pi),
        "x0": u(-0.1, 0.1),
        "y0": u(-0.1, 0.1),
    }
    clumps = [
        {
            "flux": u(0.02, 0.06),
            "sigma": u(0.02, 0.05),
            "q": 1.0,
            "phi": 0.0,
            "x0": src["x0"] + u(-0.25, 0.25),
            "y0": src["y0"] + u(-0.25, 0.25),
        }
        for _ in range(3)
    ]

    def source(bx, by):
        sb = sersic.surface_brightness(bx, by, **src)
        for c in clumps:
            sb = sb + gaussian.surface_brightness(bx, by, **c)
        return sb

    def deflect(x, y):
        a1 = sie.deflection(x, y, **lens)
        a2 = shear.deflection(x, y, **ext)
        return a1[0] + a2[0], a1[1] + a2[1]

    grid = PixelGrid.square(96, 0.04)
    dtype = torch.float32
    kernel = psf.gaussian_psf(0.1, 21, grid.pixel_scale, dtype=dtype, device=device)
    exposure = 6000.0  # s; counts scale: a bright, space-like observation
    clean = (
        render_lensed(grid, deflect, source, supersample=4, psf=kernel, dtype=dtype, device=device)
        * exposure
    )
    noisy = noise.poisson_read_noise(clean, read_noise_e=5.0, sky=10.0, generator=gen)
    xs, ys = grid.coordinates(dtype=dtype, device=device)
    kappa = sie.convergence(xs, ys, **lens) + shear.convergence(xs, ys, **ext)
    src_grid = PixelGrid.square(96, 0.02)
    sx, sy = src_grid.coordinates(dtype=dtype, device=device)
    unlensed = source(sx, sy)
    params = {
        "z_l": z_l,
        "z_s": z_s,
        "sigma_v_kms": sigma_v,
        "lens_sie": lens,
        "external_shear": ext,
        "source_sersic": src,
        "source_clumps": clumps,
        "psf_fwhm_arcsec": 0.1,
        "exposure_s": exposure,
        "pixel_scale_arcsec": 0.04,
    }
    maps = {
        "source": unlensed[0].cpu().numpy(),
        "kappa": kappa[0].cpu().numpy(),
        "clean": clean[0, 0].cpu().numpy(),
        "observed": noisy[0, 0].cpu().numpy(),
        "source_extent": np.array(src_grid.extent),
        "extent": np.array(grid.extent),
    }
    return params, maps


def _nfw_field(torch, gen, device) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from lensml.physics import cosmology, fft_lensing, noise
    from lensml.physics.grids import PixelGrid
    from lensml.physics.mass import nfw

    m200, conc, z_l, z_s = 8e14, 4.0 + float(torch.rand((), generator=gen)), 0.3, 1.0
    rs, alpha_rs, kappa_s = cosmology.nfw_lensing_params(m200, conc, z_l, z_s, mass_def="200c")
    grid = PixelGrid.square(256, 2.0)  # 8.5′ field, 2″ pixels
    dtype = torch.float64
    x, y = grid.coordinates(dtype=dtype, device=device)
    kappa = nfw.convergence(x, y, r_s=float(rs), alpha_rs=float(alpha_rs))
    kappa = torch.nan_to_num(kappa, posinf=float(kappa[torch.isfinite(kappa)].max()))
    g1, g2 = fft_lensing.shear_from_kappa(kappa, pad_factor=2)
    red1, red2 = fft_lensing.reduced_shear(g1, g2, kappa)
    # noise on 20″ cells (10×10 pixels averaged), Euclid-wide source density
    cell = 10
    c1 = torch.nn.functional.avg_pool2d(red1[:, None], cell)[:, 0]
    c2 = torch.nn.functional.avg_pool2d(red2[:, None], cell)[:, 0]
    sigma = noise.shape_noise_sigma(grid.pixel_scale * cell, sigma_e=0.3, n_gal_per_arcmin2=30.0)
    n1, n2 = noise.add_shape_noise(c1, c2, sigma, generator=gen)
    r = torch.sqrt(x * x + y * y)
    phi = torch.atan2(y, x)
    gt_map = -(g1[0] * torch.cos(2 * phi) + g2[0] * torch.sin(2 * phi))
    edges = torch.linspace(5.0, 205.0, 41, dtype=dtype, device=device)
    gt_fft = torch.stack(
        [gt_map[(r >= lo) & (r < hi)].mean() for lo, hi in itertools.pairwise(edges)]
    )
    centres = 0.5 * (edges[:-1] + edges[1:])
    gt_true = nfw.tangential_shear(centres, r_s=float(rs), alpha_rs=float(alpha_rs))[0]
    params = {
        "m200c_msun": m200,
        "concentration": conc,
        "z_l": z_l,
        "z_s": z_s,
        "rs_arcsec": float(rs),
        "alpha_rs_arcsec": float(alpha_rs),
        "kappa_s": float(kappa_s),
        "pixel_scale_arcsec": grid.pixel_scale,
        "shape_noise_sigma_per_cell": float(sigma[0]),
        "cell_arcsec": grid.pixel_scale * cell,
        "max_rel_err_gt_fft_vs_analytic_30_150": float(
            ((gt_fft - gt_true).abs() / gt_true.abs())[(centres > 30) & (centres < 150)].max()
        ),
    }
    maps = {
        "kappa": kappa[0].cpu().numpy(),
        "g1": red1[0].cpu().numpy(),
        "g2": red2[0].cpu().numpy(),
        "g1_noisy": n1[0].cpu().numpy(),
        "g2_noisy": n2[0].cpu().numpy(),
        "extent": np.array(grid.extent),
        "r": centres.cpu().numpy(),
        "gt_fft": gt_fft.cpu().numpy(),
        "gt_true": gt_true.cpu().numpy(),
    }
    return params, maps


def _plot_arc(plt, maps: dict[str, np.ndarray], params: dict[str, Any]):
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4), layout="constrained")
    ext, sext = maps["extent"], maps["source_extent"]
    panels = [
        ("source (unlensed)", maps["source"], sext, "flux / arcsec²"),
        ("convergence κ", np.log10(np.clip(maps["kappa"], 1e-3, None)), ext, "log10 κ"),
        ("lensed, PSF-convolved", maps["clean"], ext, "counts / pixel"),
        ("observed (Poisson + read noise)", maps["observed"], ext, "counts / pixel"),
    ]
    for ax, (title, img, extent, label) in zip(axes, panels, strict=True):
        im = ax.imshow(img, origin="lower", extent=extent, cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x [arcsec]")
        fig.colorbar(im, ax=ax, fraction=0.046, label=label)
    axes[0].set_ylabel("y [arcsec]")
    lens = params["lens_sie"]
    fig.suptitle(
        f"SIE + shear lens: σ_v = {params['sigma_v_kms']:.0f} km/s → θ_E = {lens['theta_e']:.2f}″ "
        f"(z_l = {params['z_l']}, z_s = {params['z_s']}), q = {lens['q']:.2f}; "
        f"96×96 at 0.04″/px, supersampling 4",
        fontsize=10,
    )
    return fig


def _plot_nfw(plt, maps: dict[str, np.ndarray], params: dict[str, Any]):
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), layout="constrained")
    ext = maps["extent"]
    im = axes[0].imshow(
        np.log10(np.clip(maps["kappa"], 1e-3, None)), origin="lower", extent=ext, cmap="viridis"
    )
    fig.colorbar(im, ax=axes[0], fraction=0.046, label="log10 κ")
    # shear whiskers: length ∝ |g|, angle ½ atan2(g2, g1)
    step = 16
    g1, g2 = maps["g1"][::step, ::step], maps["g2"][::step, ::step]
    n = g1.shape[0]
    xs = np.linspace(ext[0], ext[1], maps["g1"].shape[1])[::step]
    ys = np.linspace(ext[2], ext[3], maps["g1"].shape[0])[::step]
    xx, yy = np.meshgrid(xs[:n], ys[:n])
    mod, ang = np.hypot(g1, g2), 0.5 * np.arctan2(g2, g1)
    mod = np.where(maps["kappa"][::step, ::step] < 0.5, mod, np.nan)  # weak regime only
    axes[0].quiver(
        xx,
        yy,
        mod * np.cos(ang),
        mod * np.sin(ang),
        headwidth=0,
        headlength=0,
        headaxislength=0,
        pivot="middle",
        color="w",
        scale=3.0,
    )
    axes[0].set_title("NFW κ with reduced-shear whiskers", fontsize=10)
    im = axes[1].imshow(
        maps["g1_noisy"], origin="lower", extent=ext, cmap="RdBu_r", vmin=-0.4, vmax=0.4
    )
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="g1")
    axes[1].set_title(
        f"g1 with shape noise (σ_e = 0.3, n_g = 30/arcmin², {params['cell_arcsec']:.0f}″ cells)",
        fontsize=10,
    )
    for ax in axes[:2]:
        ax.set_xlabel("x [arcsec]")
    axes[0].set_ylabel("y [arcsec]")
    axes[2].loglog(maps["r"], maps["gt_true"], "k-", label="analytic (Wright & Brainerd)")
    axes[2].loglog(maps["r"], maps["gt_fft"], "o", ms=3, label="FFT κ → γ (padding 2)")
    axes[2].set_xlabel("R [arcsec]")
    axes[2].set_ylabel("tangential shear γ_t")
    axes[2].legend(fontsize=9)
    axes[2].set_title("tangential shear profile", fontsize=10)
    fig.suptitle(
        f"NFW halo M200c = {params['m200c_msun']:.1e} M☉, c = {params['concentration']:.2f}, "
        f"z_l = {params['z_l']}, z_s = {params['z_s']}: r_s = {params['rs_arcsec']:.0f}″, "
        f"κ_s = {params['kappa_s']:.3f}",
        fontsize=10,
    )
    return fig


def _plot_galaxy(plt, maps: dict[str, np.ndarray], params: dict[str, Any]):
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), layout="constrained")
    ext = maps["extent"]
    panels = [
        ("PSF (Moffat)", maps["psf"], maps["psf_extent"]),
        ("Sérsic ⊗ PSF", maps["clean"], ext),
        ("observed (sky + Poisson)", maps["observed"], ext),
    ]
    for ax, (title, img, extent) in zip(axes, panels, strict=True):
        im = ax.imshow(img, origin="lower", extent=extent, cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x [arcsec]")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("y [arcsec]")
    g = params["sersic"]
    fig.suptitle(
        f"Sérsic galaxy: mag = {g['mag']:.2f}, R_eff = {g['r_eff']:.2f}″, n = {g['n']:.2f}, "
        f"q = {g['q']:.2f}; Moffat FWHM = {params['psf_fwhm_arcsec']:.2f}″; 61×61 at 0.2″/px",
        fontsize=10,
    )
    return fig


#: Every quickstart section, in report order; pipeline sections are
#: ``lensml.pipelines.<name>.quickstart_section(out_dir, seed, device, full)``.
SECTIONS = ("gallery", "clusters", "sersic", "shear", "strong", "strong-pixelated")
#: What ``lensml quickstart`` runs without ``--pipelines``.
DEFAULT_SECTIONS = SECTIONS
_TITLES = {
    "gallery": "Gallery: what the physics core simulates",
    "clusters": "Clusters: CNN vs NFW tangential-shear fit",
    "sersic": "Sérsic: GaLNet vs χ² fit",
    "shear": "Shear: CNN vs KSB / REGAUSS",
    "strong": "Strong lensing: AstroRIM vs parametric fit",
    "strong-pixelated": "Strong lensing: pixelated source and κ (RIM + EWC fine-tuning)",
}


def run_quickstart(
    out: Path,
    seed: int = 0,
    device: str = "cpu",
    sections: tuple[str, ...] = DEFAULT_SECTIONS,
    full: bool = False,
) -> list[Path]:
    """Run the quickstart sections into ``out`` and write ``report.html``; return the paths.

    Parameters
    ----------
    out : Path
        Output directory (created if needed). Must not be an existing file.
    seed : int
        Seed of every random quantity.
    device : str
        torch device (``"cpu"``, ``"cuda"``, ...).
    sections : tuple of str
        Any of :data:`SECTIONS`.
    full : bool
        Run the bigger version of each pipeline section (more data, longer training).

    Returns
    -------
    list of Path
        The PNG/JSON files of every section, then ``report.html`` and ``quickstart.json``
        (last).
    """
    import importlib
    import time

    bad = [x for x in sections if x not in SECTIONS]
    if bad or not sections:
        raise ValueError(f"quickstart: sections must be among {list(SECTIONS)}; got {sections!r}")
    import torch

    out = Path(out).resolve()  # sections record figure paths; keep them valid from any cwd
    if out.exists() and not out.is_dir():
        raise ValueError(f"quickstart: output path {out} exists and is not a directory")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"quickstart: unknown device {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"quickstart: device {device!r} requested but CUDA is not available")

    from lensml.report import section_from_summary, write_html_report

    t_start = time.perf_counter()
    summary: dict[str, Any] = {
        "lensml_version": __version__, "seed": seed, "device": device, "full": full,
        "sections": list(sections), "seconds": {},
    }  # fmt: skip
    written: list[Path] = []
    report_sections = []
    for key in sections:
        t0 = time.perf_counter()
        if key == "gallery":
            paths, part = _gallery(out, seed, dev)
        else:
            module = importlib.import_module(f"lensml.pipelines.{key.replace('-', '_')}")
            paths, part = module.quickstart_section(out / key, seed, device, full=full)
        summary["seconds"][key] = time.perf_counter() - t0
        part = dict(part)
        part.setdefault("title", _TITLES[key])
        if "tables" not in part and key in _TABLE_BUILDERS:
            part["text"], part["tables"] = _TABLE_BUILDERS[key](part)
        part.setdefault("figures", [str(p) for p in paths if Path(p).suffix == ".png"])
        summary[key] = part
        written.extend(Path(p) for p in paths)
        report_sections.append(section_from_summary(key, part, out))
    summary["seconds"]["total"] = time.perf_counter() - t_start
    meta = {"lensml": __version__, "seed": seed, "device": device,
            "run time [s]": round(summary["seconds"]["total"], 1)}  # fmt: skip
    written.append(write_html_report(out / "report.html", report_sections, meta=meta))
    summary_path = out / "quickstart.json"
    _atomic_write_bytes(summary_path, json.dumps(_json_safe(summary), indent=2).encode())
    written.append(summary_path)
    return written


def _sersic_tables(part: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Table 2 analogue (R², outlier fraction, NMAD per parameter) and speeds."""
    t2 = part.get("table2", {})
    params = ["x", "y", "mag", "r_eff", "pa", "q", "n"]
    rows = []
    for metric in ("r2", "outlier_fraction", "nmad"):
        for method, cols in t2.items():
            rows.append([metric, method, *[cols.get(p, {}).get(metric) for p in params]])
    speed = part.get("galaxies_per_s", {})
    text = (
        f"GaLNet-1/2 (small presets; {', '.join(part.get('models', {}).values()) or 'trained'}) "
        "and the batched χ² fitter on the same simulated KiDS-like test stamps (the paper's "
        "Table 2 statistics; PA differences wrapped to ±90°)."
    )
    return text, [
        {"caption": "Table 2 analogue", "columns": ["metric", "method", *params], "rows": rows},
        {"caption": "Speed on this machine (galaxies/s)", "columns": ["method", "galaxies/s"],
         "rows": [[k, v] for k, v in speed.items()]},
    ]  # fmt: skip


def _shear_tables(part: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Table 4 analogue (σ, m, c per component, failures), speeds and the cluster field."""
    rows = []
    for method, r in part.get("table4", {}).items():
        rows.append([method, r["sigma"][0], r["sigma"][1], r["m"][0], r["m"][1], r["c"][0],
                     r["c"][1], r.get("n_test"), r.get("n_failed")])  # fmt: skip
    speed = part.get("speed_stamps_per_s", {})
    field = part.get("cluster_field", {}).get("accuracy", {})
    text = (
        "The CNN shear estimator (symmetrised and calibrated) and GalSim's KSB and REGAUSS on "
        "the same simulated CLASH-like stamps, each calibrated with m, c fitted on a separate "
        "split (the paper's Table 4), then all three on a simulated NFW cluster field."
    )
    return text, [
        {"caption": "Table 4 analogue (calibrated estimates)",
         "columns": ["method", "σ1", "σ2", "m1", "m2", "c1", "c2", "N", "failed"],
         "rows": rows},
        {"caption": "Speed on this machine (stamps/s)", "columns": ["method", "stamps/s"],
         "rows": [[k, v] for k, v in speed.items()]},
        {"caption": "Simulated NFW cluster field",
         "columns": ["method", "sources", "per-source RMS", "smoothed field RMS vs truth"],
         "rows": [[k, v.get("n_sources"), v.get("per_source_rms"),
                   v.get("field_rms_vs_true_field")] for k, v in field.items()]},
    ]  # fmt: skip


#: Report tables for pipeline sections whose summary carries its own keys instead.
_TABLE_BUILDERS = {"sersic": _sersic_tables, "shear": _shear_tables}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _gallery(out: Path, seed: int, dev: Any) -> tuple[list[Path], dict[str, Any]]:
    """The three physics figures and their simulated parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    if dev.type != "cpu":
        gen = torch.Generator(device=dev).manual_seed(seed)
    part: dict[str, Any] = {}
    paths = []
    gallery = (
        ("lensed_arc", _lensed_arc, _plot_arc),
        ("nfw_shear_field", _nfw_field, _plot_nfw),
        ("sersic_galaxy", _sersic_galaxy, _plot_galaxy),
    )
    for name, simulate, plot in gallery:
        params, maps = simulate(torch, gen, dev)
        fig = plot(plt, maps, params)
        paths.append(_save_figure(fig, out / f"{name}.png"))
        plt.close(fig)
        part[name] = params
    arc, nfw = part["lensed_arc"], part["nfw_shear_field"]
    part["text"] = (
        "Three images simulated by lensml.physics with the quickstart seed: a strong-lens arc, "
        "an NFW cluster's reduced-shear field with Euclid shape noise, and a Sérsic galaxy "
        "stamp with Moffat seeing and sky noise."
    )
    part["tables"] = [{
        "caption": "Checks of the simulated examples",
        "columns": ["quantity", "value"],
        "rows": [
            ["arc: SIE θ_E [arcsec]", arc["lens_sie"]["theta_e"]],
            ["NFW: max |Δg_t| / g_t, FFT vs analytic, 30–150″",
             nfw["max_rel_err_gt_fft_vs_analytic_30_150"]],
        ],
    }]  # fmt: skip
    return paths, part


def _sersic_galaxy(torch, gen, device) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from lensml.physics import noise, psf
    from lensml.physics.grids import PixelGrid
    from lensml.physics.stamps import render_sersic_stamps

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    grid = PixelGrid.square(61, 0.2)
    gal = {
        "mag": u(18.0, 19.5),
        "r_eff": u(0.8, 1.6),
        "n": u(1.0, 4.0),
        "q": u(0.4, 0.8),
        "phi": u(0, math.pi),
        "x0": u(-0.2, 0.2),
        "y0": u(-0.2, 0.2),
    }
    fwhm, beta, zeropoint = u(0.6, 0.85), 3.0, 30.0
    dtype = torch.float32
    kernel = psf.moffat_psf(fwhm, beta, 25, grid.pixel_scale, dtype=dtype, device=device)
    clean = render_sersic_stamps(
        grid,
        gal["r_eff"],
        gal["n"],
        gal["q"],
        gal["phi"],
        gal["x0"],
        gal["y0"],
        mag=gal["mag"],
        zeropoint=zeropoint,
        psf=kernel,
        dtype=dtype,
        device=device,
    )
    sky = 400.0  # counts per pixel
    observed = noise.poisson_read_noise(clean, read_noise_e=4.0, sky=sky, generator=gen)
    params = {
        "sersic": gal,
        "zeropoint": zeropoint,
        "psf_fwhm_arcsec": fwhm,
        "psf_beta": beta,
        "sky_counts_per_pixel": sky,
        "pixel_scale_arcsec": grid.pixel_scale,
        "total_counts": float(clean.sum()),
    }
    kgrid = PixelGrid.square(25, grid.pixel_scale)
    maps = {
        "psf": kernel[0, 0].cpu().numpy(),
        "psf_extent": np.array(kgrid.extent),
        "clean": clean[0, 0].cpu().numpy(),
        "observed": observed[0, 0].cpu().numpy(),
        "extent": np.array(grid.extent),
    }
    return params, maps
