"""Cluster weak-lensing pipeline: train the paper's CNNs on noisy shear maps, evaluate vs the fit.

Paper: the cluster weak-lensing CNN paper (``shared/papers/cluster-weak-lensing-cnn.txt``),
Sects. 3.4 (training), 4 (metrics, eqs. 16–18), 5.2–5.4 (Tables 2–3, Fig. 8).

Training (:func:`train_clusters`, issue item 5) goes through the shared engine
(:func:`lensml.train.fit`): MSE on standardised labels, AdamW with β = (0.9, 0.999) and
decoupled weight decay, a step learning-rate decay every ``step_size`` = 20 epochs and early
stopping on the validation loss. The paper's initial learning rate, decay factor and weight
decay were lost in its text; the defaults here are lr = 1e-3, γ = 0.5, weight decay = 1e-4
(common AdamW settings for VGG/Inception regressors), all configurable. ``loss="l1"`` fits
the conditional median of each label instead of the mean (median-unbiased estimates).

Shape noise is added at training time (:class:`ClusterMapDataset`): a noiseless store serves
every noise level. Item ``i`` of epoch ``e`` gets Gaussian noise σ = σ_e / sqrt(n_g A_pix)
(:class:`lensml.sims.surveys.ShapeNoise`) from the generator
:func:`lensml.data.datasets.item_generator` ``(seed, e, i)``, so runs are reproducible
whatever the number of workers; ``noise=None`` trains on noiseless maps. Validation maps get
one fixed noise realisation.

Map size: the network's ``input_size`` decides. Maps of the same side are used as they are;
maps whose side is an integer multiple ``f`` of it are block-averaged ``f × f``
(:func:`block_mean`; the pixel becomes ``f`` times larger and the shape noise is drawn for
the larger pixel — the same statistics as averaging noise drawn on the fine grid). Any other
side is refused with a ValueError.

Evaluation (:func:`evaluate_clusters`, issue item 7) runs on a held-out store, noiseless and/or
noisy; the noisy maps are drawn **once** per condition (item ``i`` from
``item_generator(seed, 0, i)`` at the store's native pixel) and shared by every CNN (after
block-averaging to its input size) and by the ``nfw-tangential-fit`` baseline (on the native
maps, with the store's cosmology and per-map z_l, z_s). Metrics per label, per true-mass bin
and overall (eqs. 16–18, Δ = prediction − truth):

    bias = mean(Δ),  σ = sqrt(mean((Δ − bias)²)),  RMS = sqrt(mean(Δ²)),

plus ``median_bias`` = median(Δ), the quantity of the paper's Sect. 5.4 comparison. The fit
gives log10 M_vir and c_vir only (its mass in M_sun is converted to the labels' M_sun / h with
the store cosmology's h); the CNNs are reported on all five labels.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.clusters_calibration import MedianCalibration, load_median_calibration
from lensml.train.callbacks import epoch_callback

__all__ = [
    "FIT_NAME",
    "LABELS",
    "LOG_LABELS",
    "ClusterMapDataset",
    "ClusterStoreInfo",
    "binned_error_stats",
    "block_mean",
    "decode_predictions",
    "downsample_factor",
    "error_stats",
    "evaluate_clusters",
    "format_tables",
    "inspect_cluster_store",
    "predict_clusters",
    "quickstart_section",
    "read_cluster_fits",
    "train_clusters",
    "training_label_names",
]

#: Label columns of the ``clusters`` generator (see :mod:`lensml.sims.clusters`).
LABELS = ("log10_mvir", "c_vir", "c_smooth", "n_sub", "f_smooth")
#: Labels a network may learn as log10 (``log_concentration=True``): MSE on log10 c targets the
#: conditional mean of log10 c, i.e. the median of the log-normal c, instead of its mean.
LOG_LABELS = ("c_vir", "c_smooth")
#: Training losses :func:`train_clusters` accepts: the paper's MSE (conditional mean) and L1
#: (conditional median).
CLUSTER_LOSSES = ("mse", "l1")
#: Registry name of the baseline evaluated next to the CNNs.
FIT_NAME = "nfw-tangential-fit"
#: Labels the NFW fit estimates.
FIT_LABELS = ("log10_mvir", "c_vir")
#: Default true-mass bin edges (log10 M_vir [M_sun/h]) when the store's config has none.
DEFAULT_MASS_BIN_EDGES = (14.0, 14.375, 14.75, 15.125, 15.5)


# ----------------------------------------------------------------------------- store checks
@dataclass(frozen=True)
class ClusterStoreInfo:
    """What the pipeline needs to know about a ``clusters`` store.

    Attributes
    ----------
    root : Path
    n : int
        Items in complete shards.
    size : int
        Map side in pixels (square maps).
    pixel_scale : float
        Pixel side in arcsec.
    mass_bin_edges : tuple of float
        log10 M_vir [M_sun/h] edges of the evaluation bins (the generator's).
    cosmology : str
        Astropy cosmology name of the generator.
    z_lens, z_source : float
        The generator's default redshifts (per-map values are read when stored).
    """

    root: Path
    n: int
    size: int
    pixel_scale: float
    mass_bin_edges: tuple[float, ...]
    cosmology: str
    z_lens: float
    z_source: float


def inspect_cluster_store(data_dir: str | Path) -> ClusterStoreInfo:
    """Open and check a ``clusters`` store (``image`` (N, 2, H, H) g1/g2 maps, five labels).

    Raises
    ------
    ValueError
        Naming ``data_dir`` and what is missing: not a store, no complete shard, no ``image``
        array of (g1, g2) maps, labels other than :data:`LABELS`, no pixel scale in the config.
    """
    from lensml.data.store import open_store

    store = open_store(data_dir)
    where = f"data_dir {store.root}"
    if not store.shards:
        raise ValueError(f"{where}: the store has no complete shard")
    arrays = store.manifest["arrays"]
    if "image" not in arrays:
        raise ValueError(
            f"{where}: no 'image' array of (g1, g2) reduced-shear maps; it has {store.keys}"
        )
    shape = list(arrays["image"].get("shape", []))
    if len(shape) != 3 or shape[0] != 2 or shape[1] != shape[2]:
        raise ValueError(
            f"{where}: 'image' must hold square (g1, g2) maps of shape (2, H, H) per item, "
            f"got {tuple(shape)}"
        )
    if "labels" not in arrays or tuple(store.label_names) != LABELS:
        raise ValueError(
            f"{where}: 'labels' must have the columns {list(LABELS)}, got {store.label_names}"
        )
    cfg = store.manifest.get("config") or {}
    pixel_scale = cfg.get("pixel_scale")
    if not isinstance(pixel_scale, int | float) or not pixel_scale > 0:
        raise ValueError(f"{where}: the manifest config has no positive 'pixel_scale' (arcsec)")
    edges = tuple(float(e) for e in cfg.get("mass_bin_edges") or DEFAULT_MASS_BIN_EDGES)
    return ClusterStoreInfo(
        root=Path(store.root),
        n=len(store),
        size=int(shape[1]),
        pixel_scale=float(pixel_scale),
        mass_bin_edges=edges,
        cosmology=str(cfg.get("cosmology", "Planck18")),
        z_lens=float(cfg.get("z_lens", 0.2)),
        z_source=float(cfg.get("z_source", 1.0)),
    )


def downsample_factor(size: int, input_size: int, where: str = "maps") -> int:
    """Block-averaging factor taking ``size``-pixel maps to the network's ``input_size``.

    Raises
    ------
    ValueError
        When ``size`` is neither ``input_size`` nor an integer multiple of it.
    """
    size, input_size = int(size), int(input_size)
    if input_size >= 1 and size >= input_size and size % input_size == 0:
        return size // input_size
    raise ValueError(
        f"{where}: maps are {size}x{size} pixels but the network expects "
        f"{input_size}x{input_size}; the map side must equal input_size or be an integer "
        f"multiple of it (block-mean downsampling)"
    )


def block_mean(x: Any, factor: int) -> Any:
    """Average ``factor × factor`` pixel blocks of a ``(..., H, W)`` tensor (H, W divisible)."""
    import torch.nn.functional as F

    if factor == 1:
        return x
    *lead, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"block_mean: map {h}x{w} is not divisible by factor {factor}")
    y = F.avg_pool2d(x.reshape(-1, 1, h, w), factor)
    return y.reshape(*lead, h // factor, w // factor)


def _check_finite(x: Any, where: str, first_index: int = 0) -> None:
    import torch

    bad = ~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1) if x.ndim == 4 else None
    if bad is None:
        if not torch.isfinite(x).all():
            raise ValueError(f"{where}: item {first_index} has NaN or inf pixels")
        return
    if bad.any():
        idx = (torch.nonzero(bad).reshape(-1) + first_index).tolist()
        raise ValueError(
            f"{where}: {len(idx)} map(s) have NaN or inf pixels (items {idx[:5]}"
            f"{'...' if len(idx) > 5 else ''})"
        )


# ----------------------------------------------------------------------------- training data
class ClusterMapDataset:
    """Map-style dataset of (noisy) reduced-shear maps at the network's input size.

    Items are ``{"image": (2, S, S) float32, "labels": (5,) float32}``.

    Parameters
    ----------
    data_dir : path
        A ``clusters`` store (:func:`inspect_cluster_store`).
    input_size : int, optional
        Side S of the returned maps (default: the store's); the store's side must be S or an
        integer multiple of it (block-mean).
    noise : str or None
        Survey preset of :data:`lensml.sims.surveys.SURVEYS` (``"euclid"``, ``"lsst"``,
        ``"roman"``...) or None for noiseless maps.
    seed : int
        Seed of the per-item noise generators.
    indices : sequence of int, optional
        Store items to expose (default: all), e.g. a train/validation split.
    fixed_epoch : bool
        Keep the noise of epoch 0 forever (validation sets); otherwise :meth:`set_epoch`
        changes the draws.
    log_concentration : bool
        Return log10 of the :data:`LOG_LABELS` columns (names in :attr:`label_names` get a
        ``log10_`` prefix).
    memory_limit_mb : float
        When the exposed maps at the input size fit in this many MB (2 · S² · 4 bytes each)
        they are read once, in store order, and held in memory; otherwise every item is read
        from the store. A shuffled epoch read from the store touches one chunk per item (the
        chunk cache is small), which limited training to ~60 maps/s; from memory it is ~2000/s.
        0 always streams.

    Raises
    ------
    ValueError
        For a bad store or size; with the in-memory copy also for a map with NaN/inf pixels
        (naming the item), at construction instead of when the item is first drawn.
    """

    def __init__(
        self,
        data_dir: str | Path,
        input_size: int | None = None,
        noise: str | None = "euclid",
        seed: int = 0,
        indices: Sequence[int] | None = None,
        fixed_epoch: bool = False,
        log_concentration: bool = False,
        memory_limit_mb: float = 2048.0,
    ) -> None:
        from lensml.data.datasets import StoreDataset

        self.info = inspect_cluster_store(data_dir)
        size = self.info.size if input_size is None else int(input_size)
        self.factor = downsample_factor(self.info.size, size, f"data_dir {self.info.root}")
        self.input_size = size
        self.pixel_scale = self.info.pixel_scale * self.factor
        self.noise = _shape_noise(noise, self.pixel_scale)
        self.noise_name = None if noise is None else str(noise).lower()
        self.seed = int(seed)
        self.epoch = 0
        self.fixed_epoch = bool(fixed_epoch)
        self.indices = list(range(self.info.n)) if indices is None else [int(i) for i in indices]
        self.log_concentration = bool(log_concentration)
        self.label_names = training_label_names(self.log_concentration)
        self._log_cols = [LABELS.index(k) for k in LOG_LABELS] if self.log_concentration else []
        self._store = StoreDataset(self.info.root, keys=["image", "labels"])
        if float(memory_limit_mb) < 0:
            raise ValueError(f"memory_limit_mb must be >= 0, got {memory_limit_mb}")
        need_mb = len(self.indices) * 2 * size * size * 4 / 2**20
        self._maps: Any = None
        self._labels: Any = None
        if self.indices and need_mb <= float(memory_limit_mb):
            self._load()

    def _raw(self, index: int) -> tuple[Any, Any]:
        """The block-averaged noiseless map and the labels of store item ``index``."""
        sample = self._store[index]
        image = block_mean(sample["image"].float(), self.factor)
        _check_finite(image, f"data_dir {self.info.root}", index)
        return image, sample["labels"].float()

    def _load(self) -> None:
        import torch

        n, s = len(self.indices), self.input_size
        maps = torch.empty((n, 2, s, s), dtype=torch.float32)
        labels = torch.empty((n, len(LABELS)), dtype=torch.float32)
        # store order, so each chunk is decoded once
        for j in sorted(range(n), key=self.indices.__getitem__):
            maps[j], labels[j] = self._raw(self.indices[j])
        self._maps, self._labels = maps, labels

    def set_epoch(self, epoch: int) -> None:
        """Select the noise realisation of ``epoch`` (ignored with ``fixed_epoch``)."""
        if not self.fixed_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        from lensml.data.datasets import item_generator

        index = self.indices[int(i)]
        if self._maps is not None:
            image, labels = self._maps[int(i)], self._labels[int(i)]
        else:
            image, labels = self._raw(index)
        if self.noise is not None:
            image = self.noise(image, None, item_generator(self.seed, self.epoch, index))[0]
        else:
            image = image.clone()
        labels = labels.clone()
        if self._log_cols:
            labels[self._log_cols] = torch.log10(labels[self._log_cols].clamp_min(1e-3))
        return {"image": image, "labels": labels}


def training_label_names(log_concentration: bool) -> list[str]:
    """The label columns a cluster network learns (``log10_c_vir``... when log)."""
    return [f"log10_{k}" if log_concentration and k in LOG_LABELS else k for k in LABELS]


def decode_predictions(
    pred: np.ndarray, names: Sequence[str], calibration: MedianCalibration | None = None
) -> tuple[np.ndarray, list[str]]:
    """Undo :func:`training_label_names`: ``log10_c_vir`` → ``c_vir = 10**x`` (other columns
    unchanged), then apply the model's median ``calibration`` when one is given; returns the
    predictions and their label names."""
    pred = np.array(pred, dtype=float, copy=True)
    out = []
    for j, name in enumerate(names):
        base = name[len("log10_") :] if name.startswith("log10_") else None
        if base in LOG_LABELS:
            pred[:, j] = 10.0 ** pred[:, j]
            out.append(base)
        else:
            out.append(name)
    if calibration is not None:
        pred = calibration.apply(pred, out)
    return pred, out


def _shape_noise(noise: str | None, pixel_scale: float) -> Any:
    if noise is None:
        return None
    from lensml.sims.surveys import ShapeNoise, get_survey

    if not isinstance(noise, str):
        raise ValueError(f"noise must be a survey preset name or None, got {noise!r}")
    if noise.lower() in ("none", "noiseless"):
        return None
    get_survey(noise)  # ValueError listing the presets
    return ShapeNoise(pixel_scale=pixel_scale, survey=noise)


def train_clusters(
    data_dir: str | Path,
    network: str = "vgg-small",
    out_dir: str | Path = "lensml-clusters-run",
    noise: str | None = "euclid",
    epochs: int = 60,
    *,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    step_size: int = 20,
    gamma: float = 0.5,
    patience: int = 10,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | None = None,
    network_config: Mapping[str, Any] | None = None,
    max_items: int | None = None,
    num_workers: int = 0,
    resume: bool = False,
    progress: bool = True,
    train_overrides: Mapping[str, Any] | None = None,
    log_concentration: bool = True,
    loss: str = "mse",
) -> dict[str, Any]:
    """Train a cluster CNN on a ``clusters`` store with training-time shape noise.

    Parameters
    ----------
    data_dir : path
        Training store (noiseless maps, :func:`inspect_cluster_store`).
    network : str
        Registered network (``vgg19``, ``vgg22``, ``inception-v4``, ``inception-resnet-v2``,
        ``vgg-small``, ``inception-small``, ``inception-resnet-small``); built with 2 input
        channels and 5 outputs, weights seeded by ``seed``.
    out_dir : path
        Run directory of :func:`lensml.train.fit` (the saved model is ``out_dir/model``).
    noise : str or None
        Survey preset for the training-time shape noise, or None (noiseless).
    epochs : int
        Maximum epochs (early stopping may end sooner), >= 1.
    batch_size, lr, weight_decay, step_size, gamma, patience
        AdamW learning rate and decoupled weight decay, step schedule (×``gamma`` every
        ``step_size`` epochs) and early-stopping patience (validations).
    val_fraction : float
        Fraction of the items held out for validation (seeded split), in (0, 0.9].
    seed : int
        Seeds the split, the weights, the shuffling and the noise.
    device : str, optional
        ``cpu``, ``cuda``, ``auto``... (see :func:`lensml.train.fit`).
    network_config : mapping, optional
        Extra network options (``input_size`` etc.); ``in_channels=2, out_features=5`` are set.
    max_items : int, optional
        Use only the first ``max_items`` items of the store.
    num_workers : int
        DataLoader workers (0 keeps the per-epoch noise callback exact).
    resume, progress
        Passed to :func:`lensml.train.fit`.
    train_overrides : mapping, optional
        Extra :class:`lensml.train.TrainConfig` fields (merged last).
    log_concentration : bool
        Learn log10 c_vir and log10 c_smooth (default; predictions are converted back by
        :func:`decode_predictions`). The MSE then targets the median of the log-normal
        concentrations rather than their mean, which removes most of the CNN's median bias in
        c; False trains on c itself as the paper does.
    loss : {"mse", "l1"}
        ``mse`` (the paper) fits the conditional mean of each normalised label; ``l1`` fits
        the conditional median, so that over a test set drawn like the training set the
        median of prediction − truth tends to 0 for every label (the paper's Sect. 5.4
        median-bias comparison). The median commutes with log10, so with
        ``log_concentration`` it is also the conditional median of c itself.

    Returns
    -------
    dict
        :func:`lensml.train.fit`'s result plus ``network``, ``input_size``, ``downsample``,
        ``pixel_scale`` (arcsec, after downsampling), ``noise``, ``n_train``, ``n_val``,
        ``train_seconds`` and ``train_maps_per_s`` (training maps processed per second).
    """
    import torch

    from lensml.train import build_network, fit

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not 0 < val_fraction <= 0.9:
        raise ValueError(f"val_fraction must be in (0, 0.9], got {val_fraction}")
    if loss not in CLUSTER_LOSSES:
        raise ValueError(f"loss must be one of {CLUSTER_LOSSES}, got {loss!r}")
    info = inspect_cluster_store(data_dir)
    net_cfg = {**dict(network_config or {}), "in_channels": 2, "out_features": len(LABELS)}
    model = build_network(network, dict(net_cfg), seed=int(seed))
    input_size = int(getattr(model, "input_size", info.size))
    downsample_factor(info.size, input_size, f"data_dir {info.root} for network {network!r}")
    n = info.n if max_items is None else min(info.n, int(max_items))
    if n < 2:
        raise ValueError(f"data_dir {info.root}: need at least 2 items to train, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 104729))
    n_val = max(1, round(n * val_fraction))
    val_idx, train_idx = perm[:n_val].tolist(), perm[n_val:].tolist()
    log_c = bool(log_concentration)
    train_ds = ClusterMapDataset(
        info.root, input_size, noise, seed, train_idx, log_concentration=log_c
    )
    val_ds = ClusterMapDataset(
        info.root, input_size, noise, seed + 1, val_idx, fixed_epoch=True, log_concentration=log_c
    )
    config: dict[str, Any] = {
        "max_epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": 0.0,
        "num_workers": num_workers,
        "optimizer": {
            "name": "AdamW",
            "lr": lr,
            "weight_decay": weight_decay,
            "betas": [0.9, 0.999],
        },
        "schedule": {"name": "step", "interval": "epoch", "step_size": step_size, "gamma": gamma},
        "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": patience},
        "loss": {"name": loss},
        "normalise_labels": True,
    }
    config.update(dict(train_overrides or {}))
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
        label_names=train_ds.label_names,
        callbacks=[epoch_callback(train_ds)],
    )
    seconds = time.perf_counter() - t0
    epochs_done = int(result.get("epochs") or 0)
    result.update(
        network=network,
        input_size=input_size,
        downsample=train_ds.factor,
        pixel_scale=train_ds.pixel_scale,
        noise=train_ds.noise_name,
        n_train=len(train_ds),
        n_val=len(val_ds),
        train_seconds=seconds,
        train_maps_per_s=(epochs_done * (len(train_ds) + len(val_ds))) / seconds
        if seconds > 0
        else None,
    )
    return result


# ----------------------------------------------------------------------------- metrics
def error_stats(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """The paper's eqs. 16–18 for Δ = pred − true (finite pairs only).

    Returns
    -------
    dict
        ``n``, ``bias`` = mean Δ, ``sigma`` = sqrt(mean (Δ − bias)²), ``rms`` = sqrt(mean Δ²),
        ``median_bias`` = median Δ (the Sect. 5.4 statistic); NaN values when ``n == 0``.
    """
    p = np.asarray(pred, dtype=float).reshape(-1)
    t = np.asarray(true, dtype=float).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"error_stats: pred and true lengths differ ({p.size} vs {t.size})")
    d = p - t
    d = d[np.isfinite(d)]
    if d.size == 0:
        nan = float("nan")
        return {"n": 0, "bias": nan, "sigma": nan, "rms": nan, "median_bias": nan}
    b = float(np.mean(d))
    return {
        "n": int(d.size),
        "bias": b,
        "sigma": float(np.sqrt(np.mean((d - b) ** 2))),
        "rms": float(np.sqrt(np.mean(d * d))),
        "median_bias": float(np.median(d)),
    }


def binned_error_stats(
    pred: np.ndarray, true: np.ndarray, log10_mass: np.ndarray, edges: Sequence[float]
) -> dict[str, Any]:
    """:func:`error_stats` overall and per true-mass bin ``[e_k, e_{k+1})`` (last bin closed).

    Returns
    -------
    dict
        ``{"overall": stats, "bins": [{"lo", "hi", **stats}, ...]}``.
    """
    m = np.asarray(log10_mass, dtype=float).reshape(-1)
    p = np.asarray(pred, dtype=float).reshape(-1)
    t = np.asarray(true, dtype=float).reshape(-1)
    if not (m.size == p.size == t.size):
        raise ValueError("binned_error_stats: pred, true and log10_mass lengths differ")
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"binned_error_stats: edges must be >= 2 increasing values, got {edges}")
    bins = []
    for k, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = k == len(edges) - 2
        sel = (m >= lo) & ((m <= hi) if last else (m < hi))
        bins.append({"lo": lo, "hi": hi, **error_stats(p[sel], t[sel])})
    return {"overall": error_stats(p, t), "bins": bins}


# ----------------------------------------------------------------------------- evaluation
@dataclass
class _Method:
    name: str
    labels: list[str]
    pred: list[np.ndarray]
    seconds: float = 0.0


def _fit_predict(
    fit: Any, g: Any, pixel_scale: float, sigma: float, z_l: Any, z_s: Any, log10_h: float,
    chunk: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    import torch

    out, conv = [], []
    for i in range(0, g.shape[0], chunk):
        res = fit(
            g[i : i + chunk].to(torch.float64),
            pixel_scale,
            sigma=sigma,
            z_l=z_l[i : i + chunk].tolist(),
            z_s=z_s[i : i + chunk].tolist(),
        )
        lm = res.log10_mass.detach().cpu().numpy() + log10_h
        c = res.concentration.detach().cpu().numpy()
        out.append(np.stack([lm, c], axis=1))
        conv.append(res.converged.detach().cpu().numpy())
    return np.concatenate(out), np.concatenate(conv)


def evaluate_clusters(
    data_dir: str | Path,
    models: Sequence[str | Path],
    out_dir: str | Path,
    noise: str | None = "euclid",
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 256,
    baseline_config: Mapping[str, Any] | None = None,
    *,
    include_noiseless: bool = False,
    include_fit: bool = True,
    fit_chunk: int = 512,
    max_items: int | None = None,
    plots: bool = True,
    print_table: bool = True,
    apply_calibration: bool = True,
) -> dict[str, Any]:
    """Evaluate cluster CNN(s) and the NFW tangential-shear fit on the same held-out maps.

    Parameters
    ----------
    data_dir : path
        Held-out ``clusters`` store (noiseless maps; noise is drawn here).
    models : sequence of path
        Saved model directories of :func:`train_clusters` (may be empty: fit only). Each
        model's input size decides its block-mean factor (:func:`downsample_factor`).
    out_dir : path
        Output directory (created): ``clusters_eval.json``, ``density_<method>_<cond>.png``,
        ``distributions_<cond>.png`` and ``predictions_<cond>.npz`` (the true labels as
        ``truth`` (N, 5) and each method's columns as ``<method>/<label>``, for bootstrap
        errors and custom plots); every file is written atomically.
    noise : str or None
        Survey preset of the noisy condition (``"euclid"``, ``"lsst"``, ``"roman"``...), or
        None to evaluate on noiseless maps only.
    seed : int
        Seed of the noise realisation (item ``i`` uses ``item_generator(seed, 0, i)``), shared
        by every method.
    device : str
        Torch device of the CNNs (the fit runs on CPU in float64).
    batch_size : int
        CNN maps per forward pass.
    baseline_config : mapping, optional
        :class:`lensml.baselines.nfw_fit.NFWTangentialFit.Config` overrides (the cosmology
        and default redshifts are taken from the store unless given here).
    include_noiseless : bool
        Also evaluate the noiseless maps when ``noise`` is set.
    include_fit : bool
        Run the NFW fit (the issue's comparison; False for CNN-only evaluations).
    fit_chunk : int
        Maps per batched fit call.
    max_items : int, optional
        Evaluate the first ``max_items`` items only.
    plots : bool
        Write the PNG figures.
    print_table : bool
        Print the tables with rich.
    apply_calibration : bool
        Apply each model's median calibration
        (:mod:`lensml.pipelines.clusters_calibration`) when it has one; ``median_calibration``
        in the result says which labels were mapped and where the calibration came from.

    Returns
    -------
    dict
        ``{"data_dir", "n", "pixel_scale", "mass_bin_edges", "labels", "conditions":
        {cond: {"noise", "pixel_sigma", "methods": {method: {"labels": {label: {"overall",
        "bins"}}, "maps_per_s", ...}}, "medians": {...}, "fit_converged_fraction"}},
        "figures": [...], "json": path}`` — also written to ``out_dir/clusters_eval.json``.

    Raises
    ------
    ValueError
        Bad store (see :func:`inspect_cluster_store`), NaN/inf pixels, a model whose input size
        does not divide the maps or whose labels are not the cluster labels, an unknown noise
        preset.
    """
    import torch

    from lensml.data.datasets import item_generator
    from lensml.data.store import open_store, write_json_atomic
    from lensml.physics.cosmology import get_cosmology
    from lensml.train import load_model, predict

    info = inspect_cluster_store(data_dir)
    store = open_store(info.root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    loaded = []
    calibrations: dict[str, MedianCalibration | None] = {}
    for path in models:
        net, minfo = load_model(path, device)
        names = _decoded_names(minfo.normalisation.label_names)
        missing = [k for k in FIT_LABELS if k not in names]
        if missing:
            raise ValueError(f"model {path}: predicts {names}, not the cluster labels {missing}")
        shape = list(minfo.input_shape or [2, info.size, info.size])
        factor = downsample_factor(info.size, int(shape[-1]), f"model {path} on {info.root}")
        label = f"cnn:{minfo.network or Path(path).name}"
        while any(label == m[0] for m in loaded):
            label += "'"
        loaded.append((label, (net, minfo), factor, list(minfo.normalisation.label_names)))
        calibrations[label] = load_median_calibration(path) if apply_calibration else None

    conditions: list[str | None] = []
    if noise is None or include_noiseless:
        conditions.append(None)
    if noise is not None:
        _shape_noise(noise, info.pixel_scale)  # validates the preset name
        conditions.append(str(noise).lower())

    fit = None
    log10_h = 0.0
    if include_fit:
        from lensml.baselines.nfw_fit import NFWTangentialFit

        cfg = {"cosmology": info.cosmology, "z_l": info.z_lens, "z_s": info.z_source}
        cfg.update(dict(baseline_config or {}))
        fit = NFWTangentialFit(cfg)
        log10_h = math.log10(float(get_cosmology(fit.config.cosmology).h))

    n_total = info.n if max_items is None else min(info.n, int(max_items))
    keys = ["image", "labels"] + [k for k in ("z_l", "z_s") if k in store.keys]
    result: dict[str, Any] = {
        "data_dir": str(info.root),
        "n": n_total,
        "map_size": info.size,
        "pixel_scale": info.pixel_scale,
        "mass_bin_edges": list(info.mass_bin_edges),
        "labels": list(LABELS),
        "seed": int(seed),
        "models": {m[0]: str(p) for m, p in zip(loaded, models, strict=True)},
        "median_calibration": {
            k: None if c is None else {"labels": list(c.knots), **dict(c.source)}
            for k, c in calibrations.items()
        },
        "conditions": {},
        "figures": [],
    }
    for cond in conditions:
        cond_name = cond or "noiseless"
        shape_noise = _shape_noise(cond, info.pixel_scale)
        # the fit weights bins by σ; noiseless maps get the Euclid σ as a nominal weight
        fit_sigma = (shape_noise or _shape_noise("euclid", info.pixel_scale)).sigma
        methods = {m[0]: _Method(m[0], _decoded_names(m[3]), []) for m in loaded}
        fit_method = _Method(FIT_NAME, list(FIT_LABELS), []) if fit is not None else None
        truths, converged = [], []
        offset = 0
        for shard_index, count in store.shards:
            if offset >= n_total:
                break
            take = min(count, n_total - offset)
            data = store.read_shard(shard_index, keys)
            g = torch.from_numpy(np.ascontiguousarray(data["image"][:take])).float()
            _check_finite(g, f"data_dir {info.root}", offset)
            if shape_noise is not None:
                g = torch.stack(
                    [
                        shape_noise(g[j], None, item_generator(seed, 0, offset + j))[0]
                        for j in range(take)
                    ]
                )
            truths.append(np.asarray(data["labels"][:take], dtype=float))
            for label, model, factor, names in loaded:
                t0 = time.perf_counter()
                p = predict(model, block_mean(g, factor), batch_size=batch_size, device=device)
                methods[label].seconds += time.perf_counter() - t0
                dec = decode_predictions(p.numpy()[:, : len(names)], names, calibrations[label])
                methods[label].pred.append(dec[0])
            if fit_method is not None:
                z_l = np.asarray(data.get("z_l", np.full(count, info.z_lens)))[:take]
                z_s = np.asarray(data.get("z_s", np.full(count, info.z_source)))[:take]
                t0 = time.perf_counter()
                p, conv = _fit_predict(
                    fit, g, info.pixel_scale, fit_sigma, z_l, z_s, log10_h, fit_chunk
                )
                fit_method.seconds += time.perf_counter() - t0
                fit_method.pred.append(p)
                converged.append(conv)
            offset += take
        truth = np.concatenate(truths)
        all_methods = list(methods.values()) + ([fit_method] if fit_method else [])
        cond_out: dict[str, Any] = {
            "noise": cond,
            "pixel_sigma": None if shape_noise is None else shape_noise.sigma,
            "methods": {},
            "medians": {"truth": {k: float(np.median(truth[:, LABELS.index(k)])) for k in LABELS}},
        }
        if fit_method is not None:
            cond_out["fit_converged_fraction"] = float(np.mean(np.concatenate(converged)))
        preds: dict[str, dict[str, np.ndarray]] = {}
        for m in all_methods:
            pred = np.concatenate(m.pred)
            cols = {name: pred[:, j] for j, name in enumerate(m.labels) if name in LABELS}
            preds[m.name] = cols
            cond_out["methods"][m.name] = {
                "labels": {
                    name: binned_error_stats(
                        col, truth[:, LABELS.index(name)], truth[:, 0], info.mass_bin_edges
                    )
                    for name, col in cols.items()
                },
                "seconds": m.seconds,
                "maps_per_s": len(truth) / m.seconds if m.seconds > 0 else None,
            }
            cond_out["medians"][m.name] = {k: float(np.nanmedian(v)) for k, v in cols.items()}
        if plots:
            result["figures"] += _write_figures(out_dir, cond_name, truth, preds)
        _write_predictions(out_dir / f"predictions_{cond_name}.npz", truth, preds)
        result["conditions"][cond_name] = cond_out
    json_path = out_dir / "clusters_eval.json"
    result["json"] = str(json_path)
    write_json_atomic(json_path, _json_safe(result))
    if print_table:
        from rich.console import Console

        console = Console()
        for table in format_tables(result):
            console.print(table)
    return result


def _write_predictions(path: Path, truth: np.ndarray, preds: Mapping[str, Any]) -> None:
    import io

    arrays = {"truth": truth, "labels": np.array(LABELS)}
    for method, cols in preds.items():
        for name, col in cols.items():
            arrays[f"{method}/{name}"] = np.asarray(col)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _decoded_names(names: Sequence[str]) -> list[str]:
    return decode_predictions(np.zeros((0, len(names))), list(names))[1]


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name.replace("cnn:", ""))


def _write_figures(
    out_dir: Path, cond: str, truth: np.ndarray, preds: Mapping[str, Mapping[str, np.ndarray]]
) -> list[str]:
    from lensml import plots

    files = []
    for name, cols in preds.items():
        labels = [k for k in LABELS if k in cols]
        p = np.stack([cols[k] for k in labels], axis=1)
        t = np.stack([truth[:, LABELS.index(k)] for k in labels], axis=1)
        path = out_dir / f"density_{_safe_name(name)}_{cond}.png"
        plots.pred_vs_true_density(p, t, labels, path, title=f"{name} — {cond}")
        files.append(str(path))
    panels = {}
    for label, title in (("log10_mvir", "log10 M_vir [M_sun/h]"), ("c_vir", "c_vir")):
        series = {"truth": truth[:, LABELS.index(label)]}
        series.update({name: cols[label] for name, cols in preds.items() if label in cols})
        panels[title] = series
    path = out_dir / f"distributions_{cond}.png"
    plots.distributions(panels, path, title=f"CNN vs NFW fit vs truth — {cond}")
    files.append(str(path))
    return files


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def format_tables(result: Mapping[str, Any]) -> list[Any]:
    """Rich tables like the paper's Tables 2–3: per condition, label and mass bin, each
    method's bias / σ / RMS (and the median bias) of Δ = prediction − truth."""
    from rich.table import Table

    tables = []
    for cond, data in result["conditions"].items():
        methods = list(data["methods"])
        table = Table(title=f"clusters — {cond} maps (bias / σ / RMS; median bias)")
        table.add_column("label")
        table.add_column("log10 M bin")
        table.add_column("N", justify="right")
        for m in methods:
            table.add_column(m.replace("cnn:", ""), justify="right")
        for label in result["labels"]:
            have = [m for m in methods if label in data["methods"][m]["labels"]]
            if not have:
                continue
            first = data["methods"][have[0]]["labels"][label]
            rows = [("all", first["overall"]["n"], "overall")]
            rows += [
                (f"{b['lo']:.2f}–{b['hi']:.2f}", b["n"], k) for k, b in enumerate(first["bins"])
            ]
            for k, (bin_name, n, key) in enumerate(rows):
                cells = []
                for m in methods:
                    stats = data["methods"][m]["labels"].get(label)
                    if stats is None:
                        cells.append("—")
                        continue
                    s = stats["overall"] if key == "overall" else stats["bins"][key]
                    cells.append(_cell(s))
                table.add_row(label if k == 0 else "", bin_name, str(n), *cells)
            table.add_section()
        tables.append(table)
    return tables


def _cell(s: Mapping[str, Any]) -> str:
    def f(v: Any) -> str:
        return "nan" if v is None or not math.isfinite(v) else f"{v:.3g}"

    if not s.get("n"):
        return "—"
    return f"{f(s['bias'])} / {f(s['sigma'])} / {f(s['rms'])}; {f(s['median_bias'])}"


# ----------------------------------------------------------------------------- real data in
def read_cluster_fits(paths: Sequence[str | Path]) -> tuple[Any, list[str], float | None]:
    """Reduced-shear maps from cluster FITS files (the format ``simulate clusters --fits`` writes).

    Parameters
    ----------
    paths : sequence of path
        FITS files, each with image extensions ``G1`` and ``G2`` (reduced shear, same shape,
        square).

    Returns
    -------
    maps : Tensor
        ``(N, 2, S, S)`` float32 (g1, g2).
    sources : list of str
        The file of each map.
    pixel_scale : float or None
        arcsec / pixel from the headers, when they carry one.

    Raises
    ------
    ValueError
        A file without the ``G1``/``G2`` extensions, maps that are not square or differ in
        shape between files or between G1 and G2, or NaN/inf pixels (naming the file).
    """
    import torch

    from lensml.data.fits_io import read_cutouts

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no cluster FITS files given")
    comps = []
    for ext in ("G1", "G2"):
        try:
            comps.append(read_cutouts(paths, hdu=ext, pixel_scale=None, override=True))
        except ValueError as err:
            if ext.lower() in str(err).lower() or "extension" in str(err).lower():
                raise ValueError(
                    f"{err} (cluster inputs need the reduced-shear image extensions G1 and G2, "
                    "as written by `lensml simulate clusters --fits`)"
                ) from err
            raise
    g1, g2 = comps[0].images, comps[1].images
    if g1.shape != g2.shape or g1.shape[-1] != g1.shape[-2]:
        raise ValueError(
            f"{paths[0]}: G1 {tuple(g1.shape[-2:])} and G2 {tuple(g2.shape[-2:])} must be "
            "square maps of the same shape"
        )
    maps = torch.cat([g1, g2], dim=1)
    for i, path in enumerate(paths):
        if not torch.isfinite(maps[i]).all():
            raise ValueError(f"{path}: the G1/G2 maps contain NaN or inf pixels")
    return maps, [str(p) for p in paths], comps[0].pixel_scale


def predict_clusters(
    inputs: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    batch_size: int = 64,
    device: str = "cpu",
    apply_calibration: bool = True,
) -> dict[str, Any]:
    """Cluster properties for real or simulated reduced-shear maps, written as a FITS catalogue.

    Parameters
    ----------
    inputs : sequence of path
        Cluster FITS files (:func:`read_cluster_fits`), or one ``clusters`` store directory.
    model : path
        Saved model directory of :func:`train_clusters`.
    out : path
        FITS catalogue (written atomically): ``index``, ``source`` and one column per label
        (``log10_mvir`` in log10 M_sun/h, ``c_vir``, ``c_smooth``, ``n_sub``, ``f_smooth``).
    batch_size : int
        Maps per forward pass, >= 1.
    device : str
        Torch device.
    apply_calibration : bool
        Apply the model's median calibration (:mod:`lensml.pipelines.clusters_calibration`)
        when it has one.

    Returns
    -------
    dict
        ``{"n", "out", "columns", "median_calibrated"}`` (the calibrated labels).

    Raises
    ------
    ValueError
        Bad inputs (see :func:`read_cluster_fits`), a map side that is not an integer multiple
        of the model's input size, a model that does not predict the cluster labels.
    """
    import numpy as np

    from lensml.data.fits_io import write_catalog
    from lensml.train import load_model, predict

    inputs = [Path(p) for p in inputs]
    if len(inputs) == 1 and (inputs[0] / "manifest.json").is_file():
        from lensml.data.store import open_store

        info = inspect_cluster_store(inputs[0])
        maps = open_store(info.root).read_all(keys=["image"])["image"]
        import torch

        maps = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
        sources = [f"{info.root}[{i}]" for i in range(maps.shape[0])]
    else:
        maps, sources, _ = read_cluster_fits(inputs)
    net, minfo = load_model(model, device)
    learned = list(minfo.normalisation.label_names)
    names = _decoded_names(learned)
    if any(k not in names for k in FIT_LABELS):
        raise ValueError(f"model {model}: predicts {learned}, not the cluster labels")
    size = int((minfo.input_shape or [2, maps.shape[-1]])[-1])
    factor = downsample_factor(maps.shape[-1], size, f"inputs for model {model}")
    _check_finite(maps, "inputs")
    pred = predict((net, minfo), block_mean(maps, factor), batch_size=batch_size, device=device)
    calibration = load_median_calibration(model) if apply_calibration else None
    pred = decode_predictions(pred.numpy()[:, : len(learned)], learned, calibration)[0]
    columns: dict[str, Any] = {"index": np.arange(pred.shape[0]), "source": np.array(sources)}
    for j, name in enumerate(names):
        columns[name] = pred[:, j]
    write_catalog(out, columns)
    return {
        "n": int(pred.shape[0]),
        "out": str(out),
        "columns": list(columns),
        "median_calibrated": [] if calibration is None else list(calibration.knots),
    }


# ----------------------------------------------------------------------------- quickstart
#: The quickstart demo (CPU, about a minute); ``full`` is a few minutes.
#: benchmarks/clusters_accuracy.py is the real measurement.
QUICKSTART = {
    "small": {"n_train": 384, "n_test": 128, "size": 64, "pixel_scale": 16.0,
              "network": "vgg-small", "epochs": 4, "noise": "euclid"},
    "full": {"n_train": 2000, "n_test": 500, "size": 64, "pixel_scale": 16.0,
             "network": "vgg-small", "epochs": 12, "noise": "euclid"},
}  # fmt: skip


def quickstart_section(
    out_dir: str | Path, seed: int = 0, device: str = "cpu", full: bool = False
) -> tuple[list[Path], dict[str, Any]]:
    """Simulate a small cluster set, train ``vgg-small`` briefly and judge it against the fit.

    Returns the written figure/JSON paths and a report summary (``title``, ``text``,
    ``tables`` in the paper's Table-3 form for log10 M_vir and c_vir, overall numbers).
    """
    import shutil

    from lensml.data.runner import run_simulate

    cfg = QUICKSTART["full" if full else "small"]
    out_dir = Path(out_dir)
    gen_cfg = {"size": cfg["size"], "pixel_scale": cfg["pixel_scale"]}
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    from lensml.models import list_models

    shipped = [m.path for m in list_models("clusters") if m.name == cfg["network"]]
    use_shipped = bool(shipped) and not full
    stores = {}
    splits = [("test", cfg["n_test"], seed + 1)]
    if not use_shipped:
        splits.insert(0, ("train", cfg["n_train"], seed))
    for split, n, s in splits:
        stores[split] = work / split
        run_simulate("clusters", n, stores[split], s, config=gen_cfg, shard_size=128,
                     progress=False)  # fmt: skip
    if use_shipped:
        train = {"model_dir": str(shipped[0]), "epochs": "shipped (lensml.models)"}
    else:
        train = train_clusters(
            stores["train"], cfg["network"], work / "run", noise=cfg["noise"],
            epochs=cfg["epochs"], seed=seed, device=None if device == "cpu" else device,
            progress=False,
        )  # fmt: skip
    ev = evaluate_clusters(
        stores["test"], [train["model_dir"]], out_dir, noise=cfg["noise"], seed=seed + 2,
        device=device, print_table=False,
    )  # fmt: skip
    shutil.rmtree(work)
    cond = ev["conditions"][cfg["noise"]]
    overall = {
        method: {
            label: {k: row["overall"][k] for k in ("bias", "median_bias", "sigma", "rms")}
            for label, row in res["labels"].items()
            if label in FIT_LABELS
        }
        for method, res in cond["methods"].items()
    }
    rows = []
    for label in FIT_LABELS:
        for method, res in cond["methods"].items():
            binned = res["labels"].get(label)
            if binned is None:
                continue
            for b in [*binned["bins"], binned["overall"]]:
                where = f"{b['lo']:.2f}–{b['hi']:.2f}" if "lo" in b else "all"
                rows.append([label, method, where, b["n"], b["bias"], b["median_bias"],
                             b["sigma"], b["rms"]])  # fmt: skip
    how = (
        f"the shipped {cfg['network']} (lensml.models, trained on 3000 clusters)"
        if use_shipped
        else f"{cfg['network']} trained for {train['epochs']} epochs on {cfg['n_train']} "
        "clusters on CPU"
    )
    text = (
        f"Clusters simulated at {cfg['size']}² pixels of {cfg['pixel_scale']}″ with "
        f"{cfg['noise']} shape noise; {how}; the CNN and the NFW tangential-shear fit on the "
        f"same {cfg['n_test']} noisy test maps. benchmarks/clusters_accuracy.py is the "
        "measurement."
    )
    table = {
        "caption": "Errors per true-mass bin (paper eqs. 16–18; mass in log10 M_sun/h)",
        "columns": ["label", "method", "log10 M bin", "N", "bias", "median bias", "σ", "RMS"],
        "rows": rows,
    }
    paths = [Path(p) for p in ev["figures"]] + [Path(ev["json"])]
    summary = {
        "config": cfg,
        "epochs_trained": train["epochs"],
        "overall": overall,
        "text": text,
        "tables": [table],
        "figures": [str(p) for p in ev["figures"]],
    }
    return paths, summary
