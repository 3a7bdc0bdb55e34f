"""Shear pipeline: train the CNN shear estimator, post-process it and load it back.

Paper: the CNN shear estimator paper (``shared/papers/cnn-shear-estimator-clash.txt``), §4.2
(training, augmentation, last-layer refit), §4.3 (eq. 14), §5 (eqs. 16–17), Appendix B.

Training (:func:`train_shear`)
------------------------------
Stamps of a ``shear`` store (:mod:`lensml.sims.shear`) are held in memory and augmented per
batch with the paper's §4.2 transforms (:class:`lensml.data.shear_augment.ShearAugment`: scale
±15 %, centroid shift ±7 px, mirror, rotation; labels transformed as a spin-2 pair), each item
drawn from :func:`lensml.data.datasets.item_generator` ``(seed, epoch, index)`` so a run does not
depend on batch size or workers. Every stamp is normalised (mean 0, std 1) before the network.
The engine (:func:`lensml.train.fit`) minimises the MSE on g (eq. 13) with labels scaled by one
rotation-invariant factor (mean 0 and the same σ for g1 and g2, so the spin-2 rules of eq. 14
hold in network units too). The paper's optimiser is RMSProp (Tieleman & Hinton 2012); its
learning rate, batch size and schedule are not given. ``shear-cnn`` defaults to RMSProp with
ρ = 0.9 (Tieleman & Hinton's value) and lr = 3e-3 (best of 3e-4, 1e-3, 3e-3, 6e-3 and AdamW
1e-3, 3e-3 in 6-epoch runs on 3.5k CLASH-like stamps: calibrated RMS 0.34, 0.32, 0.30, 0.27 and
0.37, 0.33), ``shear-resnet`` to AdamW (lr = 2e-3, weight decay 1e-4); both use a cosine decay
over the run and batches of 128 — lensml's choices, all configurable.

Post-processing (:func:`postprocess_shear`), in the paper's order, each switchable
--------------------------------------------------------------------------------------
1. **refit** — the last affine layer refitted by least squares from the penultimate features to
   the true shear on a *matched* set (no augmentation (i)–(iii); the paper's "only augmentation
   (iv)": here the eight exact flips/rotations of every stamp with their transformed labels)
   and scaled by the regression-attenuation factor [1 − L/Var(g)]⁻¹ (Appendix B;
   :func:`lensml.pipelines.shear_calibration.refit_last_layer`). Saved as ``shear_refit.json``.
2. **symmetrise** — the 8-fold average of eq. 14, applied at inference.
3. **calibrate** — g̃_i = (1 + m_i) g_i + c_i fitted per component on a calibration set (eq. 17)
   on the output of steps 1–2; ĝ = (g̃ − c)/(1 + m) at inference (eq. 16). Saved as
   ``shear_calibration.json``.

``shear_postprocess.json`` records which steps are on, the set sizes and the instrument the model
was trained for (pixel scale, stamp size, PSF preset). The matched and calibration sets are a
held-out part of the training store (``post_fraction``, half each when both steps are on) or a
separate store (``calib_data``), never the stamps the network was trained on.

:func:`load_shear_estimator` returns a :class:`ShearEstimator` whose ``predict`` applies the saved
steps. The per-component calibration makes the final estimate equivariant under the eight
transforms only up to the tiny difference between m1 and m2 and the additive c; the symmetrised
estimate before calibration is exactly equivariant.

Modules: :mod:`~lensml.pipelines.shear_data` (stores, the batched training set, the eight
views), :mod:`~lensml.pipelines.shear_estimator` (post-processing, :class:`ShearEstimator`),
:mod:`~lensml.pipelines.shear_eval` (``evaluate_shear``), :mod:`~lensml.pipelines.shear_predict`
(``predict_shear``) and :mod:`~lensml.pipelines.shear_quickstart` (``quickstart_section``); their
entry points are importable from here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.shear_data import (
    LABELS,
    ShearStoreInfo,
    ShearTrainingSet,
    dihedral_views,
    inspect_shear_store,
    read_shear_arrays,
)
from lensml.pipelines.shear_estimator import (
    POSTPROCESS_FILE,
    REFIT_FILE,
    ShearEstimator,
    load_shear_estimator,
    postprocess_shear,
)
from lensml.train.callbacks import epoch_callback

#: The pipeline's other entry points, in their own modules (loaded on first use).
_ELSEWHERE = {
    "evaluate_shear": "lensml.pipelines.shear_eval",
    "predict_shear": "lensml.pipelines.shear_predict",
    "quickstart_section": "lensml.pipelines.shear_quickstart",
}

__all__ = [
    "LABELS",
    "POSTPROCESS_FILE",
    "REFIT_FILE",
    "ShearEstimator",
    "ShearStoreInfo",
    "ShearTrainingSet",
    "dihedral_views",
    "inspect_shear_store",
    "load_shear_estimator",
    "postprocess_shear",
    "read_shear_arrays",
    "train_shear",
    *_ELSEWHERE,
]

log = logging.getLogger("lensml.pipelines.shear")


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'lensml.pipelines.shear' has no attribute {name!r}")


# ----------------------------------------------------------------------------- training
def _label_normalisation(labels: Any) -> Any:
    """Mean 0 and one σ (the RMS of both components) for g1 and g2: rotation invariant."""
    from lensml.train.normalisation import Normalisation

    rms = float(np.sqrt(np.mean(np.asarray(labels, dtype=np.float64) ** 2)))
    if not rms > 0:
        raise ValueError("labels: the training shears are all zero")
    return Normalisation(list(LABELS), [0.0, 0.0], [rms, rms], extra={"kind": "spin2 isotropic"})


def _optimiser_defaults(network: str) -> dict[str, Any]:
    if network == "shear-cnn":  # the paper's RMSProp; rho 0.9, lr from a short scan
        return {"name": "RMSprop", "lr": 3e-3, "alpha": 0.9, "weight_decay": 0.0}
    return {"name": "AdamW", "lr": 2e-3, "weight_decay": 1e-4, "betas": [0.9, 0.999]}


def _torch_device(device: str | None) -> str:
    import torch

    dev = (device or "auto").lower()
    if dev in ("auto", "gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() and dev != "cpu" else "cpu"
    return dev


def _splits(n: int, seed: int, post: int, val: int) -> tuple[list[int], list[int], list[int]]:
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 15485863))
    perm = perm.tolist()
    return perm[post + val :], perm[post : post + val], perm[:post]


def train_shear(
    data_dir: str | Path,
    network: str = "shear-cnn",
    out_dir: str | Path = "lensml-shear-run",
    epochs: int = 30,
    *,
    augment: bool = True,
    calib_data: str | Path | None = None,
    refit: bool = True,
    symmetrise: bool = True,
    calibrate: bool = True,
    post_fraction: float = 0.2,
    val_fraction: float = 0.1,
    batch_size: int = 128,
    optimizer: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
    patience: int = 10,
    seed: int = 0,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    max_items: int | None = None,
    network_config: Mapping[str, Any] | None = None,
    augment_config: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    refit_views: int = 8,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train a shear network on a shear store, then refit, symmetrise and calibrate it.

    Parameters
    ----------
    data_dir : path
        Training store (:func:`inspect_shear_store`), e.g. ``lensml simulate shear``.
    network : str
        ``shear-cnn`` (the paper's, 107,866 parameters) or ``shear-resnet``; built with one
        input channel and 2 outputs, weights seeded by ``seed``.
    out_dir : path
        Run directory of :func:`lensml.train.fit`; the model is ``out_dir/model``.
    epochs : int
        Maximum epochs (>= 1; early stopping on the validation loss may end sooner).
    augment : bool
        The §4.2 augmentation of the training stamps (validation stamps are never augmented).
    calib_data : path, optional
        A separate matched store for the refit and calibration sets (half each when both are
        on); default: ``post_fraction`` of ``data_dir`` held out from training.
    refit, symmetrise, calibrate : bool
        The three post-training steps (module docstring), each switchable.
    post_fraction : float
        Held-out fraction of ``data_dir`` for refit + calibration, in (0, 0.8] (ignored with
        ``calib_data`` or when both steps are off).
    val_fraction : float
        Fraction of ``data_dir`` for the validation loss (early stopping), in (0, 0.5].
    batch_size : int
        Stamps per optimiser step.
    optimizer, schedule : mapping, optional
        :class:`lensml.train.config.OptimizerConfig` / ``ScheduleConfig`` fields overriding the
        per-network defaults (module docstring).
    patience : int
        Early-stopping patience (epochs without a better validation loss).
    seed : int
        Seeds the splits, the weights, the shuffling and the augmentation.
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:K``, ``auto``.
    resume, progress
        Passed to :func:`lensml.train.fit`.
    max_items : int, optional
        Use the first ``max_items`` items of ``data_dir`` only.
    network_config : mapping, optional
        Extra network options (``in_channels=1``, ``out_features=2`` and the store's stamp size
        are set).
    augment_config : mapping, optional
        :class:`~lensml.data.shear_augment.ShearAugment` fields (``scale_range``,
        ``max_shift``, ``mirror_p``, ``rotation``); ``normalise`` is always done.
    train_overrides : mapping, optional
        Extra :class:`lensml.train.TrainConfig` fields (merged last).
    refit_views : {1, 8}
        See :func:`postprocess_shear`.
    num_workers : int
        DataLoader workers.

    Returns
    -------
    dict
        :func:`lensml.train.fit`'s result plus ``network``, ``n_train``, ``n_val``, ``n_refit``,
        ``n_calib``, ``train_seconds``, ``train_stamps_per_s``, ``n_parameters``,
        ``postprocess`` (the content of ``shear_postprocess.json``) and ``warnings`` (e.g. a
        calibration switched off because the network's response 1 + m was not positive: the
        model is kept, the reason logged and recorded in ``shear_postprocess.json``).

    Raises
    ------
    ValueError
        Bad store or arguments (naming them), stamps whose size the network does not take, a
        matched set too small for the refit (fewer stamps than features + 2).
    """
    from lensml.data.shear_augment import ShearAugment
    from lensml.train import build_network, fit

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction}")
    if not 0 < post_fraction <= 0.8:
        raise ValueError(f"post_fraction must be in (0, 0.8], got {post_fraction}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    info = inspect_shear_store(data_dir)
    cal_info = inspect_shear_store(calib_data) if calib_data is not None else None
    if cal_info is not None and cal_info.size != info.size:
        raise ValueError(
            f"calib_data {cal_info.root}: stamps are {cal_info.size} pixels, the training store's "
            f"{info.size}"
        )
    net_cfg = {**dict(network_config or {}), "in_channels": 1, "out_features": 2,
               "input_size": info.size}  # fmt: skip
    model = build_network(network, dict(net_cfg), seed=int(seed))
    if not callable(getattr(model, "features", None)) or not hasattr(model, "final"):
        raise ValueError(
            f"network {network!r}: a shear network needs features(x) and a final nn.Linear "
            "(shear-cnn, shear-resnet)"
        )
    keys = ["image", "labels"] + (["clean"] if augment and "clean" in info.keys else [])
    arrays = read_shear_arrays(info, keys, max_items)
    n = arrays["image"].shape[0]
    need_post = (refit or calibrate) and cal_info is None
    n_post = round(n * post_fraction) if need_post else 0
    n_val = max(1, round(n * val_fraction))
    if n - n_post - n_val < 1 or (need_post and n_post < 8):
        raise ValueError(
            f"data_dir {info.root}: {n} items are too few for training, validation and the "
            f"post-training sets (post_fraction={post_fraction}, val_fraction={val_fraction})"
        )
    train_idx, val_idx, post_idx = _splits(n, seed, n_post, n_val)
    n_post_set = n_post if cal_info is None else cal_info.n
    n_refit = n_post_set // 2 if calibrate else n_post_set
    n_feat = int(getattr(model, "n_features", model.final.in_features))
    if refit and n_refit < n_feat + 2:
        raise ValueError(
            f"refit: the matched set would hold {n_refit} stamps but the refit of {network!r}'s "
            f"last layer ({n_feat} features + bias per component) needs at least {n_feat + 2}; "
            "raise post_fraction, pass a larger calib_data store or switch the refit off"
        )
    aug = None
    if augment:
        a_cfg = {**dict(augment_config or {}), "normalise": False}
        try:
            aug = ShearAugment(**a_cfg)
        except TypeError as err:
            raise ValueError(f"augment_config: {err}") from None
    train_ds = ShearTrainingSet(arrays, train_idx, aug, seed=seed)
    val_ds = ShearTrainingSet(arrays, val_idx, None, seed=seed, fixed_epoch=True)
    norm = _label_normalisation(arrays["labels"][train_idx])
    opt = {**_optimiser_defaults(network), **dict(optimizer or {})}
    sched = {"name": "cosine", "interval": "step", **dict(schedule or {})}
    config: dict[str, Any] = {
        "max_epochs": epochs,
        "batch_size": int(batch_size),
        "seed": int(seed),
        "val_fraction": 0.0,
        "num_workers": int(num_workers),
        "optimizer": opt,
        "schedule": sched,
        "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": int(patience)},
        "loss": {"name": "mse"},
        "normalise_labels": True,
    }
    config.update(dict(train_overrides or {}))
    t0 = time.perf_counter()
    result = fit(
        model, train_ds, val_ds, config=config, out_dir=out_dir, resume=resume,
        device=device, progress=progress, normalisation=norm,
        label_names=list(LABELS), callbacks=[epoch_callback(train_ds)],
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    epochs_done = int(result.get("epochs") or 0)
    # --- post-processing --------------------------------------------------------------
    refit_set = calib_set = None
    if refit or calibrate:
        if cal_info is None:
            post_img, post_g = arrays["image"][post_idx], arrays["labels"][post_idx]
        else:
            extra = read_shear_arrays(cal_info, ["image", "labels"])
            post_img, post_g = extra["image"], extra["labels"]
        half = post_img.shape[0] // 2 if (refit and calibrate) else 0
        if refit:
            stop = half if calibrate else post_img.shape[0]
            refit_set = (post_img[:stop], post_g[:stop])
        if calibrate:
            calib_set = (post_img[half:], post_g[half:])
    post = None
    warnings: list[str] = []
    if result.get("model_dir") is not None:
        kwargs = {
            "refit_set": refit_set, "symmetrise": symmetrise, "refit_views": refit_views,
            "instrument": info.instrument(), "device": _torch_device(device),
            "meta": {"train_store": str(info.root), "seed": int(seed), "network": network,
                     "calib_store": str(cal_info.root) if cal_info else None},
        }  # fmt: skip
        try:
            post = postprocess_shear(result["model_dir"], calib_set=calib_set, **kwargs)
        except ValueError as err:
            if calib_set is None:
                raise
            # a network that has not learned the shear cannot be calibrated (1 + m <= 0): keep
            # the trained model and its refit, record why the calibration is off, and warn
            msg = f"calibration switched off: {err}"
            log.warning(msg)
            warnings.append(msg)
            kwargs["meta"]["calibration_error"] = str(err)
            post = postprocess_shear(result["model_dir"], calib_set=None, **kwargs)
    result.update(
        network=network,
        n_train=len(train_ds),
        n_val=len(val_ds),
        n_refit=0 if refit_set is None else int(refit_set[0].shape[0]),
        n_calib=0 if calib_set is None else int(calib_set[0].shape[0]),
        train_seconds=seconds,
        train_stamps_per_s=epochs_done * (len(train_ds) + len(val_ds)) / seconds
        if seconds > 0 else None,
        postprocess=post,
        warnings=warnings,
        n_parameters=int(sum(p.numel() for p in model.parameters())),
    )  # fmt: skip
    return result
