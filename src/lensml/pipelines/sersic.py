"""Sérsic pipeline: GaLNet-1/2 on ``sersic`` mock galaxies — data, training, saved models.

Paper: Li et al. 2022, ApJ 929, 152 (``shared/papers/galnet-sersic-cnn.txt``), §2.2–3.3.
Stores, the input stretch and the Dataset are in :mod:`lensml.pipelines.sersic_data`,
the Table-2 statistics in :mod:`lensml.pipelines.sersic_metrics`; evaluation is in
:mod:`lensml.pipelines.sersic_eval`, prediction on FITS cutouts and the quickstart demo in
:mod:`lensml.pipelines.sersic_predict`; this module re-exports their entry points
(:func:`evaluate_sersic`, :func:`predict_sersic`, :func:`quickstart_section`).

Inputs (:class:`SersicStampDataset`). GaLNet-1 sees the galaxy stamp only, GaLNet-2 the stamp
and its 25×25 PSF packed into one ``(2, S, S)`` tensor (:func:`lensml.nets.galnet.
pack_galaxy_psf`); which one is decided by the network's ``in_channels`` (1 or 2).

Image normalisation. The paper does not say how its stamps were scaled (§2.3 only lists the
inputs), so lensml chooses and records it: ``asinh(image / s)`` with ``s`` the median
background σ per pixel of the training store (ADU; the ``sky_sigma`` aux column), i.e. linear
for noise-level pixels and logarithmic for the bright ones (Lupton et al. 1999's asinh
stretch). A per-stamp rescaling would throw away the total flux, i.e. the magnitude, which
the network must predict; the asinh keeps it while compressing the ~10⁵ dynamic range of
mag 17–22 galaxies on a 2″-seeing sky. The engine's scalar input normalisation (mean and std
of the stretched training stamps) is applied on top; the PSF is used as given (GaLNet-2
standardises it per sample). ``s``, the zero point and exposure time of the training store
(the photometric system of the predicted magnitudes) travel with the model in
``normalisation.json["extra"]["sersic"]``.

Labels: the seven parameters are encoded as the eight labels of
:mod:`lensml.nets.sersic_labels` (``log10 r_eff``, PA as ``cos 2PA, sin 2PA``) and
standardised by the engine.

Training (:func:`train_sersic`) goes through :func:`lensml.train.fit` with Adam (the paper's
optimiser; the paper gives no learning rate: 1e-3 with a cosine decay over the run is lensml's
choice) and the Huber loss with δ = 0.001 on the standardised labels (eq. 6). The default
``loss="huber_nll"`` keeps exactly that Huber loss for the means and adds the per-parameter
uncertainty head the paper lacks (§4.2): a Gaussian NLL on the predicted log-variances with
the means held fixed (:func:`lensml.train.module.compute_loss`). ``loss="huber"`` trains the
paper's plain network (no σ). After training, the σ's are calibrated on the validation split:
one factor per label, the standard deviation of the pulls ``(t − μ) / σ`` there, is folded
into the bias of the output layer's log-variance half (``b += 2 ln f``), so that every
consumer of the saved model gets calibrated σ's; the factors are reported. Before that the
means get the same treatment for location: each output's median residual on the validation
split is subtracted from its bias (:func:`calibrate_outputs`). The exported network runs
BatchNorm on its running statistics instead of the batch statistics it was trained with; with
that (about half of it) GaLNet-2-small came out 0.06 mag too faint in the median, on its
training stamps as on held-out ones.

Optional augmentation (``augment=True``; the paper has none): each training item is rotated
by a multiple of 90° and/or mirrored, image, PSF and labels together (exact on odd, centred
stamps: x, y rotate/mirror, PA → PA + 90° or 180° − PA), drawn from
:func:`lensml.data.datasets.item_generator` ``(seed, epoch, index)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.sersic_data import (
    ENCODED_LABELS,
    SersicStampDataset,
    SersicStoreInfo,
    asinh_stretch,
    augment_item,
    inspect_sersic_store,
    read_sersic_arrays,
    store_photometry,
)
from lensml.pipelines.sersic_metrics import PARAMS
from lensml.train.callbacks import epoch_callback

__all__ = [
    "ENCODED_LABELS",
    "PARAMS",
    "SersicModel",
    "SersicStampDataset",
    "SersicStoreInfo",
    "asinh_stretch",
    "augment_item",
    "calibrate_outputs",
    "evaluate_sersic",
    "inspect_sersic_store",
    "load_sersic_model",
    "predict_sersic",
    "quickstart_section",
    "read_sersic_arrays",
    "train_sersic",
    "validation_split",
]

#: Losses :func:`train_sersic` accepts, and whether they train the σ head.
LOSSES = {"huber": False, "mse": False, "huber_nll": True, "gaussian_nll": True}
#: Key of the pipeline's metadata in ``normalisation.json["extra"]``.
EXTRA_KEY = "sersic"


# ----------------------------------------------------------------------------- saved models
@dataclass
class SersicModel:
    """A loaded GaLNet model with the pipeline's input handling.

    Attributes
    ----------
    net, info
        From :func:`lensml.train.load_model`.
    path : Path
    name : str
        Network registry name (``galnet-2-small``...).
    with_psf : bool
        Whether the network takes the packed PSF (``in_channels == 2``).
    stamp_size, psf_size : int
        Input stamp side S and PSF side P (0 without PSF).
    meta : dict
        ``normalisation.json["extra"]["sersic"]``: ``asinh_scale``, ``pixel_scale``,
        ``zeropoint``, ``exptime``, ``survey``, ``sigma_calibration``...
    has_sigma : bool
        Whether the model predicts per-parameter σ's.
    """

    net: Any
    info: Any
    path: Path
    name: str
    with_psf: bool
    stamp_size: int
    psf_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    has_sigma: bool = False
    _folded: Any = field(default=None, init=False, repr=False, compare=False)

    def inference_net(self, device: str = "cpu") -> Any:
        """The network for inference: an eval-mode copy with its Conv2d → BatchNorm2d pairs
        folded (:func:`lensml.nets.inference.fold_batchnorm`; same outputs, ~1.7× faster on
        CPU), made once per device and network and cached; remade when a parameter or buffer
        of ``net`` is changed in place (:func:`lensml.nets.inference.inference_copy_key`)."""
        from lensml.nets.inference import fold_batchnorm, inference_copy_key

        key = inference_copy_key(self.net, device)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, fold_batchnorm(self.net.to(device), channels_last=True))
        return self._folded[1]

    def inputs(self, image: Any, psf: Any | None) -> Any:
        """Network input from raw stamps ``(N, 1, S, S)`` (ADU) and PSFs ``(N or 1, 1, P, P)``."""
        import torch

        from lensml.nets.galnet import pack_galaxy_psf

        x = asinh_stretch(torch.as_tensor(image, dtype=torch.float32), self.meta["asinh_scale"])
        if self.with_psf:
            if psf is None:
                raise ValueError(f"model {self.path} ({self.name}) needs PSF images")
            x = pack_galaxy_psf(x, torch.as_tensor(psf, dtype=torch.float32))
        return x

    def predict_encoded(
        self, image: Any, psf: Any | None, batch_size: int = 256, device: str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Means ``(N, 8)`` and σ's ``(N, 8)`` (or None) of the encoded labels, label units."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        def batches() -> Any:
            for lo in range(0, int(image.shape[0]), batch_size):
                sl = slice(lo, lo + batch_size)
                p = None if psf is None else (psf[sl] if psf.shape[0] > 1 else psf)
                yield self.inputs(image[sl], p)

        return self.run(batches(), device)

    def run(self, batches: Any, device: str = "cpu") -> tuple[np.ndarray, np.ndarray | None]:
        """Means and σ's (or None) of the encoded labels for network-input batches."""
        import torch

        norm = self.info.normalisation
        net = self.inference_net(device)
        mus, sigmas = [], []
        with torch.inference_mode():
            for x in batches:
                out = net(norm.normalise_input(x.to(device))).float()
                if self.has_sigma:
                    mu, logvar = out.chunk(2, dim=1)
                    sigma = torch.exp(0.5 * logvar.clamp(-20.0, 20.0))
                    sigmas.append(norm.denormalise_std(sigma).cpu())
                else:
                    mu = out
                mus.append(norm.denormalise(mu).cpu())
        mu = torch.cat(mus).double().numpy() if mus else np.zeros((0, len(ENCODED_LABELS)))
        sig = torch.cat(sigmas).double().numpy() if sigmas else None
        return mu, sig

    def predict(
        self, image: Any, psf: Any | None, batch_size: int = 256, device: str = "cpu"
    ) -> dict[str, np.ndarray]:
        """Sérsic parameters (and ``sigma_<name>``) of raw stamps, see
        :func:`lensml.nets.sersic_labels.decode_sersic_outputs`."""
        from lensml.nets.sersic_labels import decode_sersic_outputs

        mu, sig = self.predict_encoded(image, psf, batch_size, device)
        pred = mu if sig is None else np.concatenate([mu, sig], axis=1)
        return decode_sersic_outputs(pred)


def load_sersic_model(path: str | Path, device: str = "cpu") -> SersicModel:
    """Load a model directory written by :func:`train_sersic`.

    Raises
    ------
    ValueError
        (:class:`lensml.train.ModelLoadError`) for a path that is not a lensml model, or a
        model that is not a GaLNet trained by this pipeline (labels, metadata).
    """
    from lensml.models import resolve_model
    from lensml.train import load_model

    path = resolve_model(path, "sersic")
    net, info = load_model(path, device)
    where = f"model {path}"
    if tuple(info.normalisation.label_names) != ENCODED_LABELS:
        raise ValueError(
            f"{where}: predicts {info.normalisation.label_names}, not the Sérsic labels "
            f"{list(ENCODED_LABELS)} (train it with `lensml train sersic`)"
        )
    meta = dict((info.normalisation.extra or {}).get(EXTRA_KEY) or {})
    if not meta.get("asinh_scale"):
        raise ValueError(f"{where}: no '{EXTRA_KEY}' input metadata in its normalisation.json")
    in_ch = int(getattr(net, "in_channels", 0))
    if in_ch not in (1, 2):
        raise ValueError(f"{where}: network {info.network!r} has {in_ch} input channels, not 1/2")
    return SersicModel(
        net=net,
        info=info,
        path=Path(path),
        name=str(info.network),
        with_psf=in_ch == 2,
        stamp_size=int(getattr(net, "input_size", 0)),
        psf_size=int(getattr(net, "psf_size", 0) or 0),
        meta=meta,
        has_sigma=info.loss in ("gaussian_nll", "huber_nll"),
    )


# ----------------------------------------------------------------------------- training
def _network_config(network: str, info: SersicStoreInfo, uncertainty: bool, user: Any) -> dict:
    from lensml.nets.galnet import GaLNet
    from lensml.registry import NETWORKS

    try:
        cls = NETWORKS.get(network)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    if not (isinstance(cls, type) and issubclass(cls, GaLNet)):
        raise ValueError(
            f"network {network!r} is not a GaLNet; the Sérsic pipeline trains galnet-1, "
            "galnet-2, galnet-1-small or galnet-2-small"
        )
    cfg = {**dict(user or {}), "out_features": len(ENCODED_LABELS), "uncertainty": uncertainty,
           "input_size": info.stamp_size}  # fmt: skip
    if cls.with_psf:
        cfg["psf_size"] = info.psf_size
    return cfg


def validation_split(n: int, seed: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Sorted ``(train, validation)`` item indices of :func:`train_sersic`'s seeded split of
    ``n`` items (``max(2, round(n × val_fraction))`` held out)."""
    import torch

    perm = torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed) + 7919))
    n_val = max(2, round(n * val_fraction))
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def calibrate_outputs(
    model_dir: str | Path,
    val: SersicStampDataset,
    batch_size: int = 256,
    location: bool = True,
    sigma: bool = True,
) -> dict[str, Any]:
    """Calibrate a saved GaLNet on held-out stamps, folded into its output layer's bias.

    Parameters
    ----------
    model_dir : path
        Saved model (:func:`train_sersic`); rewritten atomically.
    val : SersicStampDataset
        Stamps not used to fit the weights (the run's validation split).
    batch_size : int
        Stamps per forward pass.
    location : bool
        Subtract from each mean output its median residual ``median(μ − t)`` on ``val`` (label
        units). The exported network can be median-biased on its own training set (+0.06 mag
        on GaLNet-2-small, as much on the training stamps as on held-out ones; about half of
        it from BatchNorm's running statistics replacing the batch statistics it was trained
        with). This removes the global offset, not the shrinkage toward the prior at the
        edges of the parameter ranges.
    sigma : bool
        For models with a σ head, scale each σ by the standard deviation of the pulls
        ``(t − μ) / σ`` on ``val`` (after the location shift): ``b += 2 ln f`` on the
        log-variance half.

    Returns
    -------
    dict
        ``applied``, ``location_shift`` (label units, per encoded label, or None),
        ``median_residual_before`` / ``after``, ``factors`` (this call's, or None) and, with
        a σ head, ``val_pulls_before`` / ``after``. The model's metadata
        (``location_calibration``, ``sigma_calibration``) hold the totals over every call.
    """
    import torch

    from lensml.pipelines.sersic_metrics import pull_stats
    from lensml.train.saved_model import save_model

    model = load_sersic_model(model_dir)

    def batches() -> Any:
        for lo in range(0, len(val), batch_size):
            yield torch.stack([val[i]["image"] for i in range(lo, min(len(val), lo + batch_size))])

    mu, sig = model.run(batches())
    truth = val.encoded.double().numpy()
    n_lab = len(ENCODED_LABELS)
    resid_before = np.median(mu - truth, axis=0)
    shift = resid_before if location else np.zeros(n_lab)
    factors = None
    before = after = None
    if sigma and sig is not None:
        before = {k: pull_stats(mu[:, j] - shift[j], truth[:, j], sig[:, j])
                  for j, k in enumerate(ENCODED_LABELS)}  # fmt: skip
        factors = [float(before[k]["std"]) for k in ENCODED_LABELS]
        if not all(math.isfinite(f) and f > 0 for f in factors):
            factors = None
    if not (np.all(np.isfinite(shift)) and (location or factors is not None)):
        return {"applied": False, "median_residual_before": resid_before.tolist(),
                "val_pulls_before": before}  # fmt: skip
    norm = model.info.normalisation
    final = model.net.final
    key = next(k for k, v in model.net.named_parameters() if v is final.bias)
    state = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    with torch.no_grad():
        dtype = state[key].dtype
        state[key][:n_lab] -= torch.tensor(shift / np.asarray(norm.std), dtype=dtype)
        if factors is not None:
            state[key][n_lab:] += 2.0 * torch.log(torch.tensor(factors, dtype=dtype))
    meta = dict(model.meta)
    # the records are cumulative: calibrating a calibrated model adds to its shifts and
    # multiplies its factors, so the metadata always describe the total change
    if location:
        prev = (meta.get("location_calibration") or {}).get("shift") or {}
        meta["location_calibration"] = {
            "shift": {k: float(prev.get(k, 0.0)) + float(v)
                      for k, v in zip(ENCODED_LABELS, shift, strict=True)},
            "n_val": len(val),
        }  # fmt: skip
    if factors is not None:
        prev = (meta.get("sigma_calibration") or {}).get("factors") or {}
        meta["sigma_calibration"] = {
            "factors": {k: float(prev.get(k, 1.0)) * f
                        for k, f in zip(ENCODED_LABELS, factors, strict=True)},
            "n_val": len(val),
        }  # fmt: skip
    norm.extra = {**norm.extra, EXTRA_KEY: meta}
    save_model(
        model_dir, state, network=model.info.network, network_config=model.info.network_config,
        normalisation=norm, train_config=model.info.train_config,
        input_shape=model.info.input_shape, loss=model.info.loss, extra=model.info.extra,
    )  # fmt: skip
    mu2, sig2 = load_sersic_model(model_dir).run(batches())
    if factors is not None:
        after = {k: pull_stats(mu2[:, j], truth[:, j], sig2[:, j])
                 for j, k in enumerate(ENCODED_LABELS)}  # fmt: skip
    return {
        "applied": True,
        "location_shift": shift.tolist() if location else None,
        "median_residual_before": resid_before.tolist(),
        "median_residual_after": np.median(mu2 - truth, axis=0).tolist(),
        "factors": None if factors is None else dict(zip(ENCODED_LABELS, factors, strict=True)),
        "val_pulls_before": before,
        "val_pulls_after": after,
    }


def train_sersic(
    data_dir: str | Path,
    network: str = "galnet-2-small",
    out_dir: str | Path = "lensml-sersic-run",
    epochs: int = 30,
    *,
    loss: str = "huber_nll",
    delta: float = 1e-3,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    patience: int = 10,
    val_fraction: float = 0.1,
    augment: bool = False,
    calibrate_sigma: bool = True,
    calibrate_location: bool = True,
    seed: int = 0,
    device: str | None = None,
    network_config: Mapping[str, Any] | None = None,
    max_items: int | None = None,
    num_workers: int = 0,
    resume: bool = False,
    progress: bool = True,
    train_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train GaLNet-1 or GaLNet-2 on a ``sersic`` store through :func:`lensml.train.fit`.

    Parameters
    ----------
    data_dir : path
        Training store (``lensml simulate sersic``).
    network : str
        ``galnet-1``, ``galnet-2`` (paper size) or ``galnet-1-small``, ``galnet-2-small``
        (CPU presets); weights seeded by ``seed``.
    out_dir : path
        Run directory of :func:`lensml.train.fit` (the saved model is ``out_dir/model``).
    epochs : int
        Maximum epochs (>= 1; early stopping on the validation loss may end sooner).
    loss : {"huber_nll", "huber", "gaussian_nll", "mse"}
        ``huber_nll`` (default): the paper's Huber loss on the means plus a calibrated σ head;
        ``huber``: the paper's loss alone, no σ; ``gaussian_nll``: means and σ's by NLL.
    delta : float
        Huber δ on standardised labels (paper: 0.001), > 0.
    lr, weight_decay : float
        Adam learning rate (peak) and L2 penalty.
    batch_size : int
        Stamps per optimiser step.
    schedule : str
        Learning-rate schedule of :class:`lensml.train.config.ScheduleConfig` (``cosine``
        decays to 0 over the run; ``none`` keeps ``lr``).
    patience : int
        Early-stopping patience (epochs).
    val_fraction : float
        Fraction of the items held out for validation (seeded split), in (0, 0.9].
    augment : bool
        Random 90° rotations / mirrorings of the training items.
    calibrate_sigma : bool
        Rescale the σ head on the validation split (see the module docstring).
    calibrate_location : bool
        Remove each output's median residual on the validation split
        (:func:`calibrate_outputs`).
    seed : int
        Seeds the split, the weights, the shuffling and the augmentation.
    device : str, optional
        ``cpu``, ``cuda``, ``auto``...
    network_config : mapping, optional
        Extra network options (``width``, ``dropout``, ``channels``...); ``out_features``,
        ``uncertainty``, ``input_size`` and ``psf_size`` are set from the store and the loss.
    max_items : int, optional
        Use only the first ``max_items`` items of the store.
    num_workers, resume, progress
        Passed to :func:`lensml.train.fit`.
    train_overrides : mapping, optional
        Extra :class:`lensml.train.TrainConfig` fields (merged last).

    Returns
    -------
    dict
        :func:`lensml.train.fit`'s result plus ``network``, ``loss``, ``with_psf``,
        ``n_train``, ``n_val``, ``train_seconds``, ``train_galaxies_per_s`` and
        ``sigma_calibration`` (:func:`calibrate_outputs`' record: location shifts, σ
        factors, validation residuals and pulls before/after; None when neither ran).

    Raises
    ------
    ValueError
        Bad store, unknown or non-GaLNet network, unknown loss, bad numbers.
    """

    from lensml.train import build_network, fit
    from lensml.train.normalisation import Normalisation

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    if not 0 < val_fraction <= 0.9:
        raise ValueError(f"val_fraction must be in (0, 0.9], got {val_fraction}")
    info = inspect_sersic_store(data_dir)
    uncertainty = LOSSES[loss]
    net_cfg = _network_config(network, info, uncertainty, network_config)
    model = build_network(network, net_cfg, seed=int(seed))
    with_psf = int(model.in_channels) == 2
    n = info.n if max_items is None else min(info.n, int(max_items))
    if n < 4:
        raise ValueError(f"data_dir {info.root}: need at least 4 items to train, got {n}")
    train_idx, val_idx = validation_split(n, seed, val_fraction)
    phot = store_photometry(info)
    scale = phot["sky_sigma"]
    train_ds = SersicStampDataset(info.root, with_psf, scale, train_idx, n, augment, seed)
    val_ds = SersicStampDataset(info.root, with_psf, scale, val_idx, n)
    sample = train_ds.images[: min(len(train_ds), 4096)]
    meta = {
        "format_version": 1, "asinh_scale": scale, "pixel_scale": info.pixel_scale,
        "stamp_size": info.stamp_size, "psf_size": info.psf_size if with_psf else 0,
        "zeropoint": phot["zeropoint"], "exptime": phot["exptime"], "survey": info.survey,
        "input": "asinh(image / asinh_scale)" + (" + psf" if with_psf else ""),
        "augment": bool(augment), "train_store": str(info.root),
    }  # fmt: skip
    enc = train_ds.encoded.double()
    norm = Normalisation(
        list(ENCODED_LABELS),
        enc.mean(0).tolist(),
        enc.std(0).clamp_min(1e-8).tolist(),
        input_mean=float(sample.mean()),
        input_std=float(sample.std().clamp_min(1e-8)),
        extra={EXTRA_KEY: meta},
    )
    config: dict[str, Any] = {
        "max_epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": 0.0,
        "num_workers": num_workers,
        "optimizer": {"name": "Adam", "lr": lr, "weight_decay": weight_decay},
        "schedule": {"name": schedule},
        "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": patience},
        "loss": {"name": loss, "delta": delta},
        "normalise_labels": True,
    }
    config.update(dict(train_overrides or {}))
    t0 = time.perf_counter()
    result = fit(
        model, train_ds, val_ds, config=config, out_dir=out_dir, resume=resume, device=device,
        progress=progress, normalisation=norm, label_names=list(ENCODED_LABELS),
        callbacks=[epoch_callback(train_ds)] if augment else None,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    done = int(result.get("epochs") or 0)
    calibration = None
    want_sigma = bool(uncertainty and calibrate_sigma)
    if result.get("model_dir") is not None and (want_sigma or calibrate_location):
        calibration = calibrate_outputs(Path(result["model_dir"]), val_ds, 256,
                                        location=calibrate_location, sigma=want_sigma)  # fmt: skip
    result.update(
        network=network,
        loss=loss,
        with_psf=with_psf,
        n_train=len(train_ds),
        n_val=len(val_ds),
        train_seconds=seconds,
        train_galaxies_per_s=done * (len(train_ds) + len(val_ds)) / seconds if seconds else None,
        sigma_calibration=calibration,
    )
    return result


def evaluate_sersic(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`lensml.pipelines.sersic_eval.evaluate_sersic`."""
    from lensml.pipelines.sersic_eval import evaluate_sersic as _evaluate

    return _evaluate(*args, **kwargs)


def predict_sersic(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`lensml.pipelines.sersic_predict.predict_sersic`."""
    from lensml.pipelines.sersic_predict import predict_sersic as _predict

    return _predict(*args, **kwargs)


def quickstart_section(
    out_dir: str | Path, seed: int = 0, device: str = "cpu", full: bool = False
) -> tuple[list[Path], dict[str, Any]]:
    """See :func:`lensml.pipelines.sersic_predict.quickstart_section`."""
    from lensml.pipelines.sersic_predict import quickstart_section as _quickstart

    return _quickstart(out_dir, seed=seed, device=device, full=full)
