"""Pixelated strong-lensing pipeline (Adam et al.): data, VAE and RIM training.

Paper: Adam, Perreault-Levasseur, Hezaveh & Welling, "Pixelated reconstruction of foreground
density and background surface brightness in gravitational lensing systems using recurrent
inference machines" (``shared/papers/rim-pixelated-source-and-mass.txt``).

Stages (each a function here, a CLI verb in :mod:`lensml.commands.strong_pixelated`):

1. ``lensml simulate strong-pixelated`` — observations y of analytic-realistic κ maps and
   strong-lensing / COSMOS sources (:mod:`lensml.sims.strong_pixelated`, §3).
2. :func:`train_vae` — the source VAE and the log10 κ VAE (Appendix B, Tables 5–6) on the maps
   of a store. They enlarge the training set (``vae_source`` / ``vae_kappa`` options of the
   generator draw maps from them, §3) and give the Fisher samples of the fine-tuning (§2.5.2).
3. :func:`train_rim` — the RIM (eq. 7 loss) on one or several stores, with the paper's optimiser
   (Adamax, exponential decay 0.95 per 100 000 steps, Table 7) and the flips / 90° rotations
   that lensing commutes with (both grids are centred on the optical axis).
4. Evaluation and fine-tuning: :mod:`lensml.pipelines.strong_pixelated_eval`; prediction on a
   FITS image: :mod:`lensml.pipelines.strong_pixelated_predict`.

A saved RIM or VAE is a :func:`lensml.train.fit` model directory; ``strong_pixelated.json``
next to it records the physics (grids, fields of view) and the training stores.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensml.data.pooled import PooledStores
from lensml.train.callbacks import epoch_callback, time_budget_callback

__all__ = [
    "GENERATOR",
    "MAP_KEYS",
    "SIDECAR",
    "PixelatedDataset",
    "PixelatedStoreInfo",
    "augment_maps",
    "inspect_pixelated_store",
    "load_rim",
    "load_vae",
    "quickstart_section",
    "read_sidecar",
    "shipped_models",
    "train_rim",
    "train_vae",
]

GENERATOR = "strong-pixelated"
#: Maps served by :class:`PixelatedDataset` (all augmented together) and the noise σ.
MAP_KEYS = ("image", "source", "kappa", "psf")
#: Pipeline metadata written next to a trained model's files.
SIDECAR = "strong_pixelated.json"


# ----------------------------------------------------------------------------- stores
@dataclass(frozen=True)
class PixelatedStoreInfo:
    """What the pipeline needs to know about a ``strong-pixelated`` store.

    Attributes
    ----------
    root : Path
    n : int
        Items in complete shards.
    n_image, n_source, psf_size : int
        Image (= κ), source and PSF sides in pixels.
    fov, source_fov : float
        Image and source fields of view, arcsec.
    config : dict
        The generator configuration of the store.
    """

    root: Path
    n: int
    n_image: int
    n_source: int
    psf_size: int
    fov: float
    source_fov: float
    config: dict[str, Any]


def inspect_pixelated_store(data_dir: str | Path) -> PixelatedStoreInfo:
    """Open and check a ``strong-pixelated`` store.

    Raises
    ------
    ValueError
        Naming ``data_dir``: not a store, another generator's store, no complete shard, or
        missing one of the ``image``/``source``/``kappa``/``psf``/``sigma`` arrays.
    """
    from lensml.data.store import open_store

    store = open_store(data_dir)
    where = f"data_dir {store.root}"
    if store.manifest.get("generator") != GENERATOR:
        raise ValueError(
            f"{where}: written by generator {store.manifest.get('generator')!r}, expected "
            f"{GENERATOR!r} (lensml simulate {GENERATOR})"
        )
    if not store.shards:
        raise ValueError(f"{where}: the store has no complete shard")
    arrays = store.manifest["arrays"]
    missing = [k for k in (*MAP_KEYS, "sigma") if k not in arrays]
    if missing:
        raise ValueError(f"{where}: missing arrays {missing}; it has {store.keys}")
    cfg = dict(store.manifest.get("config") or {})
    n_image = int(arrays["image"]["shape"][-1])
    n_source = int(arrays["source"]["shape"][-1])
    fov, source_fov = _fields_of_view(cfg, where)
    return PixelatedStoreInfo(
        root=Path(store.root),
        n=len(store),
        n_image=n_image,
        n_source=n_source,
        psf_size=int(arrays["psf"]["shape"][-1]),
        fov=fov,
        source_fov=source_fov,
        config=cfg,
    )


def _fields_of_view(cfg: Mapping[str, Any], where: str) -> tuple[float, float]:
    from lensml.sims.base import get_generator
    from lensml.sims.strong_pixelated import make_lens

    gen = get_generator(GENERATOR)
    try:
        lens = make_lens(gen.Config.model_validate(dict(cfg)))
    except Exception as exc:  # an old or foreign config
        raise ValueError(f"{where}: cannot read the generator config: {exc}") from exc
    return float(lens.fov), float(lens.source_fov)


def _infos(data_dir: str | Path | Sequence[str | Path]) -> list[PixelatedStoreInfo]:
    dirs = [data_dir] if isinstance(data_dir, str | Path) else list(data_dir)
    if not dirs:
        raise ValueError("data_dir: no strong-pixelated store given")
    infos = [inspect_pixelated_store(d) for d in dirs]
    geometry = {(i.n_image, i.n_source, round(i.fov, 9), round(i.source_fov, 9)) for i in infos}
    if len(geometry) > 1:
        raise ValueError(
            f"data_dir: stores differ in (n_image, n_source, fov, source_fov): {sorted(geometry)}"
        )
    return infos


def augment_maps(sample: Mapping[str, Any], flip_x: bool, flip_y: bool, k: int) -> dict[str, Any]:
    """Mirror x → −x, then y → −y, then rotate every map of :data:`MAP_KEYS` by k × 90° CCW.

    Lensing commutes with these operations about the optical axis, which is the centre of
    both the image and the source grid, so (y, source, κ, PSF) stay a consistent system.
    Maps are ``(1, H, W)`` tensors; other entries are copied unchanged.
    """
    import torch

    out = dict(sample)
    for key in MAP_KEYS:
        if key not in sample:
            continue
        m = sample[key]
        if flip_x:
            m = torch.flip(m, dims=(-1,))
        if flip_y:
            m = torch.flip(m, dims=(-2,))
        if k % 4:
            m = torch.rot90(m, int(k) % 4, dims=(-1, -2))
        out[key] = m.contiguous()
    return out


class PixelatedDataset(PooledStores):
    """Map-style dataset over ``strong-pixelated`` stores of one geometry.

    Items are dicts of float32 tensors: ``image``, ``source``, ``kappa`` ``(1, H, W)``,
    ``psf`` ``(1, K, K)`` and ``sigma`` (0-d) — the keys
    :meth:`lensml.nets.rim_pixelated.PixelatedRIM.training_loss` and the VAEs read.

    Parameters
    ----------
    data_dir : path or sequence of path
        Stores (e.g. the simulated set and a VAE-enlarged set), concatenated in order.
    indices : sequence of int, optional
        Global items to expose.
    augment : bool
        Random flips and 90° rotations (probability 0.5 each, rotation k ∈ {1, 2, 3}).
    seed : int
        Seed of the per-item augmentation generators.
    fixed_epoch : bool
        Keep epoch 0's draws (validation).
    keys : sequence of str
        Which of :data:`MAP_KEYS` to serve (``sigma`` is always served).
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
            raise ValueError(f"PixelatedDataset: unknown keys {bad}; expected among {MAP_KEYS}")
        self.keys = [k for k in MAP_KEYS if k in keys]
        self._stores = self._open_stores([i.root for i in self.infos], [*self.keys, "sigma"],
                                         cache_mb)  # fmt: skip
        self._init_pool([i.n for i in self.infos], indices, augment, seed, fixed_epoch,
                        "PixelatedDataset")  # fmt: skip

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        index = self.indices[int(i)]
        s, j = self.locate(index)
        raw = self._stores[s][j]
        sample: dict[str, Any] = {k: raw[k].float() for k in self.keys}
        for k, v in sample.items():
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"data_dir {self.infos[s].root}: item {j} has NaN/inf {k!r}")
        sample = augment_maps(sample, *self.draw(index))
        sample["sigma"] = raw["sigma"].float().reshape(())
        return sample


def read_sidecar(model_dir: str | Path) -> dict[str, Any]:
    """The ``strong_pixelated.json`` of a model directory (ValueError if absent)."""
    import json

    path = Path(model_dir) / SIDECAR
    if not path.is_file():
        raise ValueError(
            f"model {model_dir}: no {SIDECAR}; not a model trained by lensml train strong-pixelated"
        )
    return json.loads(path.read_text())


def _check_common(epochs: int, val_fraction: float, batch_size: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not 0 < val_fraction <= 0.9:
        raise ValueError(f"val_fraction must be in (0, 0.9], got {val_fraction}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 104729))
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:].tolist(), perm[:n_val].tolist()


def _fit(
    model: Any,
    train_ds: PixelatedDataset,
    val_ds: PixelatedDataset,
    config: dict[str, Any],
    out_dir: str | Path,
    *,
    resume: bool,
    device: str | None,
    progress: bool,
    time_budget_s: float | None,
    sidecar: Mapping[str, Any],
) -> dict[str, Any]:
    from lensml.data.store import write_json_atomic
    from lensml.train import fit

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
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - t0
    if result.get("model_dir") is not None:
        write_json_atomic(Path(result["model_dir"]) / SIDECAR, dict(sidecar))
    steps = int(result.get("global_step") or 0)
    result.update(
        n_train=len(train_ds),
        n_val=len(val_ds),
        train_seconds=seconds,
        examples_per_s=steps * config["batch_size"] / seconds if seconds > 0 else None,
    )
    return result


# ----------------------------------------------------------------------------- VAEs
#: The VAE presets per map kind (paper size, CPU size).
VAE_NETWORKS = {
    "source": ("vae-source", "vae-source-small"),
    "kappa": ("vae-kappa", "vae-kappa-small"),
}


def train_vae(
    data_dir: str | Path | Sequence[str | Path],
    kind: str,
    network: str | None = None,
    out_dir: str | Path = "lensml-vae-run",
    epochs: int = 20,
    *,
    lr: float = 1e-4,
    batch_size: int = 32,
    decay_rate: float | None = None,
    decay_steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    max_items: int | None = None,
    val_fraction: float = 0.1,
    augment: bool = True,
    time_budget_s: float | None = None,
    network_config: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the source or log10 κ VAE on the maps of ``strong-pixelated`` store(s).

    Parameters
    ----------
    data_dir : path or sequence of path
        Stores whose ``source`` (``kind="source"``) or ``kappa`` maps are the training set.
    kind : {"source", "kappa"}
        Which VAE.
    network : str, optional
        A registered VAE preset; default ``vae-source-small`` / ``vae-kappa-small`` (CPU), the
        paper's are ``vae-source`` / ``vae-kappa``.
    out_dir : path
        Run directory of :func:`lensml.train.fit`; the model is ``out_dir/model``.
    epochs : int
        Maximum epochs, >= 1.
    lr : float
        Adam initial learning rate (paper 1e-4).
    batch_size : int
        Maps per step (paper 20 source, 32 κ).
    decay_rate, decay_steps : float, int, optional
        Exponential decay ``lr · rate^(step / steps)``; default Table 5 (0.5 per 30 000 steps)
        for the source, Table 6 (0.7 per 20 000) for κ.
    seed : int
        Seeds the split, the weights, the shuffling and the augmentation.
    device, resume, progress
        Passed to :func:`lensml.train.fit`.
    max_items : int, optional
        Use only the first ``max_items`` pooled items.
    val_fraction : float
        Held-out fraction (seeded), in (0, 0.9].
    augment : bool
        Flips and 90° rotations (§3.1 and §3.2.2 augment both map sets the same way).
    time_budget_s : float, optional
        Stop after this many seconds (benchmarks).
    network_config, train_overrides : mapping, optional
        Network options merged over ``size`` (the store's map side) and
        :class:`lensml.train.TrainConfig` fields merged last.

    Returns
    -------
    dict
        :func:`lensml.train.fit`'s result plus ``network``, ``kind``, ``n_train``, ``n_val``,
        ``train_seconds``, ``examples_per_s``.
    """
    from lensml.train import build_network

    if kind not in VAE_NETWORKS:
        raise ValueError(f"kind must be one of {sorted(VAE_NETWORKS)}; got {kind!r}")
    _check_common(epochs, val_fraction, batch_size)
    network = network or VAE_NETWORKS[kind][1]
    infos = _infos(data_dir)
    total = sum(i.n for i in infos)
    n = total if max_items is None else min(total, int(max_items))
    if n < 2:
        raise ValueError(f"data_dir: need at least 2 items to train, got {n}")
    size = infos[0].n_source if kind == "source" else infos[0].n_image
    net_cfg: dict[str, Any] = {"size": size}
    net_cfg.update(dict(network_config or {}))
    model = build_network(network, net_cfg, seed=int(seed))
    if getattr(model, "data_key", None) != kind:
        raise ValueError(f"network {network!r} is not a {kind} VAE (data_key "
                         f"{getattr(model, 'data_key', None)!r})")  # fmt: skip
    train_idx, val_idx = _split(n, val_fraction, seed)
    roots = [i.root for i in infos]
    train_ds = PixelatedDataset(roots, train_idx, augment=augment, seed=seed, keys=(kind,))
    val_ds = PixelatedDataset(roots, val_idx, augment=False, seed=seed + 1, fixed_epoch=True,
                              keys=(kind,))  # fmt: skip
    rate, steps = (0.5, 30_000) if kind == "source" else (0.7, 20_000)
    rate = rate if decay_rate is None else float(decay_rate)
    steps = steps if decay_steps is None else int(decay_steps)
    config: dict[str, Any] = {
        "max_epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": 0.0,
        "normalise_labels": False,
        "input_key": kind,
        "optimizer": {"name": "Adam", "lr": lr, "weight_decay": 0.0},
        "schedule": {"name": "exponential", "interval": "step", "gamma": rate ** (1.0 / steps)},
        "early_stopping": {"enabled": False},
        "export": "last",
    }
    config.update(dict(train_overrides or {}))
    sidecar = {
        "pipeline": GENERATOR,
        "role": f"vae-{kind}",
        "network": network,
        "size": size,
        "fov": infos[0].fov if kind == "kappa" else infos[0].source_fov,
        "train_stores": [str(r) for r in roots],
    }
    result = _fit(model, train_ds, val_ds, config, out_dir, resume=resume, device=device,
                  progress=progress, time_budget_s=time_budget_s, sidecar=sidecar)  # fmt: skip
    result.update(network=network, kind=kind)
    return result


# ----------------------------------------------------------------------------- RIM
def train_rim(
    data_dir: str | Path | Sequence[str | Path],
    network: str = "rim-pixelated-small",
    out_dir: str | Path = "lensml-rim-run",
    epochs: int = 20,
    *,
    lr: float = 1e-4,
    batch_size: int = 8,
    decay_rate: float = 0.95,
    decay_steps: int = 100_000,
    seed: int = 0,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    max_items: int | None = None,
    val_fraction: float = 0.05,
    augment: bool = True,
    gradient_clip: float | None = None,
    time_budget_s: float | None = None,
    network_config: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the pixelated RIM (eq. 7 loss) on ``strong-pixelated`` store(s).

    Defaults follow Table 7's first stage: Adamax, lr 1e-4, exponential decay 0.95 every
    100 000 steps (continuous, ``lr · 0.95^(step / 100000)``). The paper trains with batch
    size 1 for ~1.5 M steps on an A100; on a CPU a batch of 8 amortises the per-step overhead
    (``batch_size``). The physics (grids, fields of view) comes from the stores.

    Parameters
    ----------
    data_dir : path or sequence of path
        Training stores of one geometry (items are pooled).
    network : str
        ``rim-pixelated`` (paper size, GPU) or ``rim-pixelated-small`` (CPU).
    out_dir, epochs, lr, batch_size, decay_rate, decay_steps, seed
        As in :func:`train_vae`.
    device, resume, progress, max_items, val_fraction, augment, time_budget_s
        As in :func:`train_vae`.
    gradient_clip : float, optional
        Global gradient-norm clipping (the paper does not say; off by default).
    network_config, train_overrides : mapping, optional
        Network options merged over the data-derived physics (``n_image``, ``fov``,
        ``n_source``, ``source_fov``) and :class:`lensml.train.TrainConfig` fields merged last.

    Returns
    -------
    dict
        :func:`lensml.train.fit`'s result plus ``network``, ``n_train``, ``n_val``,
        ``train_seconds`` and ``examples_per_s``.
    """
    from lensml.train import build_network

    _check_common(epochs, val_fraction, batch_size)
    infos = _infos(data_dir)
    total = sum(i.n for i in infos)
    n = total if max_items is None else min(total, int(max_items))
    if n < 2:
        raise ValueError(f"data_dir: need at least 2 items to train, got {n}")
    info = infos[0]
    import lensml.nets  # noqa: F401  (registers the networks)
    from lensml.registry import NETWORKS

    if network not in NETWORKS or not callable(getattr(NETWORKS.get(network), "unroll", None)):
        raise ValueError(f"network {network!r} is not a pixelated RIM (rim-pixelated, "
                         "rim-pixelated-small)")  # fmt: skip
    net_cfg: dict[str, Any] = {
        "n_image": info.n_image,
        "fov": info.fov,
        "n_source": info.n_source,
        "source_fov": info.source_fov,
    }
    net_cfg.update(dict(network_config or {}))
    model = build_network(network, net_cfg, seed=int(seed))
    if not callable(getattr(model, "per_example_loss", None)):
        raise ValueError(f"network {network!r} is not a pixelated RIM")
    train_idx, val_idx = _split(n, val_fraction, seed)
    roots = [i.root for i in infos]
    train_ds = PixelatedDataset(roots, train_idx, augment=augment, seed=seed)
    val_ds = PixelatedDataset(roots, val_idx, augment=False, seed=seed + 1, fixed_epoch=True)
    config: dict[str, Any] = {
        "max_epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": 0.0,
        "normalise_labels": False,
        "optimizer": {"name": "Adamax", "lr": lr, "weight_decay": 0.0},
        "schedule": {
            "name": "exponential",
            "interval": "step",
            "gamma": float(decay_rate) ** (1.0 / int(decay_steps)),
        },
        "early_stopping": {"enabled": False},
        "gradient_clip": gradient_clip,
        "export": "best",
    }
    config.update(dict(train_overrides or {}))
    sidecar = {
        "pipeline": GENERATOR,
        "role": "rim",
        "network": network,
        "n_image": info.n_image,
        "fov": info.fov,
        "n_source": info.n_source,
        "source_fov": info.source_fov,
        "psf_size": info.psf_size,
        "train_stores": [str(r) for r in roots],
    }
    result = _fit(model, train_ds, val_ds, config, out_dir, resume=resume, device=device,
                  progress=progress, time_budget_s=time_budget_s, sidecar=sidecar)  # fmt: skip
    result.update(network=network)
    return result


# ----------------------------------------------------------------------------- loading
def _load(model: str | Path, role: str, device: str) -> tuple[Any, dict[str, Any]]:
    from lensml.models import resolve_model
    from lensml.train import load_model

    model = resolve_model(model, GENERATOR)  # a directory, or a shipped model's name
    side = read_sidecar(model)
    if side.get("role") != role:
        raise ValueError(f"model {model}: a {side.get('role')!r} model, expected {role!r}")
    net, _info = load_model(model, device=device)
    net.eval()
    return net, side


def load_rim(model: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a RIM trained by :func:`train_rim` (a directory, or the name of a shipped model
    such as ``rim-pixelated-small``): (network in eval mode, sidecar)."""
    return _load(model, "rim", device)


def load_vae(model: str | Path, kind: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a VAE trained by :func:`train_vae` (``kind`` "source" or "kappa")."""
    if kind not in VAE_NETWORKS:
        raise ValueError(f"kind must be one of {sorted(VAE_NETWORKS)}; got {kind!r}")
    return _load(model, f"vae-{kind}", device)


# ----------------------------------------------------------------------------- quickstart
#: The quickstart demo: held-out systems reconstructed, of which ``n_finetune`` fine-tuned.
QUICKSTART = {
    "small": {"n_test": 6, "n_finetune": 1, "ft_steps": 40, "ft_samples": 16, "ft_lr": 1e-4,
              "n_train": 96, "train_seconds": 25},
    "full": {"n_test": 32, "n_finetune": 4, "ft_steps": 150, "ft_samples": 48, "ft_lr": 1e-4,
             "n_train": 600, "train_seconds": 240},
}  # fmt: skip
#: Shipped model names of the quickstart (``lensml/models/strong-pixelated/<name>``).
SHIPPED = {"rim": "rim-pixelated-small", "source": "vae-source-small", "kappa": "vae-kappa-small"}


def shipped_models() -> dict[str, Path] | None:
    """The shipped RIM and VAE directories of the model zoo, or None if any is missing."""
    import lensml

    root = Path(lensml.__file__).resolve().parent / "models" / "strong-pixelated"
    paths = {k: root / name for k, name in SHIPPED.items()}
    return paths if all((p / "model.json").is_file() for p in paths.values()) else None


def quickstart_section(
    out_dir: str | Path, seed: int = 0, device: str = "cpu", full: bool = False
) -> tuple[list[Path], dict[str, Any]]:
    """Reconstruct a few simulated 64² systems with the pixelated RIM and fine-tune one of them.

    Uses the shipped ``rim-pixelated-small`` and VAEs of the model zoo; without them (a source
    checkout without weights) a RIM and two VAEs are trained for a few seconds each — a smoke
    demo, not a model. Returns the written paths and the report summary.
    """
    import shutil

    from lensml.data.runner import run_simulate
    from lensml.pipelines.strong_pixelated_eval import evaluate_pixelated

    cfg = QUICKSTART["full" if full else "small"]
    out_dir = Path(out_dir)
    work = out_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    preset = {"preset": "small"}
    run_simulate(GENERATOR, cfg["n_test"], work / "test", seed + 100, config=preset,
                 shard_size=64, progress=False)  # fmt: skip
    models = shipped_models()
    trained = models is None
    if models is None:
        run_simulate(GENERATOR, cfg["n_train"], work / "train", seed, config=preset,
                     shard_size=256, progress=False)  # fmt: skip
        dev = None if device == "cpu" else device
        budget = cfg["train_seconds"] / 3
        models = {}
        for kind in ("source", "kappa"):
            res = train_vae(work / "train", kind, out_dir=work / f"vae-{kind}", epochs=50,
                            batch_size=16, seed=seed, device=dev, progress=False,
                            time_budget_s=budget)  # fmt: skip
            models[kind] = Path(res["model_dir"])
        res = train_rim(work / "train", out_dir=work / "rim", epochs=50, lr=1e-3, seed=seed,
                        device=dev, progress=False, time_budget_s=budget)  # fmt: skip
        models["rim"] = Path(res["model_dir"])
    ev = evaluate_pixelated(
        work / "test", models["rim"], out_dir, vae_source=models["source"],
        vae_kappa=models["kappa"], n_finetune=cfg["n_finetune"],
        finetune_config={"max_steps": cfg["ft_steps"], "n_samples": cfg["ft_samples"],
                         "learning_rate": cfg["ft_lr"]},
        panels=min(2, cfg["n_test"]), seed=seed, device=device, print_table=False,
    )  # fmt: skip
    shutil.rmtree(work)
    ft = ev["finetune"] or {}
    text = (
        f"{cfg['n_test']} held-out systems of the strong-pixelated generator (64² image over "
        "7.69″, 64² source over 3″, Table 1 PSF and noise) reconstructed by "
        + ("a RIM and VAEs trained for a few seconds here (no shipped weights found) — a smoke "
           "demo. " if trained else "the shipped rim-pixelated-small (CPU-trained, see its "
           "model card). ")
        + (f"{ft['n']} of them fine-tuned for up to {cfg['ft_steps']} steps with the EWC prior "
           f"(Fisher from {cfg['ft_samples']} VAE samples): median χ²_ν "
           f"{ft['chi2_nu_baseline']['median']:.3g} → {ft['chi2_nu_finetuned']['median']:.3g}. "
           if ft else "")
        + "The measurement is benchmarks/rim_pixelated.py."
    )  # fmt: skip
    paths = [Path(p) for p in ev["figures"]] + [Path(ev["json"])]
    summary = {
        "config": cfg,
        "shipped_weights": not trained,
        "text": text,
        "tables": ev["tables"],
        "figures": [str(p) for p in ev["figures"] if Path(p).name in
                    ("reconstructions.png", "coherence.png", "chi2_vs_snr.png")],
    }  # fmt: skip
    return paths, summary
