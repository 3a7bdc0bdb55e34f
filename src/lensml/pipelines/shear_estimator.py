"""The saved shear estimator: post-processing (refit, symmetrisation, m/c) and loading it back.

Part of the shear pipeline (overview: :mod:`lensml.pipelines.shear`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.shear_data import LABELS, dihedral_views

__all__ = [
    "POSTPROCESS_FILE",
    "REFIT_FILE",
    "ShearEstimator",
    "load_shear_estimator",
    "postprocess_shear",
]

#: Files written into a saved model directory by :func:`postprocess_shear`.
POSTPROCESS_FILE = "shear_postprocess.json"
REFIT_FILE = "shear_refit.json"
_POST_FORMAT = "lensml-shear-postprocess"
_REFIT_FORMAT = "lensml-shear-refit"


# ----------------------------------------------------------------------------- estimator
@dataclass
class ShearEstimator:
    """A trained shear network with its saved post-processing (refit, symmetrisation, m/c).

    Attributes
    ----------
    net : nn.Module
        The network in eval mode, its last layer replaced by the refit when there is one.
    info : ModelInfo
        From :func:`lensml.train.load_model`.
    symmetrise : bool
        Apply the 8-fold average of eq. 14 by default.
    calibration : AffineCalibration or None
        Applied by default when present.
    refit : dict or None
        The saved refit record (attenuation factor, sizes), None when not refitted.
    postprocess : dict
        Content of ``shear_postprocess.json`` ({} for a bare model).
    device : str
        Torch device of the network.
    batch_size : int
        Images per forward pass (with symmetrisation: batch_size / 8 stamps in 8 views).
    """

    net: Any
    info: Any
    symmetrise: bool = False
    calibration: Any = None
    refit: dict[str, Any] | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 512
    _inference: Any = field(default=None, init=False, repr=False, compare=False)

    def inference_net(self) -> Any:
        """The network as :meth:`predict` runs it: an eval-mode copy, made once and cached.

        The copy has its Conv2d → BatchNorm2d pairs folded and its weights stored
        channels-last (:func:`lensml.nets.inference.fold_batchnorm`), and skips the network's own
        per-stamp standardisation: :meth:`predict` standardises every stamp before the
        network, and a flip or rotation leaves a stamp's mean and std unchanged, so the
        network's step would repeat it (it is idempotent). Outputs equal ``net``'s to float
        rounding; shear-cnn's symmetrised prediction runs ~2.5× faster on CPU. The copy is
        remade when a parameter or buffer of ``net`` is changed in place (e.g. a new refit;
        :func:`lensml.nets.inference.inference_copy_key`).
        """
        from lensml.nets.inference import fold_batchnorm, inference_copy_key

        key = inference_copy_key(self.net, self.device)
        if self._inference is None or self._inference[0] != key:
            net = fold_batchnorm(self.net.to(self.device), channels_last=True)
            if getattr(net, "standardise", False):
                net.standardise = False
            self._inference = (key, net)
        return self._inference[1]

    @property
    def input_size(self) -> int:
        """Stamp side in pixels the network was trained on."""
        shape = self.info.input_shape
        if shape:
            return int(shape[-1])
        return int(getattr(self.net, "config", {}).get("input_size", 32))

    @property
    def pixel_scale(self) -> float | None:
        """arcsec / pixel of the training stamps (None when not recorded)."""
        ps = self.postprocess.get("instrument", {}).get("pixel_scale")
        return float(ps) if isinstance(ps, int | float) else None

    def check_stamps(self, stamps: Any, where: str = "stamps") -> Any:
        """``(N, 1, S, S)`` / ``(N, S, S)`` stamps as a float32 tensor of the model's size.

        Raises
        ------
        ValueError
            Naming the expected size for stamps of another size or shape, and the items with
            NaN/inf pixels.
        """
        import torch

        x = torch.as_tensor(stamps.detach().cpu() if hasattr(stamps, "detach") else stamps)
        x = x.to(torch.float32)
        if x.ndim == 3:
            x = x[:, None]
        s = self.input_size
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (s, s):
            raise ValueError(
                f"{where}: shape {tuple(x.shape)} does not fit the model "
                f"{self.info.network!r} ({self.info.path}), which takes {s}x{s}-pixel "
                f"single-band stamps (N, 1, {s}, {s})"
            )
        bad = ~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(
                f"{where}: {int(bad.sum())} stamp(s) have NaN or inf pixels (items {idx}); "
                "flag or drop them first"
            )
        return x

    def predict(
        self,
        stamps: Any,
        *,
        symmetrise: bool | None = None,
        calibrate: bool | None = None,
    ) -> np.ndarray:
        """Reduced-shear estimates ``(N, 2)`` float64 (g1, g2; GalSim signs) of the stamps.

        Parameters
        ----------
        stamps : array or Tensor
            ``(N, 1, S, S)`` or ``(N, S, S)`` background-subtracted stamps (any flux unit; each
            is normalised to mean 0, std 1), S the model's stamp size, finite.
        symmetrise, calibrate : bool, optional
            Override the saved choices (None: as saved; ``calibrate=True`` without a saved
            calibration is refused).
        """
        import torch

        from lensml.data.shear_augment import normalise_stamps
        from lensml.pipelines.shear_calibration import symmetrise as sym_fn

        x = normalise_stamps(self.check_stamps(stamps))
        sym = self.symmetrise if symmetrise is None else bool(symmetrise)
        cal = self.calibration is not None if calibrate is None else bool(calibrate)
        if cal and self.calibration is None:
            raise ValueError(f"model {self.info.path}: no saved calibration ({POSTPROCESS_FILE})")
        norm = self.info.normalisation
        if x.shape[0] == 0:
            return np.zeros((0, 2))
        net = self.inference_net()
        if sym:
            # eight views per stamp: keep each forward pass at about batch_size images
            g = sym_fn(net, x, batch_size=max(1, self.batch_size // 8), normalisation=norm,
                       device=self.device)  # fmt: skip
        else:
            outs = []
            with torch.no_grad():
                for s in range(0, x.shape[0], self.batch_size):
                    out = net(x[s : s + self.batch_size].to(self.device))
                    outs.append(norm.denormalise(out).cpu())
            g = torch.cat(outs)
        g = g.double().numpy()
        return self.calibration.apply(g) if cal else g


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a JSON object")
    return data


def _load_refit(path: Path, net: Any) -> dict[str, Any]:
    import torch

    data = _read_json(path, "shear refit file")
    if data.get("format") != _REFIT_FORMAT:
        raise ValueError(f"shear refit file {path}: not a lensml shear refit ({_REFIT_FORMAT!r})")
    try:
        w = torch.as_tensor(data["weight"], dtype=torch.float64)
        b = torch.as_tensor(data["bias"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"shear refit file {path}: bad 'weight'/'bias' ({err})") from None
    final = getattr(net, "final", None)
    if final is None or tuple(final.weight.shape) != tuple(w.shape) or b.shape != (w.shape[0],):
        raise ValueError(
            f"shear refit file {path}: weight {tuple(w.shape)} does not fit the network's last "
            "layer"
        )
    with torch.no_grad():
        final.weight.copy_(w.to(final.weight))
        final.bias.copy_(b.to(final.bias))
    return {k: v for k, v in data.items() if k not in ("weight", "bias")}


def load_shear_estimator(
    model_dir: str | Path, device: str = "cpu", batch_size: int = 512
) -> ShearEstimator:
    """Load a saved shear model with the post-processing recorded in its directory.

    A directory without ``shear_postprocess.json`` (e.g. a model trained with the generic
    engine) is loaded as the bare network: no refit, symmetrisation or calibration.

    Raises
    ------
    lensml.train.ModelLoadError
        For a directory that is not a lensml model.
    ValueError
        A network that does not predict (g1, g2), or unreadable post-processing files.
    """
    from lensml.pipelines.shear_calibration import CALIBRATION_FILE, AffineCalibration
    from lensml.train import load_model

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from lensml.models import resolve_model

    p = resolve_model(model_dir, "shear")
    net, info = load_model(p, device)
    names = list(info.normalisation.label_names)
    if names != list(LABELS):
        raise ValueError(f"model {p}: predicts {names}, not the reduced shear {list(LABELS)}")
    post: dict[str, Any] = {}
    if (p / POSTPROCESS_FILE).is_file():
        post = _read_json(p / POSTPROCESS_FILE, "shear post-processing file")
        if post.get("format") != _POST_FORMAT:
            raise ValueError(f"{p / POSTPROCESS_FILE}: not a lensml shear post-processing file")
    refit = None
    if post.get("refit"):
        refit = _load_refit(p / REFIT_FILE, net)
    calibration = None
    if post.get("calibrate"):
        calibration = AffineCalibration.load(p / CALIBRATION_FILE)
    return ShearEstimator(
        net=net.eval(), info=info, symmetrise=bool(post.get("symmetrise", False)),
        calibration=calibration, refit=refit, postprocess=post, device=str(device),
        batch_size=int(batch_size),
    )  # fmt: skip


# ----------------------------------------------------------------------------- post-processing
def postprocess_shear(
    model_dir: str | Path,
    *,
    refit_set: tuple[Any, Any] | None = None,
    calib_set: tuple[Any, Any] | None = None,
    symmetrise: bool = True,
    refit_views: int = 8,
    instrument: Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 512,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Refit the last layer, choose symmetrisation and fit the m/c calibration of a saved model.

    Parameters
    ----------
    model_dir : path
        Saved model directory (its ``weights.pt`` stays the trained network's).
    refit_set : (images, g), optional
        Matched set for the Appendix-B refit: ``(N, 1, S, S)`` stamps and ``(N, 2)`` true
        shears; None switches the refit off.
    calib_set : (images, g), optional
        Calibration set for m, c (eq. 17), fitted on the output of the refit and (if on)
        the symmetrisation; None switches the calibration off.
    symmetrise : bool
        Use the eq. 14 average at inference.
    refit_views : {1, 8}
        8: the refit sees every stamp in its eight flips/rotations (labels transformed, the
        paper's augmentation (iv)); 1: the stamps as they are.
    instrument : mapping, optional
        Pixel scale, stamp size, PSF preset... of the training data (recorded for ``predict``).
    device, batch_size
        Where and in how large batches the network runs.
    meta : mapping, optional
        More JSON-able notes for ``shear_postprocess.json``.

    Returns
    -------
    dict
        The content written to ``shear_postprocess.json``.
    """
    import torch

    from lensml.data.shear_augment import normalise_stamps
    from lensml.data.store import write_json_atomic
    from lensml.pipelines.shear_calibration import (
        CALIBRATION_FILE,
        fit_affine,
        network_features,
        refit_last_layer,
    )
    from lensml.train import load_model

    if refit_views not in (1, 8):
        raise ValueError(f"refit_views must be 1 or 8, got {refit_views!r}")
    p = Path(model_dir)
    net, info = load_model(p, device)
    norm = info.normalisation
    record: dict[str, Any] = {
        "format": _POST_FORMAT,
        "version": 1,
        "order": ["refit", "symmetrise", "calibrate"],
        "refit": refit_set is not None,
        "symmetrise": bool(symmetrise),
        "calibrate": calib_set is not None,
        "instrument": dict(instrument or {}),
        "meta": dict(meta or {}),
    }
    for stale in (REFIT_FILE, CALIBRATION_FILE, POSTPROCESS_FILE):
        (p / stale).unlink(missing_ok=True)
    refit_info = None
    if refit_set is not None:
        x_all = torch.as_tensor(refit_set[0], dtype=torch.float32)
        g_all = torch.as_tensor(refit_set[1], dtype=torch.float32)
        feats, targets = [], []
        step = max(1, 4096 // refit_views)
        for s in range(0, x_all.shape[0], step):
            x, g = x_all[s : s + step], g_all[s : s + step]
            if refit_views == 8:
                x, g = dihedral_views(x, g)
            f, _ = network_features(net, x, batch_size=batch_size,
                                    input_transform=normalise_stamps, device=device)  # fmt: skip
            feats.append(f)
            targets.append(g.double())
        t0 = time.perf_counter()
        refit = refit_last_layer(torch.cat(feats), torch.cat(targets), normalisation=norm)
        refit_info = {
            "format": _REFIT_FORMAT,
            "version": 1,
            "model": "net output (normalised units) = weight @ features + bias",
            "weight": refit.weight.tolist(),
            "bias": refit.bias.tolist(),
            "attenuation_factor": refit.factor.tolist(),
            "loss": refit.loss.tolist(),
            "var_g": refit.var_g.tolist(),
            "n": int(refit.n),
            "n_stamps": int(x_all.shape[0]),
            "views": int(refit_views),
            "seconds": time.perf_counter() - t0,
        }
        write_json_atomic(p / REFIT_FILE, refit_info)
        refit.load_into(net.final)
        keep = ("attenuation_factor", "loss", "var_g", "n", "views")
        record["refit_summary"] = {k: refit_info[k] for k in keep}
    estimator = ShearEstimator(net=net.eval(), info=info, symmetrise=bool(symmetrise),
                               device=device, batch_size=batch_size)  # fmt: skip
    if calib_set is not None:
        g_true = np.asarray(torch.as_tensor(calib_set[1], dtype=torch.float64))
        g_est = estimator.predict(calib_set[0], calibrate=False)
        notes = {"fitted_on": "calibration set", "symmetrised": bool(symmetrise),
                 "refit": refit_set is not None}  # fmt: skip
        try:
            cal = fit_affine(g_est, g_true, meta=notes)
        except ValueError as err:
            raise ValueError(
                f"calibration set ({g_true.shape[0]} stamps): no usable m/c calibration ({err}); "
                "the network has not learned the shear yet: train longer or on more stamps"
            ) from None
        cal.save(p / CALIBRATION_FILE)
        record["calibration_summary"] = {
            "m": cal.m.tolist(), "c": cal.c.tolist(), "m_err": cal.m_err.tolist(),
            "c_err": cal.c_err.tolist(), "n": cal.n,
            "rms_calibrated": np.sqrt(np.mean((cal.apply(g_est) - g_true) ** 2, axis=0)).tolist(),
        }  # fmt: skip
    write_json_atomic(p / POSTPROCESS_FILE, record)
    return record
