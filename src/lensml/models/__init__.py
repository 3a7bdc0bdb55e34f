"""The model zoo: trained weights shipped inside the package, each with a model card.

Layout: ``lensml/models/<pipeline>/<name>/`` is an ordinary saved-model directory
(``model.json``, ``weights.pt``, ``normalisation.json``, plus the pipeline's own files) with a
``card.json``: what it was trained on (generator config, seed, size), how (the command or
benchmark that made it), its held-out metrics, its intended inputs (survey, pixel scale, PSF),
and a ``ci_check`` block — a small seeded held-out set and the metrics the model gives on it,
which ``tests/test_model_zoo.py`` recomputes within the stated tolerance.

Anywhere a model directory is accepted (``--model`` of ``lensml predict <pipeline>`` and
``lensml evaluate <pipeline>``), a shipped model's name works too: ``shear-cnn`` or
``shear/shear-cnn``. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "ShippedModel", "check_model", "list_models", "resolve_model"]

#: Directory holding the shipped models.
ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: ``pipeline``, ``name``, directory ``path`` and its ``card``."""

    pipeline: str
    name: str
    path: Path
    card: dict[str, Any]


def list_models(pipeline: str | None = None) -> list[ShippedModel]:
    """Every shipped model (of ``pipeline`` if given), sorted by pipeline and name."""
    out = []
    for card_path in sorted(ROOT.glob("*/*/card.json")):
        d = card_path.parent
        if pipeline is not None and d.parent.name != pipeline:
            continue
        out.append(ShippedModel(d.parent.name, d.name, d, json.loads(card_path.read_text())))
    return out


def resolve_model(model: str | Path, pipeline: str | None = None) -> Path:
    """A model directory from a path, or from a shipped model's name.

    Parameters
    ----------
    model : str or path
        An existing path (returned as is), a shipped name (``shear-cnn``) or
        ``<pipeline>/<name>``.
    pipeline : str, optional
        Restrict name lookup to this pipeline's models.

    Raises
    ------
    ValueError
        Neither an existing path nor a shipped model (the message lists the shipped ones).
    """
    path = Path(model)
    if path.exists():
        return path
    text = str(model).strip("/")
    for m in list_models(pipeline):
        if text in (m.name, f"{m.pipeline}/{m.name}"):
            return m.path
    names = [f"{m.pipeline}/{m.name}" for m in list_models(pipeline)]
    raise ValueError(
        f"model {model}: no such directory, and not a shipped model "
        f"(shipped{' for ' + pipeline if pipeline else ''}: {', '.join(names) or 'none'})"
    )


def check_model(entry: ShippedModel) -> dict[str, float]:
    """Recompute the metrics of the card's ``ci_check`` block (seeded, small, CPU)."""
    check = entry.card["ci_check"]
    if entry.pipeline == "shear":
        return _check_shear(entry.path, check)
    if entry.pipeline == "sersic":
        return _check_sersic(entry.path, check)
    if entry.pipeline == "clusters":
        return _check_clusters(entry.path, check)
    if entry.pipeline == "strong-pixelated":
        return _check_strong_pixelated(entry.path, check)
    if entry.pipeline == "strong":
        return _check_strong(entry.path, check)
    raise ValueError(f"model {entry.path}: no CI check for pipeline {entry.pipeline!r}")


def _simulate(generator: str, check: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lensml.sims.base import get_generator, validate_config

    gen = get_generator(generator)
    cfg = validate_config(gen, check.get("config") or {})
    rng = torch.Generator().manual_seed(int(check["seed"]))
    return gen.generate(int(check["n"]), rng, cfg)


def _check_shear(path: Path, check: dict[str, Any]) -> dict[str, float]:
    import numpy as np

    from lensml.pipelines.shear_estimator import load_shear_estimator

    data = _simulate("shear", check)
    est = load_shear_estimator(path)
    g = np.asarray(est.predict(data["image"]), dtype=float)
    true = np.asarray(data["labels"], dtype=float)
    rms = np.sqrt(np.mean((g - true) ** 2, axis=0))
    return {"rms_g1": float(rms[0]), "rms_g2": float(rms[1])}


def _check_sersic(path: Path, check: dict[str, Any]) -> dict[str, float]:
    import numpy as np

    from lensml.metrics import r2
    from lensml.pipelines.sersic import load_sersic_model

    data = _simulate("sersic", check)
    model = load_sersic_model(path)
    pred = model.predict(data["image"], data["psf"] if model.with_psf else None)
    true = np.asarray(data["labels"], dtype=float)
    names = ["x", "y", "mag", "r_eff", "q", "pa", "n"]
    out = {}
    for j, name in enumerate(names):
        if name == "pa":
            continue
        p, t = np.asarray(pred[name], dtype=float), true[:, j]
        if name == "r_eff":
            p, t = np.log10(p), np.log10(t)
        out[f"r2_{name if name != 'r_eff' else 'log10_reff'}"] = float(r2(p, t))
    return out


def _check_clusters(path: Path, check: dict[str, Any]) -> dict[str, float]:
    import numpy as np
    import torch

    from lensml.pipelines.clusters import LABELS, decode_predictions
    from lensml.pipelines.clusters_calibration import load_median_calibration
    from lensml.sims.surveys import ShapeNoise
    from lensml.train import load_model, predict

    data = _simulate("clusters", check)
    maps = torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32)
    noise = ShapeNoise(pixel_scale=float(check["config"]["pixel_scale"]), survey=check["noise"])
    g = torch.Generator().manual_seed(int(check["seed"]) + 1)
    maps = noise(maps, None, g)[0]
    net, info = load_model(path)
    names = list(info.normalisation.label_names)
    # with the model's median calibration, as the pipeline applies it
    calibration = load_median_calibration(path)
    pred, decoded = decode_predictions(predict((net, info), maps).numpy(), names, calibration)
    true = np.asarray(data["labels"], dtype=float)
    d_m = pred[:, decoded.index("log10_mvir")] - true[:, LABELS.index("log10_mvir")]
    d_c = pred[:, decoded.index("c_vir")] - true[:, LABELS.index("c_vir")]
    return {"rms_log10_mvir": float(np.sqrt(np.mean(d_m**2))),
            "median_bias_c_vir": float(np.median(d_c))}  # fmt: skip


def _check_strong(path: Path, check: dict[str, Any]) -> dict[str, float]:
    """AstroRIM: mean SSIM of the sources and median |Δθ_E| / θ_E on ``n`` seeded lenses of
    each of the card's ``variants``, symmetrised as ``lensml evaluate/predict strong`` run
    the model by default."""
    import numpy as np

    from lensml.pipelines.strong_eval import load_astrorim, run_astrorim, source_scores

    net, _ = load_astrorim(path)
    ssim_v, b_rel = [], []
    for k, variant in enumerate(check["variants"]):
        one = {**check, "config": {**(check.get("config") or {}), "variant": variant},
               "seed": int(check["seed"]) + k}  # fmt: skip
        data = {key: np.asarray(v) for key, v in _simulate("strong", one).items()}
        out = run_astrorim(net, data, symmetrise=True)
        ssim_v.append(source_scores(out["source"], data["source"])[0])
        b_true = data["labels"][:, 0]
        b_rel.append(np.abs(out["labels"][:, 0] - b_true) / b_true)
    return {"mean_ssim": float(np.mean(np.concatenate(ssim_v))),
            "median_theta_e_rel_error": float(np.median(np.concatenate(b_rel)))}  # fmt: skip


def _check_strong_pixelated(path: Path, check: dict[str, Any]) -> dict[str, float]:
    """RIM: median χ²_ν and mean log10 eq.-7 loss; VAE: the fraction of the maps' variance
    (about each map's mean, in the network's preprocessed space) its reconstruction misses,
    on the seeded held-out maps."""
    import numpy as np
    import torch

    from lensml.pipelines.strong_pixelated import read_sidecar
    from lensml.train import load_model

    data = {k: torch.as_tensor(np.asarray(v)) for k, v in _simulate("strong-pixelated",
                                                                   check).items()}  # fmt: skip
    net, _ = load_model(path)
    net.eval()
    role = read_sidecar(path)["role"]
    with torch.no_grad():
        if role == "rim":
            s_steps, x_steps = net.unroll(data["image"], data["sigma"], data["psf"])
            loss = net.per_example_loss(s_steps, x_steps, data["source"], data["kappa"])
            chi2 = net.lens.reduced_chi2(data["image"], s_steps[-1], net.link(x_steps[-1]),
                                         data["sigma"], data["psf"])  # fmt: skip
            return {"median_chi2_nu": float(chi2.median()),
                    "mean_log10_loss": float(torch.log10(loss).mean())}  # fmt: skip
        kind = role.removeprefix("vae-")
        xi = net.preprocess(data[kind])
        err = (net.preprocess(net(data[kind])) - xi).square().sum()
        var = (xi - xi.mean(dim=(1, 2, 3), keepdim=True)).square().sum()
        return {"unexplained_fraction": float(err / var)}
