"""Post-training steps of the shear CNN and the shear-estimator metrics (issue 6, items 4 and 7).

Paper: ``shared/papers/cnn-shear-estimator-clash.txt`` (§4.2 last paragraph, §4.3 eq. 14,
§5 eqs. 15–17, Table 4, Figs. 10–12, Appendix B). In the paper's order:

1. :func:`refit_last_layer` / :func:`apply_refit` — the last affine layer refitted by linear
   least squares from the penultimate features to the true shear on a matched set, then scaled
   by the regression-attenuation factor [1 − L/Var(g)]⁻¹ (Appendix B).
2. :func:`symmetrise` — the 8-fold flip/rotation average of eq. 14.
3. :func:`fit_affine` → :class:`AffineCalibration` — g̃_i = (1 + m_i) g_i + c_i per component
   (eq. 17), applied as ĝ_i = (g̃_i − c_i)/(1 + m_i) (eq. 16) and saved with the model.

:func:`shear_metrics` gives the Table 4 quantities (σ_i, m_i, c_i with errors) and the RMS and
bias in bins of true shear (Fig. 12), magnitude (Fig. 10) and centroid misalignment (Fig. 11).

Networks follow the shear-network contract: ``net.features(x) -> (B, F)`` and
``net.final: nn.Linear`` (F → 2) with ``net(x) == net.final(net.features(x))``. If the network
was trained on standardised labels, pass its :class:`lensml.train.normalisation.Normalisation`
so that targets and outputs are converted (otherwise outputs are taken as g1, g2 directly).
Images are whatever the network eats (the shear nets take per-stamp standardised stamps;
``input_transform`` applies such a step per batch — per-stamp standardisation commutes with the
flips and rotations of eq. 14).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CALIBRATION_FILE",
    "AffineCalibration",
    "LastLayerRefit",
    "apply_refit",
    "fit_affine",
    "network_features",
    "refit_last_layer",
    "ring_pair_means",
    "shear_metrics",
    "symmetrise",
]

#: File name of the calibration inside a saved model directory.
CALIBRATION_FILE = "shear_calibration.json"
_FORMAT = "lensml-shear-calibration"


def _as_2col(x: Any, name: str, owner: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{owner}: {name!r} must be a numeric (N, 2) array ({err})") from None
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{owner}: {name!r} must have shape (N, 2) (g1, g2), got {a.shape}")
    return a


def _mask(ok: Any, n: int, owner: str) -> np.ndarray:
    if ok is None:
        return np.ones(n, dtype=bool)
    if hasattr(ok, "detach"):
        ok = ok.detach().cpu().numpy()
    m = np.asarray(ok)
    if m.shape != (n,) or m.dtype != bool:
        raise ValueError(f"{owner}: 'ok' must be a boolean (N,) mask with N={n}, got {m.shape}")
    return m


# ================================================================== affine calibration (eq. 17)


@dataclass(frozen=True)
class AffineCalibration:
    """Per-component multiplicative and additive bias: g̃_i = (1 + m_i) g_i + c_i.

    Attributes
    ----------
    m, c : ndarray
        ``(2,)`` multiplicative (dimensionless, > −1) and additive (shear units) biases.
    m_err, c_err : ndarray
        ``(2,)`` their 1σ least-squares standard errors (residual variance / (n − 2)).
    n : int
        Number of (estimate, truth) pairs fitted.
    meta : dict
        Free JSON-able notes (estimator name, data set, ...).
    """

    m: np.ndarray
    c: np.ndarray
    m_err: np.ndarray
    c_err: np.ndarray
    n: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("m", "c", "m_err", "c_err"):
            v = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if v.shape != (2,) or not np.isfinite(v).all():
                raise ValueError(f"AffineCalibration: {name!r} must be 2 finite numbers, got {v}")
            object.__setattr__(self, name, v)
        if not (self.m > -1).all():
            raise ValueError(f"AffineCalibration: 1 + m must be > 0, got m = {self.m.tolist()}")
        if (self.m_err < 0).any() or (self.c_err < 0).any():
            raise ValueError("AffineCalibration: m_err and c_err must be >= 0")
        object.__setattr__(self, "n", int(self.n))

    def apply(self, g_est: Any) -> np.ndarray:
        """Calibrated ĝ = (g̃ − c) / (1 + m) of ``(N, 2)`` estimates (eq. 16), float64."""
        g = _as_2col(g_est, "g_est", "AffineCalibration.apply")
        return (g - self.c) / (1.0 + self.m)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able mapping (the content of the calibration file)."""
        return {
            "format": _FORMAT,
            "version": 1,
            "model": "g_est_i = (1 + m_i) g_true_i + c_i; calibrated = (g_est - c) / (1 + m)",
            "m": self.m.tolist(),
            "c": self.c.tolist(),
            "m_err": self.m_err.tolist(),
            "c_err": self.c_err.tolist(),
            "n": self.n,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration") -> AffineCalibration:
        """Validate and build from :meth:`to_dict` output; ValueError names ``source``."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{source}: not a lensml shear calibration (format {_FORMAT!r})")
        missing = [k for k in ("m", "c", "m_err", "c_err", "n") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        try:
            return cls(
                np.asarray(data["m"], dtype=np.float64),
                np.asarray(data["c"], dtype=np.float64),
                np.asarray(data["m_err"], dtype=np.float64),
                np.asarray(data["c_err"], dtype=np.float64),
                int(data["n"]),
                dict(data.get("meta") or {}),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (a file, or a model directory → ``CALIBRATION_FILE``)."""
        from lensml.data.store import write_json_atomic

        p = Path(path)
        if p.is_dir():
            p = p / CALIBRATION_FILE
        write_json_atomic(p, self.to_dict())
        return p

    @classmethod
    def load(cls, path: str | Path) -> AffineCalibration:
        """Read a file written by :meth:`save` (or a model directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / CALIBRATION_FILE
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"shear calibration file '{p}': cannot read ({err})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"shear calibration file '{p}': invalid JSON ({err})") from None
        return cls.from_dict(data, f"shear calibration file '{p}'")


def fit_affine(
    g_est: Any, g_true: Any, ok: Any = None, meta: dict[str, Any] | None = None
) -> AffineCalibration:
    """Least-squares fit of g̃_i = (1 + m_i) g_i + c_i for each component (the paper's eq. 17).

    Parameters
    ----------
    g_est : array ``(N, 2)``
        Uncalibrated estimates g̃ (finite where used).
    g_true : array ``(N, 2)``
        True reduced shears g.
    ok : bool array ``(N,)``, optional
        Rows to use (e.g. ``MomentsResult.ok``); default all.
    meta : dict, optional
        Notes stored with the calibration.

    Returns
    -------
    AffineCalibration
        With standard errors from the residual variance s² = RSS / (n − 2):
        σ_m² = s² / S_gg, σ_c² = s² (1/n + ḡ² / S_gg), S_gg = Σ (g − ḡ)².

    Raises
    ------
    ValueError
        Shapes, fewer than 3 rows, non-finite used values, or no spread in the true shear.
    """
    owner = "fit_affine"
    ge = _as_2col(g_est, "g_est", owner)
    gt = _as_2col(g_true, "g_true", owner)
    if ge.shape != gt.shape:
        raise ValueError(f"{owner}: g_est {ge.shape} and g_true {gt.shape} differ in shape")
    use = _mask(ok, ge.shape[0], owner)
    ge, gt = ge[use], gt[use]
    n = ge.shape[0]
    if n < 3:
        raise ValueError(f"{owner}: need at least 3 (estimate, truth) pairs, got {n}")
    if not (np.isfinite(ge).all() and np.isfinite(gt).all()):
        raise ValueError(f"{owner}: g_est or g_true has NaN/inf in the rows used (pass 'ok')")
    m, c, m_err, c_err = (np.zeros(2) for _ in range(4))
    for i in range(2):
        x, y = gt[:, i], ge[:, i]
        xm, ym = x.mean(), y.mean()
        sxx = float(np.sum((x - xm) ** 2))
        if not sxx > 0:
            raise ValueError(f"{owner}: g_true component {i + 1} has no spread; m is undefined")
        slope = float(np.sum((x - xm) * (y - ym))) / sxx
        intercept = ym - slope * xm
        s2 = float(np.sum((y - intercept - slope * x) ** 2)) / max(n - 2, 1)
        m[i], c[i] = slope - 1.0, intercept
        m_err[i] = math.sqrt(s2 / sxx)
        c_err[i] = math.sqrt(s2 * (1.0 / n + xm * xm / sxx))
    return AffineCalibration(m, c, m_err, c_err, n, dict(meta or {}))


def ring_pair_means(
    g_est: Any, g_true: Any, ok: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair means of ring-test estimates, for :func:`fit_affine` with the shape noise cancelled.

    In a ring test (Nakajima & Bernstein 2007; the ``shear`` generator's ``ring_pairs``) rows
    2k and 2k+1 are one galaxy and the same galaxy turned by 90° before the same shear, so
    their intrinsic ellipticities are opposite and the mean of the two estimates is free of
    shape noise to first order. Fitting the means (one row per pair) gives m and c with
    honest least-squares errors.

    Parameters
    ----------
    g_est : array ``(2P, 2)``
        Estimates of the paired stamps (pair k: rows 2k, 2k+1).
    g_true : array ``(2P, 2)``
        True shears, equal within each pair.
    ok : bool array ``(2P,)``, optional
        Measured rows; a pair is used only when both are (default all).

    Returns
    -------
    g_mean, g_pair : ndarray ``(P', 2)``
        Mean estimate and true shear of each used pair.
    used : ndarray ``(P,)`` bool
        Which pairs were used.

    Raises
    ------
    ValueError
        An odd number of rows, or true shears that differ within a pair (not a ring set).
    """
    owner = "ring_pair_means"
    ge = _as_2col(g_est, "g_est", owner)
    gt = _as_2col(g_true, "g_true", owner)
    if ge.shape != gt.shape:
        raise ValueError(f"{owner}: g_est {ge.shape} and g_true {gt.shape} differ in shape")
    if ge.shape[0] % 2:
        raise ValueError(f"{owner}: ring pairs need an even number of rows, got {ge.shape[0]}")
    use = _mask(ok, ge.shape[0], owner)
    bad = np.nonzero(np.any(gt[0::2] != gt[1::2], axis=1))[0]
    if len(bad):
        raise ValueError(
            f"{owner}: true shears differ within {len(bad)} pair(s) (first: rows "
            f"{2 * bad[0]}, {2 * bad[0] + 1}); not a ring-paired set"
        )
    used = use[0::2] & use[1::2]
    g_mean = 0.5 * (ge[0::2] + ge[1::2])[used]
    return g_mean, gt[0::2][used], used


# ================================================== last-layer refit (§4.2, Appendix B)


@dataclass
class LastLayerRefit:
    """A refitted last affine layer g = W f + b (Appendix B).

    Attributes
    ----------
    weight : Tensor
        ``(2, F)`` float64, in the network's output units.
    bias : Tensor
        ``(2,)`` float64.
    factor : ndarray
        ``(2,)`` regression-attenuation correction [1 − L_i/Var(g_i)]⁻¹ applied (1 if off).
    loss : ndarray
        ``(2,)`` L_i: mean squared residual of the plain least-squares fit per component
        (or the value given), output units².
    var_g : ndarray
        ``(2,)`` Var(g_i) of the targets, output units².
    n : int
        Number of samples fitted.
    """

    weight: Tensor
    bias: Tensor
    factor: np.ndarray
    loss: np.ndarray
    var_g: np.ndarray
    n: int

    def load_into(self, linear: nn.Linear) -> None:
        """Copy weight and bias into ``linear`` (in place, its dtype and device)."""
        if not isinstance(linear, nn.Linear) or tuple(linear.weight.shape) != tuple(
            self.weight.shape
        ):
            raise ValueError(
                f"LastLayerRefit.load_into: need an nn.Linear of weight shape "
                f"{tuple(self.weight.shape)}, got {getattr(linear, 'weight', None)!r:.60}"
            )
        if linear.bias is None:
            raise ValueError("LastLayerRefit.load_into: the layer has no bias")
        with torch.no_grad():
            linear.weight.copy_(self.weight.to(linear.weight))
            linear.bias.copy_(self.bias.to(linear.bias))


def refit_last_layer(
    features: Any,
    g_true: Any,
    *,
    loss: Any = None,
    attenuation: bool = True,
    normalisation: Any = None,
) -> LastLayerRefit:
    """Least-squares refit of the last affine layer with the regression-attenuation correction.

    Appendix B in this code's symbols: the signal x is one shear component g_i (zero mean in
    the appendix), the noisy feature vector y ∈ R^F the penultimate representation f. Linear
    least squares from features to signal (eq. B4–B5) gives the MMSE coefficients
    a_MMSE = Var(x) C_y⁻¹ s (B10), attenuated towards zero; the conditionally unbiased
    minimum-variance estimator is a* = C_y⁻¹ s / (sᵀ C_y⁻¹ s) (B13) and, for many samples,
    a* = a_MMSE [1 − L(a_MMSE)/Var(x)]⁻¹ (B15), L the mean squared error of the fit.

    Here, per component i: the features and targets are centred on their sample means
    (the appendix's "after a constant mean is subtracted" and E[x] = 0), a_i is solved by
    ``numpy.linalg.lstsq`` (minimum-norm if features are collinear, e.g. dead ReLUs),
    L_i = mean((ĝ_i − g_i)²) of that fit (the paper's L(w*) on the matched set), and

        W_i = k_i a_i,  b_i = ḡ_i − W_i · f̄,  k_i = [1 − L_i / Var(g_i)]⁻¹.

    With zero-mean targets this is the paper's "multiply all weights in layer six" by k
    (§4.2); with a non-zero sample mean ḡ the mean is kept and only the slope is scaled,
    which keeps E[ĝ] = E[g] (the paper's form would shift it by (k − 1) ḡ).

    Parameters
    ----------
    features : array or Tensor ``(N, F)``
        Penultimate features f (``net.features(x)``) of a matched set, finite.
    g_true : array or Tensor ``(N, 2)``
        True reduced shears of the same stamps.
    loss : float or (2,) array, optional
        L_i to use instead of the refit's own mean squared residual (e.g. the paper's training
        loss L(w*) evaluated elsewhere), output units², in [0, Var(g_i)).
    attenuation : bool
        Apply the factor k_i (default True); False gives the plain least-squares layer.
    normalisation : Normalisation, optional
        If the network outputs standardised labels, its label normalisation: targets are
        standardised with it before the fit (k_i is unit-independent).

    Returns
    -------
    LastLayerRefit

    Raises
    ------
    ValueError
        Shapes, non-finite values, fewer samples than F + 2, or L_i >= Var(g_i) (features
        without information on g_i: the correction diverges).
    """
    owner = "refit_last_layer"
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    f = np.asarray(features, dtype=np.float64)
    t = _as_2col(g_true, "g_true", owner)
    if f.ndim != 2 or f.shape[0] != t.shape[0]:
        raise ValueError(
            f"{owner}: 'features' must be (N, F) with N={t.shape[0]} rows, got {f.shape}"
        )
    n, nf = f.shape
    if n < nf + 2:
        raise ValueError(f"{owner}: need at least F + 2 = {nf + 2} samples, got {n}")
    if not (np.isfinite(f).all() and np.isfinite(t).all()):
        raise ValueError(f"{owner}: 'features' or 'g_true' contains NaN or inf")
    if normalisation is not None:
        t = (t - np.asarray(normalisation.mean, dtype=np.float64)) / np.asarray(
            normalisation.std, dtype=np.float64
        )
    f_mean, t_mean = f.mean(axis=0), t.mean(axis=0)
    fc, tc = f - f_mean, t - t_mean
    a, *_ = np.linalg.lstsq(fc, tc, rcond=None)  # (F, 2)
    resid = fc @ a - tc
    var_g = np.mean(tc * tc, axis=0)
    if not (var_g > 0).all():
        raise ValueError(f"{owner}: 'g_true' needs spread in both components")
    if loss is None:
        big_l = np.mean(resid * resid, axis=0)
    else:
        big_l = np.broadcast_to(np.asarray(loss, dtype=np.float64).reshape(-1), (2,)).copy()
        if not (np.isfinite(big_l).all() and (big_l >= 0).all()):
            raise ValueError(f"{owner}: 'loss' must be finite and >= 0, got {big_l.tolist()}")
    if attenuation:
        if not (big_l < var_g).all():
            raise ValueError(
                f"{owner}: L = {big_l.tolist()} >= Var(g) = {var_g.tolist()}: the features "
                "carry no information on g and the attenuation factor diverges"
            )
        k = 1.0 / (1.0 - big_l / var_g)
    else:
        k = np.ones(2)
    w = (a * k).T  # (2, F)
    b = t_mean - w @ f_mean
    return LastLayerRefit(
        weight=torch.as_tensor(w, dtype=torch.float64),
        bias=torch.as_tensor(b, dtype=torch.float64),
        factor=k,
        loss=big_l,
        var_g=var_g,
        n=n,
    )


def _check_net(net: Any, owner: str) -> None:
    if not isinstance(net, nn.Module) or not callable(getattr(net, "features", None)):
        raise ValueError(f"{owner}: 'net' must be an nn.Module with a features(x) method")
    final = getattr(net, "final", None)
    if not isinstance(final, nn.Linear) or final.out_features != 2:
        raise ValueError(f"{owner}: 'net.final' must be an nn.Linear with 2 outputs (g1, g2)")


def _batches(data: Any, batch_size: int, owner: str) -> Iterable[tuple[Tensor, Tensor | None]]:
    """(x, y or None) batches from a tensor/array or an iterable of (x, y) / dict batches."""
    from lensml.train.loaders import split_sample

    if isinstance(data, (Tensor, np.ndarray)):
        x = torch.as_tensor(data)
        if x.ndim != 4:
            raise ValueError(f"{owner}: images must be (N, C, H, W), got {tuple(x.shape)}")
        for s in range(0, x.shape[0], batch_size):
            yield x[s : s + batch_size], None
        return
    if not isinstance(data, Iterable):
        raise ValueError(f"{owner}: data must be an (N, C, H, W) tensor or an iterable of batches")
    for batch in data:
        x, y = split_sample(batch)
        yield torch.as_tensor(x), torch.as_tensor(y)


def _eval_mode(net: nn.Module) -> dict[nn.Module, bool]:
    modes = {m: m.training for m in net.modules()}
    net.eval()
    return modes


def _restore(modes: dict[nn.Module, bool]) -> None:
    for m, training in modes.items():
        m.train(training)


def network_features(
    net: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Penultimate features ``net.features(x)`` of every stamp, in eval mode, no gradients.

    Parameters
    ----------
    net : nn.Module
        A shear network (``features`` + ``final``).
    data : Tensor, ndarray or iterable
        ``(N, C, H, W)`` images, or an iterable of ``(x, y)`` / ``{"image", "labels"}`` batches.
    batch_size : int
        Images per forward pass (tensor input).
    input_transform : callable, optional
        Applied to each image batch before the network (e.g. per-stamp standardisation).
    device : str or torch.device, optional
        Where to run; default the network's device.

    Returns
    -------
    (Tensor, Tensor or None)
        ``(N, F)`` float64 features on the CPU, and the ``(N, L)`` labels of an iterable of
        batches (None for tensor input).
    """
    owner = "network_features"
    _check_net(net, owner)
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    feats, labels = [], []
    modes = _eval_mode(net)
    try:
        with torch.no_grad():
            for x, y in _batches(data, int(batch_size), owner):
                x = x.to(dev, next(net.parameters()).dtype)
                if input_transform is not None:
                    x = input_transform(x)
                feats.append(net.features(x).to("cpu", torch.float64))
                if y is not None:
                    labels.append(y.to("cpu", torch.float64))
    finally:
        _restore(modes)
    if not feats:
        raise ValueError(f"{owner}: no data")
    return torch.cat(feats), (torch.cat(labels) if labels else None)


def apply_refit(
    net: nn.Module,
    data: Any,
    g_true: Any = None,
    *,
    batch_size: int = 256,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    normalisation: Any = None,
    attenuation: bool = True,
    loss: Any = None,
    device: str | torch.device | None = None,
) -> LastLayerRefit:
    """Refit ``net.final`` on a matched set (features → truth) and load the result into it.

    Parameters
    ----------
    net : nn.Module
        Shear network with ``features`` and ``final`` (modified in place).
    data : Tensor, ndarray or iterable
        ``(N, C, H, W)`` images with ``g_true``, or an iterable of ``(x, g)`` batches.
    g_true : array ``(N, 2)``, optional
        Truth for tensor input (must be None for an iterable, whose labels are used).
    batch_size, input_transform, device
        As :func:`network_features`.
    normalisation, attenuation, loss
        As :func:`refit_last_layer`.

    Returns
    -------
    LastLayerRefit
    """
    owner = "apply_refit"
    is_array = isinstance(data, (Tensor, np.ndarray))
    if is_array and g_true is None:
        raise ValueError(f"{owner}: 'g_true' is required with an image tensor")
    if not is_array and g_true is not None:
        raise ValueError(f"{owner}: give 'g_true' only with an image tensor (batches carry it)")
    feats, labels = network_features(
        net, data, batch_size=batch_size, input_transform=input_transform, device=device
    )
    target = g_true if is_array else labels
    refit = refit_last_layer(
        feats, target, loss=loss, attenuation=attenuation, normalisation=normalisation
    )
    refit.load_into(net.final)
    return refit


# ======================================================================= symmetrisation (eq. 14)


def symmetrise(
    net: nn.Module,
    images: Any,
    *,
    batch_size: int = 256,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    normalisation: Any = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """The paper's eq. 14: average of the 8 flip/rotation predictions mapped back.

    For T_{i,j} = (rotate by jπ/2) ∘ (mirror y → −y if i = −1), the network's prediction on
    T(x) estimates the transformed shear t_{i,j}(g); it is mapped back with the inverse spin-2
    rule (rotate by −jπ/2, then mirror: g2 → −g2) and the 8 results are averaged. The
    geometry and label rules are :func:`lensml.data.augment.flip` and
    :func:`lensml.data.augment.rot90` (lensml's y-up orientation, GalSim's shear signs). The
    result is exactly equivariant: symmetrise(T x) = t(symmetrise(x)) for all 8 T.

    Parameters
    ----------
    net : nn.Module
        Maps ``(B, C, H, W)`` (square) to ``(B, 2)``; run in eval mode (restored after).
    images : Tensor or ndarray
        ``(N, C, H, W)`` stamps as the network takes them (after ``input_transform``).
    batch_size : int
        Stamps per pass (each pass runs 8 × batch_size images).
    input_transform : callable, optional
        Applied to the transformed stamps before the network.
    normalisation : Normalisation, optional
        If the network outputs standardised labels: de-standardised before mapping back
        (the spin-2 rules hold for g, not for (g − μ)/σ); the result is then in shear units.
    device : str or torch.device, optional
        Where to run; default the network's device.

    Returns
    -------
    Tensor
        ``(N, 2)`` symmetrised (g1, g2) on the CPU, in the network's parameter dtype.
    """
    from lensml.data.augment import LabelRules, flip, rot90

    owner = "symmetrise"
    if not isinstance(net, nn.Module):
        raise ValueError(f"{owner}: 'net' must be an nn.Module")
    x_all = torch.as_tensor(images)
    if x_all.ndim != 4 or x_all.shape[-1] != x_all.shape[-2] or x_all.shape[0] == 0:
        raise ValueError(
            f"{owner}: images must be (N, C, H, W) with square, non-empty stamps, "
            f"got {tuple(x_all.shape)}"
        )
    if not torch.isfinite(x_all).all():
        raise ValueError(f"{owner}: images contain NaN or inf pixels")
    rules = LabelRules(("g1", "g2"), {"g1": "spin2", "g2": "spin2"})
    views = [(mirror, k) for mirror in (False, True) for k in range(4)]
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    if device is not None:
        dev = torch.device(device)
    else:
        dev = param.device if param is not None else torch.device("cpu")
    outs = []
    modes = _eval_mode(net)
    try:
        with torch.no_grad():
            for s in range(0, x_all.shape[0], int(batch_size)):
                x = x_all[s : s + int(batch_size)].to(dev, dtype)
                b = x.shape[0]
                stack = []
                for mirror, k in views:
                    xf, _ = flip(x, None, None, "y", mask=mirror)
                    stack.append(rot90(xf, None, None, k)[0])
                inp = torch.cat(stack)
                if input_transform is not None:
                    inp = input_transform(inp)
                pred = net(inp)
                if pred.shape != (8 * b, 2):
                    raise ValueError(
                        f"{owner}: the network must return (B, 2) (g1, g2), got "
                        f"{tuple(pred.shape)} for B={8 * b}"
                    )
                if normalisation is not None:
                    pred = normalisation.denormalise(pred)
                pred = pred.reshape(8, b, 2)
                dummy = torch.zeros(b, 1, 1, 1, dtype=pred.dtype, device=pred.device)
                total = torch.zeros(b, 2, dtype=pred.dtype, device=pred.device)
                for v, (mirror, k) in enumerate(views):
                    _, g = rot90(dummy, pred[v], rules, -k)  # undo the rotation, then the mirror
                    _, g = flip(dummy, g, rules, "y", mask=mirror)
                    total = total + g
                outs.append((total / 8).cpu())
    finally:
        _restore(modes)
    return torch.cat(outs)


# ============================================================== metrics (Table 4, Figs. 10–12)


def _stats(d: np.ndarray) -> dict[str, Any]:
    """RMS and bias of residuals d (JSON-safe: None for an empty bin)."""
    n = int(d.size)
    if n == 0:
        return {"n": 0, "rms": None, "rms_err": None, "bias": None, "bias_err": None}
    ms = float(np.mean(d * d))
    rms = math.sqrt(ms)
    # δ(mean d²) = sqrt(Var(d²)/n); σ_rms = δ(ms) / (2 rms)
    rms_err = math.sqrt(float(np.var(d * d)) / n) / (2 * rms) if rms > 0 and n > 1 else None
    bias_err = float(np.std(d, ddof=1)) / math.sqrt(n) if n > 1 else None
    return {"n": n, "rms": rms, "rms_err": rms_err, "bias": float(np.mean(d)), "bias_err": bias_err}


def _binned(
    resid: np.ndarray, key: np.ndarray, edges: np.ndarray, components: Sequence[int]
) -> dict[str, Any]:
    """Per-bin stats of residual columns ``components`` by ``key`` ([lo, hi), last closed)."""
    out: dict[str, Any] = {
        "edges": edges.tolist(),
        "centre": (0.5 * (edges[1:] + edges[:-1])).tolist(),
    }
    per: dict[int, list[dict[str, Any]]] = {i: [] for i in components}
    for b in range(len(edges) - 1):
        hi_ok = key <= edges[b + 1] if b == len(edges) - 2 else key < edges[b + 1]
        sel = (key >= edges[b]) & hi_ok
        for i in components:
            per[i].append(_stats(resid[sel, i]))
    for i in components:
        for name in ("n", "rms", "rms_err", "bias", "bias_err"):
            out[f"{name}_{i + 1}"] = [s[name] for s in per[i]]
    if len(components) == 2:  # the figures' "average of the two shear components"
        out["rms"] = [
            None if a is None or c is None else 0.5 * (a + c)
            for a, c in zip(out["rms_1"], out["rms_2"], strict=True)
        ]
    return out


def _edges(values: np.ndarray, edges: Any, n_bins: int, name: str) -> np.ndarray:
    if edges is None:
        e = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1))  # equal-count bins
    else:
        e = np.asarray(edges, dtype=np.float64).reshape(-1)
    if e.size < 2 or not np.isfinite(e).all() or not (np.diff(e) > 0).all():
        raise ValueError(f"shear_metrics: {name} edges must be >= 2 increasing values, got {e}")
    return e


def shear_metrics(
    g_est: Any,
    g_true: Any,
    *,
    ok: Any = None,
    calibration: AffineCalibration | str | None = "fit",
    magnitude: Any = None,
    misalignment: Any = None,
    shear_edges: Any = None,
    magnitude_edges: Any = None,
    misalignment_edges: Any = None,
    n_shear_bins: int = 16,
    n_bins: int = 5,
) -> dict[str, Any]:
    """Table 4 statistics and the binned RMS / bias of Figs. 10–12 for one estimator.

    Parameters
    ----------
    g_est : array ``(N, 2)``
        Uncalibrated estimates g̃ (NaN allowed where ``ok`` is False).
    g_true : array ``(N, 2)``
        True reduced shears.
    ok : bool array ``(N,)``, optional
        Successful measurements (failed rows are excluded and counted).
    calibration : "fit", AffineCalibration or None
        ``"fit"``: fit m, c on these rows (the paper's eq. 17 on the test set itself);
        an :class:`AffineCalibration` fitted elsewhere; None: no calibration (m = c = 0).
    magnitude, misalignment : array ``(N,)``, optional
        Per-stamp magnitude (Fig. 10) and centroid misalignment (Fig. 11, e.g. in units of the
        half-light radius); each gives a binned section.
    shear_edges, magnitude_edges, misalignment_edges : array, optional
        Bin edges; default ``n_shear_bins`` equal-width bins over the true-shear range and
        ``n_bins`` equal-count bins of magnitude / misalignment.
    n_shear_bins, n_bins : int
        Default numbers of bins (paper: 16 shear bins, 5 magnitude bins).

    Returns
    -------
    dict
        JSON-able: ``n``, ``n_failed``, ``failure_fraction``; ``m``, ``c``, ``m_err``,
        ``c_err`` (the calibration fitted on these rows, always reported) and
        ``calibration`` (the one applied); ``sigma``, ``sigma_err`` (σ_i of eq. 15 after
        calibration), ``sigma_mean``, ``bias`` (mean residual per component after
        calibration); ``vs_true_shear`` = ``{"g1": bins, "g2": bins}`` where bins holds
        ``edges``, ``centre`` and per-bin ``n_k, rms_k, rms_err_k, bias_k, bias_err_k`` of
        component k binned by its own true value (Fig. 12); ``vs_magnitude`` and
        ``vs_misalignment`` with both components and their average ``rms`` (Figs. 10–11).
        Empty bins hold None.
    """
    owner = "shear_metrics"
    ge = _as_2col(g_est, "g_est", owner)
    gt = _as_2col(g_true, "g_true", owner)
    if ge.shape != gt.shape:
        raise ValueError(f"{owner}: g_est {ge.shape} and g_true {gt.shape} differ in shape")
    n_all = ge.shape[0]
    use = _mask(ok, n_all, owner)
    extra = {}
    for name, arr in (("magnitude", magnitude), ("misalignment", misalignment)):
        if arr is not None:
            a = np.asarray(arr, dtype=np.float64).reshape(-1)
            if a.shape != (n_all,):
                raise ValueError(f"{owner}: {name!r} must have N={n_all} values, got {a.shape}")
            if not np.isfinite(a[use]).all():
                raise ValueError(f"{owner}: {name!r} has NaN/inf in the rows used")
            extra[name] = a[use]
    ge, gt = ge[use], gt[use]
    fitted = fit_affine(ge, gt)
    if isinstance(calibration, str):
        if calibration != "fit":
            raise ValueError(f"{owner}: calibration must be 'fit', an AffineCalibration or None")
        cal = fitted
    elif calibration is None:
        cal = AffineCalibration(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), 0)
    elif isinstance(calibration, AffineCalibration):
        cal = calibration
    else:
        raise ValueError(f"{owner}: calibration must be 'fit', an AffineCalibration or None")
    resid = cal.apply(ge) - gt
    overall = [_stats(resid[:, i]) for i in range(2)]
    out: dict[str, Any] = {
        "n": int(ge.shape[0]),
        "n_failed": int(n_all - ge.shape[0]),
        "failure_fraction": float(1 - ge.shape[0] / n_all),
        "m": fitted.m.tolist(),
        "c": fitted.c.tolist(),
        "m_err": fitted.m_err.tolist(),
        "c_err": fitted.c_err.tolist(),
        "calibration": cal.to_dict(),
        "sigma": [s["rms"] for s in overall],
        "sigma_err": [s["rms_err"] for s in overall],
        "sigma_mean": 0.5 * (overall[0]["rms"] + overall[1]["rms"]),
        "bias": [s["bias"] for s in overall],
    }
    if shear_edges is None:  # equal-width bins over the true-shear range (Fig. 12)
        shear_edges = np.linspace(float(gt.min()), float(gt.max()), int(n_shear_bins) + 1)
    e_shear = _edges(gt, shear_edges, n_shear_bins, "shear")
    out["vs_true_shear"] = {f"g{i + 1}": _binned(resid, gt[:, i], e_shear, [i]) for i in range(2)}
    for name, edges in (("magnitude", magnitude_edges), ("misalignment", misalignment_edges)):
        if name in extra:
            out[f"vs_{name}"] = _binned(
                resid, extra[name], _edges(extra[name], edges, n_bins, name), [0, 1]
            )
    return out
