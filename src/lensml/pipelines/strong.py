"""Strong-lensing pipeline (AstroRIM): training data, training, quickstart.

Paper: Walsh et al., "AstroRIM" (``shared/papers/astrorim-conditional-forward-rim.txt``),
§3.3 (training), §3.5 / §4.2 (metrics, Table 2), Table 1 (θ_E → σ_SIS, M(<θ_E)).

* :class:`StrongDataset` serves ``strong`` stores (one or several, e.g. the six variants) as
  dict samples with the keys :meth:`lensml.nets.rim.AstroRIM.training_loss` reads (``image``,
  ``source``, ``psf``, ``lens_light``) plus ``kappa``, ``noise_sigma``, ``labels`` and
  ``pixel_scale``. The paper's augmentation (§3.3.4: horizontal flip, vertical flip and a 90°
  rotation by k ∈ {1, 2, 3}, each with probability 0.5) is the same geometric operation on
  every map — the source grid covers the image's field with the same orientation, and lensing
  commutes with rotations and mirrors about the optical axis — with the labels transformed by
  :class:`lensml.data.augment.LabelRules` (x0, y0 rotate / mirror, φ and γ_φ shift, modulo π).
  Item ``i`` of epoch ``e`` draws from :func:`lensml.data.datasets.item_generator`
  ``(seed, e, i)``; :meth:`StrongDataset.set_epoch` is called by a Lightning callback.
* :func:`train_strong` trains ``astrorim`` / ``astrorim-small`` through :func:`lensml.train.fit`
  with the recipe of §3.3.4 as defaults: AdamW, the forward operator and encoder at 0.1 × the
  RIM's learning rate (the network's ``parameter_groups``), 5 warm-up epochs then plateau
  decay (× 0.5 after 6 epochs without improvement), gradient-norm clipping at 5, EMA 0.999,
  fp16 mixed precision on GPU (32-bit on CPU), batch size 8, lr 5e-5.
  The encoder's ranges (paper: b ≤ 0.3 L) are widened to the training stores' label ranges
  (:func:`encoder_ranges`; θ_E of 0.9–1.5″ is b ≈ 0.5–0.8 at 0.04″/px), the eq. 48–49 prior
  is centred on the stores' own labels (:func:`prior_centres`; the paper's b = 0.08 L centre
  dragged every Einstein radius down — the median θ_E error was 85 % before), and the SIE
  core is 0 as in the generator (paper: 0.01).
  Deviation from the paper, deliberate: a supervised lens-parameter term (``lambda_label``,
  :func:`lensml.nets.rim.label_penalty`) joins eq. 43, because the generator knows the true
  Θ and a CPU-length run does not learn it through L_forward alone; with it the encoder
  trains at the RIM's learning rate (:data:`ENCODER_LR_SCALE`). ``lambda_label=0`` restores
  the paper's loss and its 0.1 × encoder rate. ``strong_pipeline.json`` next to the saved
  model records the training pixel scale(s), variants and cosmology for
  :func:`~lensml.pipelines.strong_predict.predict_strong`.

Evaluation is in :mod:`lensml.pipelines.strong_eval`, prediction on FITS images in
:mod:`lensml.pipelines.strong_predict`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensml.data.pooled import PooledStores
from lensml.train.callbacks import epoch_callback, time_budget_callback

__all__ = [
    "LABELS",
    "LAMBDA_LABEL",
    "MAP_KEYS",
    "SIDECAR",
    "StrongDataset",
    "StrongStoreInfo",
    "augment_sample",
    "encoder_ranges",
    "inspect_strong_store",
    "label_rules",
    "prior_centres",
    "quickstart_section",
    "read_sidecar",
    "shipped_model",
    "store_cosmology",
    "train_strong",
]

#: Label columns of the ``strong`` generator (arcsec / rad, see :mod:`lensml.sims.strong`).
LABELS = ("b", "q", "phi", "x0", "y0", "gamma", "gamma_phi", "kappa_s", "r_s")
#: How each label transforms under flips and rotations (the generator's ``label_kinds``).
LABEL_KINDS = {
    "b": "size",
    "q": "scalar",
    "phi": "angle",
    "x0": "position",
    "y0": "position",
    "gamma": "scalar",
    "gamma_phi": "angle",
    "kappa_s": "scalar",
    "r_s": "size",
}
#: Maps served (and augmented together) by :class:`StrongDataset`.
MAP_KEYS = ("image", "source", "psf", "lens_light", "kappa", "noise_sigma")
#: Default weight of the supervised lens-parameter term in :func:`train_strong`.
LAMBDA_LABEL = 0.01
#: Encoder learning-rate factor when the supervised term is on (paper 0.1, unsupervised).
ENCODER_LR_SCALE = 1.0
#: Pipeline metadata written next to a trained model's files.
SIDECAR = "strong_pipeline.json"


# ----------------------------------------------------------------------------- stores
@dataclass(frozen=True)
class StrongStoreInfo:
    """What the pipeline needs to know about a ``strong`` store.

    Attributes
    ----------
    root : Path
    n : int
        Items in complete shards.
    size, source_size, psf_size : int
        Image, source-grid and PSF sides in pixels.
    variant : str
        Realism preset (v1 … v6).
    cosmology : str
        The generator's cosmology name (``planck15``, ``planck18``, ``flat_lcdm``).
    pixel_scales : tuple of float
        Image pixel scales (arcsec) of the config's instrument regimes with probability > 0.
    """

    root: Path
    n: int
    size: int
    source_size: int
    psf_size: int
    variant: str
    cosmology: str
    pixel_scales: tuple[float, ...]


def inspect_strong_store(data_dir: str | Path) -> StrongStoreInfo:
    """Open and check a ``strong`` store.

    Raises
    ------
    ValueError
        Naming ``data_dir``: not a store, not written by the ``strong`` generator, no complete
        shard, or missing the ``image``/``source``/``psf``/``labels`` arrays.
    """
    from lensml.data.store import open_store

    store = open_store(data_dir)
    where = f"data_dir {store.root}"
    if store.manifest.get("generator") != "strong":
        raise ValueError(
            f"{where}: written by generator {store.manifest.get('generator')!r}, expected "
            "'strong' (lensml simulate strong)"
        )
    if not store.shards:
        raise ValueError(f"{where}: the store has no complete shard")
    arrays = store.manifest["arrays"]
    missing = [k for k in ("image", "source", "psf", "labels", "pixel_scale") if k not in arrays]
    if missing:
        raise ValueError(f"{where}: missing arrays {missing}; it has {store.keys}")
    if tuple(store.label_names) != LABELS:
        raise ValueError(f"{where}: labels must be {list(LABELS)}, got {store.label_names}")
    cfg = store.manifest.get("config") or {}
    scales = tuple(
        sorted({float(i["pixel_scale"]) for i in cfg.get("instruments", []) if i["probability"]})
    )
    return StrongStoreInfo(
        root=Path(store.root),
        n=len(store),
        size=int(arrays["image"]["shape"][-1]),
        source_size=int(arrays["source"]["shape"][-1]),
        psf_size=int(arrays["psf"]["shape"][-1]),
        variant=str(cfg.get("variant", "?")),
        cosmology=str(cfg.get("cosmology", "planck15")),
        pixel_scales=scales,
    )


def _infos(data_dir: str | Path | Sequence[str | Path]) -> list[StrongStoreInfo]:
    dirs = [data_dir] if isinstance(data_dir, str | Path) else list(data_dir)
    if not dirs:
        raise ValueError("data_dir: no strong store given")
    infos = [inspect_strong_store(d) for d in dirs]
    sizes = {(i.size, i.source_size) for i in infos}
    if len(sizes) > 1:
        raise ValueError(f"data_dir: stores differ in (image, source) size: {sorted(sizes)}")
    return infos


def store_cosmology(name: str) -> Any:
    """Astropy cosmology of a ``strong`` config name (``flat_lcdm``: H0 = 70, Ω_m = 0.3, the
    paper's Table 1 cosmology)."""
    if name == "flat_lcdm":
        from lensml.physics.lens_conversions import paper_cosmology

        return paper_cosmology()
    from lensml.physics.cosmology import get_cosmology

    return get_cosmology(name)


def label_rules() -> Any:
    """:class:`lensml.data.augment.LabelRules` of the ``strong`` labels (angles modulo π)."""
    from lensml.data.augment import LabelRules

    return LabelRules(LABELS, LABEL_KINDS, position_scale=1.0, angle_period=math.pi)


# ----------------------------------------------------------------------------- augmentation
def augment_sample(sample: Mapping[str, Any], flip_x: bool, flip_y: bool, k: int) -> dict[str, Any]:
    """Mirror x → −x, then y → −y, then rotate by ``k`` × 90° CCW every map and the labels.

    ``sample`` holds ``(1, H, W)`` maps (any of :data:`MAP_KEYS`, square) and ``labels``
    ``(9,)``; other entries are copied unchanged.
    """
    from lensml.data.augment import flip, rot90

    rules = label_rules()
    out = dict(sample)
    labels = sample.get("labels")
    maps = [key for key in MAP_KEYS if key in sample]
    for key in maps:
        m, lab = sample[key], labels if key == maps[0] else None
        r = rules if lab is not None else None
        if flip_x:
            m, lab = flip(m, lab, r, "x")
        if flip_y:
            m, lab = flip(m, lab, r, "y")
        if k % 4:
            m, lab = rot90(m, lab, r, int(k))
        out[key] = m.contiguous()
        if lab is not None:
            out["labels"] = lab
    if labels is not None and not maps:
        raise ValueError("augment_sample: a sample with labels needs at least one map")
    return out


class StrongDataset(PooledStores):
    """Map-style dataset over one or more ``strong`` stores (e.g. one per variant).

    Items are dicts of float32 tensors: the :data:`MAP_KEYS` maps ``(1, H, H)`` (``psf``
    ``(1, K, K)``), ``labels`` ``(9,)`` (arcsec / rad), ``pixel_scale`` (0-d, arcsec) and
    ``variant`` (0-d int, index into :attr:`variants`).

    Parameters
    ----------
    data_dir : path or sequence of path
        ``strong`` stores of the same image and source sizes.
    indices : sequence of int, optional
        Global items to expose (stores concatenated in the given order).
    augment : bool
        Apply the paper's flips / 90° rotations (probability 0.5 each).
    seed : int
        Seed of the per-item augmentation generators.
    fixed_epoch : bool
        Keep epoch 0's draws (validation).
    keys : sequence of str
        Maps to serve (default :data:`MAP_KEYS`).
    cache_mb : float, optional
        Memory budget (MiB, shared evenly by the variant stores, per process) for decoded store
        chunks (:class:`lensml.data.datasets.StoreDataset`): a training set that fits is
        decoded once and then served from memory under shuffled access; 0 keeps only a
        4-chunk cache per store. None (default): as much as the stores hold, up to 40 % of
        the machine's memory (:meth:`lensml.data.pooled.PooledStores._open_stores`).
    """

    def __init__(
        self,
        data_dir: str | Path | Sequence[str | Path],
        indices: Sequence[int] | None = None,
        augment: bool = True,
        seed: int = 0,
        fixed_epoch: bool = False,
        keys: Sequence[str] = MAP_KEYS,
        cache_mb: float | None = None,
    ) -> None:
        self.infos = _infos(data_dir)
        bad = [k for k in keys if k not in MAP_KEYS]
        if bad:
            raise ValueError(f"StrongDataset: unknown keys {bad}; expected among {MAP_KEYS}")
        self.keys = [k for k in MAP_KEYS if k in keys]
        if "image" not in self.keys:
            raise ValueError("StrongDataset: keys must include 'image'")
        read = [*self.keys, "labels", "pixel_scale"]
        self._stores = self._open_stores([i.root for i in self.infos], read, cache_mb)
        self._init_pool([i.n for i in self.infos], indices, augment, seed, fixed_epoch,
                        "StrongDataset")  # fmt: skip
        self.variants = [i.variant for i in self.infos]
        self.label_names = list(LABELS)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        index = self.indices[int(i)]
        s, j = self.locate(index)
        raw = self._stores[s][j]
        sample: dict[str, Any] = {k: raw[k].float() for k in self.keys}
        if not bool(torch.isfinite(sample["image"]).all()):
            raise ValueError(f"data_dir {self.infos[s].root}: item {j} has NaN or inf pixels")
        sample["labels"] = raw["labels"].float()
        sample = augment_sample(sample, *self.draw(index))
        sample["pixel_scale"] = raw["pixel_scale"].float().reshape(())
        sample["variant"] = torch.tensor(s)
        return sample


def _read_columns(infos: Sequence[StrongStoreInfo], keys: Sequence[str]) -> dict[str, np.ndarray]:
    from lensml.data.store import open_store

    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for info in infos:
        data = open_store(info.root).read_all(keys=list(keys))
        for k in keys:
            parts[k].append(np.asarray(data[k], dtype=np.float64))
    return {k: np.concatenate(v) for k, v in parts.items()}


def encoder_ranges(
    data_dir: str | Path | Sequence[str | Path], margin: float = 1.25
) -> dict[str, list[float]]:
    """Encoder ranges (normalised units, half-field L) covering the stores' labels.

    Each paper range (:data:`lensml.nets.astrorim.PAPER_RANGES`) is widened, never narrowed,
    to ``margin`` × the largest value found (b, x0, y0, γ, κ_s, r_s, each divided by the
    item's L = H · pixel_scale / 2 where it is a length); q and the angles keep theirs.
    """
    from lensml.nets.astrorim import PAPER_RANGES

    infos = _infos(data_dir)
    cols = _read_columns(infos, ["labels", "pixel_scale"])
    lab, half = cols["labels"], cols["pixel_scale"] * infos[0].size / 2.0
    out: dict[str, list[float]] = {}
    for j, name in enumerate(LABELS):
        lo, hi = PAPER_RANGES[name]
        v = lab[:, j] / half if name in ("b", "x0", "y0", "r_s") else lab[:, j]
        if name in ("b", "gamma", "kappa_s", "r_s"):
            out[name] = [lo, max(hi, margin * float(np.max(v)))]
        elif name in ("x0", "y0"):
            m = max(hi, margin * float(np.max(np.abs(v))))
            out[name] = [-m, m]
    return out


def prior_centres(
    data_dir: str | Path | Sequence[str | Path], b_max: float | None = None
) -> dict[str, float]:
    """Centres of the eq. 48–49 parameter prior taken from the stores' labels.

    The paper centres b at 0.08 L (its θ_E range is b ≤ 0.3 L) and bounds it by 0.5 L; the
    ``strong`` generator's θ_E (median about 1.1″) at 0.04″/px is b ≈ 0.56 L, so the paper's
    prior pulls every Einstein radius down. Returned: the median b / L, ``b_max`` (given, or
    the encoder range's upper end, :func:`encoder_ranges`), and the median κ_s and r_s / L of
    the systems that have a halo (the paper's values where none has); q and γ keep the
    paper's.
    """
    from lensml.nets.rim import PAPER_PRIOR

    infos = _infos(data_dir)
    cols = _read_columns(infos, ["labels", "pixel_scale"])
    lab, half = cols["labels"], cols["pixel_scale"] * infos[0].size / 2.0
    col = {n: j for j, n in enumerate(LABELS)}
    out = {
        "b": float(np.median(lab[:, col["b"]] / half)),
        "b_max": float(encoder_ranges(data_dir)["b"][1] if b_max is None else b_max),
    }
    halo = lab[:, col["kappa_s"]] > 0
    if halo.any():
        out["kappa_s"] = float(np.median(lab[halo, col["kappa_s"]]))
        out["r_s"] = float(np.median(lab[halo, col["r_s"]] / half[halo]))
    else:
        out["kappa_s"], out["r_s"] = PAPER_PRIOR["kappa_s"], PAPER_PRIOR["r_s"]
    return out


def read_sidecar(model_dir: str | Path) -> dict[str, Any]:
    """The ``strong_pipeline.json`` of a model directory or shipped model name ({} when
    absent)."""
    import json

    from lensml.models import resolve_model

    path = resolve_model(model_dir, "strong") / SIDECAR
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"model {model_dir}: {SIDECAR} is not valid JSON ({err})") from err


def train_strong(
    data_dir: str | Path | Sequence[str | Path],
    network: str = "astrorim-small",
    out_dir: str | Path = "lensml-strong-run",
    epochs: int = 30,
    *,
    lr: float = 5e-5,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    max_items: int | None = None,
    val_fraction: float = 0.1,
    weight_decay: float = 1e-4,
    warmup_epochs: int = 5,
    plateau_patience: int = 6,
    augment: bool = True,
    time_budget_s: float | None = None,
    network_config: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    lambda_label: float = LAMBDA_LABEL,
) -> dict[str, Any]:
    """Train AstroRIM on ``strong`` store(s) with the paper's recipe (module docstring).

    Parameters
    ----------
    data_dir : path or sequence of path
        Training store(s) (several: e.g. one per variant; items are pooled).
    network : str
        ``astrorim`` (paper size) or ``astrorim-small`` (CPU preset).
    out_dir : path
        Run directory of :func:`lensml.train.fit`; the model is ``out_dir/model``.
    epochs : int
        Maximum epochs, >= 1.
    lr : float
        RIM learning rate (paper 5e-5); the encoder and forward operator get 0.1 × lr.
    batch_size : int
        Pairs per optimiser step (paper 8).
    seed : int
        Seeds the split, the weights, the shuffling and the augmentations.
    device : str, optional
        ``cpu``, ``cuda``, ``auto``; fp16 mixed precision is used on GPU only.
    resume, progress
        Passed to :func:`lensml.train.fit`.
    max_items : int, optional
        Use only the first ``max_items`` pooled items.
    val_fraction : float
        Held-out validation fraction (seeded), in (0, 0.9].
    weight_decay : float
        AdamW decoupled weight decay (not given by the paper).
    warmup_epochs, plateau_patience : int
        Linear warm-up epochs (paper 5) and plateau patience (paper 6, factor 0.5).
    augment : bool
        Flips and 90° rotations on the training items.
    time_budget_s : float, optional
        Stop after this many seconds of training (benchmarks).
    network_config : mapping, optional
        Extra network options (merged over the data-derived ``image_size``,
        ``source_size``, ``ranges``, ``prior``, ``lambda_label`` and ``core=0``).
    train_overrides : mapping, optional
        :class:`lensml.train.TrainConfig` fields merged last.
    num_workers : int
        DataLoader workers.
    lambda_label : float
        Weight of the supervised lens-parameter term (:func:`lensml.nets.rim.label_penalty`,
        default :data:`LAMBDA_LABEL`); 0 trains with the paper's loss alone.

    Returns
    -------
    dict
        :func:`lensml.train.fit`'s result plus ``network``, ``network_config`` (the build
        config saved in ``model.json``), ``n_train``, ``n_val``, ``variants``,
        ``train_seconds`` and ``pairs_per_s``.

    Raises
    ------
    ValueError
        Bad store(s), fewer than 2 items, bad ``epochs`` / ``val_fraction``.
    """
    import torch

    from lensml.data.store import write_json_atomic
    from lensml.train import build_network, fit

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not 0 < val_fraction <= 0.9:
        raise ValueError(f"val_fraction must be in (0, 0.9], got {val_fraction}")
    infos = _infos(data_dir)
    roots = [i.root for i in infos]
    total = sum(i.n for i in infos)
    n = total if max_items is None else min(total, int(max_items))
    if n < 2:
        raise ValueError(f"data_dir: need at least 2 items to train, got {n}")
    ranges = encoder_ranges(roots)
    net_cfg: dict[str, Any] = {
        "image_size": infos[0].size,
        "source_size": infos[0].source_size,
        "ranges": ranges,
        "prior": prior_centres(roots, b_max=ranges["b"][1]),
        "lambda_label": float(lambda_label),
        "encoder_lr_scale": ENCODER_LR_SCALE if lambda_label > 0 else 0.1,
        "core": 0.0,
    }
    net_cfg.update(dict(network_config or {}))
    model = build_network(network, dict(net_cfg), seed=int(seed))
    if not callable(getattr(model, "training_loss", None)):
        raise ValueError(f"network {network!r} has no training_loss: not an AstroRIM network")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 104729))
    n_val = max(1, round(n * val_fraction))
    val_idx, train_idx = perm[:n_val].tolist(), perm[n_val:].tolist()
    train_ds = StrongDataset(roots, train_idx, augment=augment, seed=seed)
    val_ds = StrongDataset(roots, val_idx, augment=False, seed=seed + 1, fixed_epoch=True)
    config: dict[str, Any] = {
        "max_epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": 0.0,
        "num_workers": num_workers,
        "normalise_labels": False,
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay},
        "schedule": {
            "name": "plateau",
            "factor": 0.5,
            "patience": plateau_patience,
            "warmup_epochs": warmup_epochs,
        },
        "early_stopping": {"enabled": False},
        "gradient_clip": 5.0,
        "ema": {"enabled": True, "decay": 0.999},
        "precision": "16-mixed",
    }
    config.update(dict(train_overrides or {}))
    callbacks = [epoch_callback(train_ds)]
    if time_budget_s is not None:
        callbacks.append(time_budget_callback(float(time_budget_s)))
    t0 = time.perf_counter()
    result = fit(
        model,
        train_ds,
        val_ds,
        config=config,
        out_dir=out_dir,
        resume=resume,
        device=device,
        progress=progress,
        label_names=list(LABELS),
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - t0
    steps = int(result.get("global_step") or 0)
    if result.get("model_dir") is not None:
        scales = sorted({s for i in infos for s in i.pixel_scales})
        write_json_atomic(
            Path(result["model_dir"]) / SIDECAR,
            {
                "pipeline": "strong",
                "network": network,
                "image_size": infos[0].size,
                "source_size": infos[0].source_size,
                "pixel_scales": scales,
                "variants": [i.variant for i in infos],
                "cosmologies": sorted({i.cosmology for i in infos}),
                "train_stores": [str(r) for r in roots],
            },
        )
    result.update(
        network=network,
        network_config=dict(net_cfg),
        n_train=len(train_ds),
        n_val=len(val_ds),
        variants=[i.variant for i in infos],
        train_seconds=seconds,
        pairs_per_s=steps * batch_size / seconds if seconds > 0 else None,
    )
    return result


# ----------------------------------------------------------------------------- quickstart
#: The quickstart demo (CPU, ≲ 2 min on 2 cores); ``full`` is several minutes.
#: benchmarks/strong_accuracy.py is the measurement.
QUICKSTART = {
    "small": {"variants": ["v1", "v4"], "n_train": 40, "n_test": 12, "epochs": 3,
              "lr": 2e-3, "fit_max": 2},
    "full": {"variants": ["v1", "v4"], "n_train": 400, "n_test": 64, "epochs": 8,
             "lr": 2e-3, "fit_max": 6},
}  # fmt: skip
#: Fast lens-fit settings of the quickstart (the benchmark uses the baseline's defaults).
QUICK_FIT = {"supersample": 1, "adam_steps": 30, "lm_max_iter": 6, "theta_e_start_factors": [1.0]}


def shipped_model(network: str = "astrorim-small") -> Path | None:
    """Pre-trained weights shipped with lensml, if any (the hook of the quickstart).

    A model directory (``model.json``, ``weights.pt``, ``normalisation.json``,
    ``strong_pipeline.json``) at ``lensml/models/strong/<network>/`` inside the installed
    package: ``astrorim-small``, trained by ``benchmarks/strong_accuracy.py`` (its card).
    """
    import lensml

    path = Path(lensml.__file__).resolve().parent / "models" / "strong" / network
    return path if (path / "model.json").is_file() else None


def quickstart_section(
    out_dir: str | Path, seed: int = 0, device: str = "cpu", full: bool = False
) -> tuple[list[Path], dict[str, Any]]:
    """Simulate v1 and v4 lenses, train ``astrorim-small`` briefly (or use shipped weights) and
    compare its reconstructions with the ``lens-fit`` baseline on a few systems.

    Returns the written figure/JSON paths and a report summary (``title``, ``text``,
    ``tables`` in the paper's Table-2 form plus lens-parameter errors, ``figures``).
    """
    import shutil

    from lensml.data.runner import run_simulate
    from lensml.pipelines.strong_eval import evaluate_strong

    cfg = QUICKSTART["full" if full else "small"]
    out_dir = Path(out_dir)
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    shipped = shipped_model("astrorim-small")
    tests = []
    train_dirs = []
    for k, variant in enumerate(cfg["variants"]):
        test = work / f"test-{variant}"
        run_simulate("strong", cfg["n_test"], test, seed + 100 + k, config={"variant": variant},
                     shard_size=64, progress=False)  # fmt: skip
        tests.append(test)
        if shipped is None:
            train = work / f"train-{variant}"
            run_simulate("strong", cfg["n_train"], train, seed + k, config={"variant": variant},
                         shard_size=64, progress=False)  # fmt: skip
            train_dirs.append(train)
    epochs_done = 0
    if shipped is None:
        res = train_strong(
            train_dirs, "astrorim-small", work / "run", cfg["epochs"], lr=cfg["lr"],
            warmup_epochs=1, seed=seed, device=None if device == "cpu" else device,
            progress=False,
        )  # fmt: skip
        model_dir, epochs_done = res["model_dir"], res["epochs"]
    else:
        model_dir = shipped
    ev = evaluate_strong(
        tests, model_dir, out_dir, fit_max=cfg["fit_max"], seed=seed, device=device,
        fit_config=QUICK_FIT, print_table=False,
    )  # fmt: skip
    shutil.rmtree(work)
    tables = ev["tables"]
    variants = ", ".join(cfg["variants"])
    text = (
        (
            f"{cfg['n_test']} held-out lenses per variant ({variants}) simulated at 96² pixels; "
            "the shipped astrorim-small weights (lensml.models, trained on all six variants; "
            "see its model card) were used. "
            if shipped is not None
            else f"{cfg['n_train']} training lenses per variant ({variants}) simulated at 96² "
            f"pixels; astrorim-small trained for {epochs_done} epoch(s) on CPU. "
        )
        + f"Sources reconstructed for {ev['n']} held-out lenses (SSIM and MSE on per-example "
        "[0, 1]-normalised sources, the paper's Table 2) and the parametric lens fit "
        f"(SIE + shear + Sérsic, fast settings) on {ev['fit']['n'] if ev.get('fit') else 0} "
        "of them. A demo, not a measurement: benchmarks/strong_accuracy.py evaluates 50 "
        "lenses of each of the six variants."
    )
    paths = [Path(p) for p in ev["figures"]] + [Path(ev["json"])]
    summary = {
        "config": cfg,
        "epochs_trained": epochs_done,
        "shipped_weights": shipped is not None,
        "overall": ev["source_metrics"]["astrorim"]["all"],
        "text": text,
        "tables": tables,
        "figures": [str(p) for p in ev["figures"]],
    }
    return paths, summary
