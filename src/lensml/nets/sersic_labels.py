"""Sérsic labels as GaLNet regresses them, and back.

GaLNet (Li et al. 2022) regresses the seven Sérsic parameters ``x, y, mag, R_eff, q, PA, n``.
Two of them are awkward as raw regression targets, so the networks of
:mod:`lensml.nets.galnet` predict eight encoded labels instead
(:data:`SERSIC_LABEL_NAMES`):

``x, y, mag, log10_reff, q, cos2pa, sin2pa, n``

* ``log10_reff = log10(R_eff / arcsec)``: the paper's prior on R_eff is log-normal, and a
  relative error is what matters for a size.
* ``(cos 2PA, sin 2PA)``: PA is an axis, defined modulo 180°; as a spin-2 pair PA = 0° and
  PA = 180° are the same point, so the network is never asked to jump between them. The paper
  (§3.1, Table 2) traces most of its PA outliers to exactly that wrap.

:func:`encode_sersic_labels` turns the seven parameters into the eight labels;
:func:`decode_sersic_outputs` turns network predictions (eight means, optionally followed by
eight standard deviations or log-variances) back into the parameters with propagated
uncertainties. Positions are in arcsec, PA in degrees (the convention of the ``sersic``
generator's labels; counter-clockwise from +x as in :mod:`lensml.physics`), ``mag`` in
magnitudes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "SERSIC_LABEL_NAMES",
    "SERSIC_PARAM_NAMES",
    "decode_sersic_outputs",
    "encode_sersic_labels",
]

#: The seven Sérsic parameters (input of :func:`encode_sersic_labels`, in this column order).
SERSIC_PARAM_NAMES: tuple[str, ...] = ("x", "y", "mag", "r_eff", "q", "pa", "n")
#: The eight encoded labels the GaLNet presets regress (in this column order).
SERSIC_LABEL_NAMES: tuple[str, ...] = (
    "x",
    "y",
    "mag",
    "log10_reff",
    "q",
    "cos2pa",
    "sin2pa",
    "n",
)
#: Standard deviation (degrees) of a PA uniform on [0°, 180°): the cap on the propagated σ_PA.
PA_SIGMA_MAX_DEG = 180.0 / math.sqrt(12.0)
_LN10 = math.log(10.0)


def _as_2d(values: Any, name: str, widths: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """``values`` as a floating 2-d tensor with one of ``widths`` columns, and "was numpy"."""
    was_numpy = not isinstance(values, torch.Tensor)
    try:
        t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers ({err})") from None
    shapes = " or ".join(f"(N, {w})" for w in widths)
    if t.ndim != 2 or t.shape[1] not in widths:
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t, was_numpy


def _out(t: torch.Tensor, as_numpy: bool) -> Any:
    return t.detach().cpu().numpy() if as_numpy else t


def encode_sersic_labels(labels: Any) -> Any:
    """Seven Sérsic parameters → the eight labels GaLNet regresses.

    Parameters
    ----------
    labels : array or Tensor, shape (N, 7)
        Columns :data:`SERSIC_PARAM_NAMES`: ``x, y`` (arcsec), ``mag``, ``r_eff`` (arcsec,
        semi-major-axis effective radius, > 0), ``q`` (axis ratio), ``pa`` (degrees, any value;
        only PA mod 180° matters), ``n`` (Sérsic index).

    Returns
    -------
    array or Tensor, shape (N, 8)
        Columns :data:`SERSIC_LABEL_NAMES`: ``x, y, mag, log10(r_eff), q, cos 2PA, sin 2PA, n``;
        same type (numpy or torch) and floating dtype as the input.

    Raises
    ------
    ValueError
        For a wrong shape, NaN/inf values or ``r_eff <= 0``.
    """
    t, as_numpy = _as_2d(labels, "labels", (7,))
    x, y, mag, r_eff, q, pa, n = t.unbind(dim=1)
    if (r_eff <= 0).any():
        raise ValueError("labels: column 3 (r_eff, arcsec) must be > 0 to take its log10")
    two_pa = torch.deg2rad(2.0 * pa)
    out = torch.stack(
        [x, y, mag, torch.log10(r_eff), q, torch.cos(two_pa), torch.sin(two_pa), n], dim=1
    )
    return _out(out, as_numpy)


def decode_sersic_outputs(pred: Any, spread: Literal["std", "logvar"] = "std") -> dict[str, Any]:
    """Network outputs (label units) → Sérsic parameters, with σ's when the model gives them.

    Parameters
    ----------
    pred : array or Tensor, shape (N, 8) or (N, 16)
        The eight means in :data:`SERSIC_LABEL_NAMES` order, optionally followed by eight
        spreads. These are label units, i.e. what :func:`lensml.train.predict` returns (it
        de-normalises the network output; for ``gaussian_nll`` models it returns the means then
        the standard deviations).
    spread : {"std", "logvar"}
        Meaning of columns 8–15: standard deviations (``predict``'s output, default) or
        log-variances (a raw un-normalised network output).

    Returns
    -------
    dict
        ``x, y, mag, r_eff, log10_reff, q, pa, n`` (each shape (N,), same type as ``pred``);
        ``pa`` in degrees in [0, 180) from ``atan2(sin2pa, cos2pa) / 2``; ``pa_amplitude``
        = sqrt(cos2pa² + sin2pa²) (≈ 1 when the direction is well defined, → 0 for round or
        confused galaxies). For (N, 16) input also ``sigma_<name>`` for each of those eight
        names, with

        * ``sigma_r_eff = ln(10) · r_eff · sigma_log10_reff`` (delta method),
        * ``sigma_pa = (90/π) · sqrt(s² σ_c² + c² σ_s²) / (c² + s²)`` degrees (delta method on
          PA = atan2(s, c)/2, σ_c and σ_s taken independent), capped at 180°/√12 = 51.96°,
          the σ of a PA uniform on [0°, 180°), where the linearisation breaks down (amplitude
          comparable to σ).

    Raises
    ------
    ValueError
        For a wrong shape, an unknown ``spread``, NaN/inf values or negative standard
        deviations.
    """
    if spread not in ("std", "logvar"):
        raise ValueError(f"spread must be 'std' or 'logvar', got {spread!r}")
    t, as_numpy = _as_2d(pred, "pred", (8, 16))
    mu = t[:, :8]
    x, y, mag, log_r, q, c, s, n = mu.unbind(dim=1)
    pa = torch.rad2deg(0.5 * torch.atan2(s, c))
    pa = torch.remainder(pa, 180.0)
    pa = torch.where(pa >= 180.0, pa - 180.0, pa)  # remainder(-tiny, 180) rounds to 180.0
    amp2 = c * c + s * s
    r_eff = torch.pow(torch.full_like(log_r, 10.0), log_r)
    out: dict[str, torch.Tensor] = {
        "x": x,
        "y": y,
        "mag": mag,
        "r_eff": r_eff,
        "log10_reff": log_r,
        "q": q,
        "pa": pa,
        "n": n,
        "pa_amplitude": torch.sqrt(amp2),
    }
    if t.shape[1] == 16:
        second = t[:, 8:]
        if spread == "std":
            if (second < 0).any():
                raise ValueError("pred: columns 8-15 (standard deviations) must be >= 0")
            sig = second
        else:
            sig = torch.exp(0.5 * second.clamp(-60.0, 60.0))
        sx, sy, smag, slog_r, sq, sc, ss, sn = sig.unbind(dim=1)
        tiny = torch.finfo(t.dtype).tiny
        sigma_pa = (90.0 / math.pi) * torch.sqrt(s * s * sc * sc + c * c * ss * ss)
        sigma_pa = sigma_pa / amp2.clamp_min(tiny)
        sigma_pa = torch.where(amp2 > 0, sigma_pa, torch.full_like(sigma_pa, PA_SIGMA_MAX_DEG))
        out.update(
            {
                "sigma_x": sx,
                "sigma_y": sy,
                "sigma_mag": smag,
                "sigma_r_eff": _LN10 * r_eff * slog_r,
                "sigma_log10_reff": slog_r,
                "sigma_q": sq,
                "sigma_pa": sigma_pa.clamp(max=PA_SIGMA_MAX_DEG),
                "sigma_n": sn,
            }
        )
    return {k: _out(v, as_numpy) for k, v in out.items()}
