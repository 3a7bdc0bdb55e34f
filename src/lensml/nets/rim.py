"""The AstroRIM recurrent inference machine and the full network (Walsh et al. §3.1, §3.3.3).

RIM (Putzky & Welling 2017; Morningstar et al. 2019 for lensing)
-----------------------------------------------------------------
The source estimate is refined for T steps (paper: T = 10) from the gradient-like signal of the
observation-conditioned operator (eq. 31):

    g_t = F_φ†(y − F_φ(x_t))                 data-fidelity direction (−∇ ½‖F x − y‖²)
    Δx_t, h_{t+1} = RIM_θ(x_t, g_t, h_t)      two ConvGRU cells in a small U-Net
    x_{t+1} = x_t + Δx_t

starting from the back-projection ``x_0 = F_φ†(y − b_bg)`` (the authors' released code starts
from the adjoint too; the paper does not say) with zero hidden states; the output is x_T
(the paper's loss only looks at x_final). The paper fixes neither the cell nor the widths, only
"~300 k parameters"; lensml's update network, per step, on the source grid Ns × Ns (Ns % 8 = 0):

=====================================  ===================  ==============================
layer                                  output (Ns = 96)     parameters (paper preset)
=====================================  ===================  ==============================
[x_t, g_t]                             2 × 96²              –
Conv3×3/2 + tanh → e1                  16 × 48²             304
Conv3×3/2 + tanh → e2                  32 × 24²             4,640
ConvGRU(32 → 32), 3×3 → s1             32 × 24²             55,392
Conv3×3/2 + tanh → e3                  48 × 12²             13,872
ConvGRU(48 → 64), 3×3 → s2             64 × 12²             193,728
ConvT4×4/2(s2) + s1, tanh              32 × 24²             32,800
ConvT4×4/2 + e1, tanh → d1             16 × 48²             8,208
Conv3×3(d1) → 4, pixel shuffle ×2      1 × 96²              580
+ linear 1×1 skip of [x_t, g_t] → Δx   1 × 96²              3
=====================================  ===================  ==============================

309,527 parameters, about 75 M multiply-adds per step: the recurrent cells work at ¼ and ⅛
resolution and the full-resolution update is a sub-pixel convolution (Shi et al. 2016) from ½
resolution plus a linear skip, which keeps T = 10 steps affordable on a CPU.
ConvGRU (Ballas et al. 2016): z, r = σ(W_zr * [u, h]), n = tanh(W_n * [u, r ⊙ h]),
h' = (1 − z) ⊙ h + z ⊙ n.

AstroRIM (registered ``astrorim``; CPU preset ``astrorim-small``)
-----------------------------------------------------------------
:class:`AstroRIM` composes the :class:`~lensml.nets.astrorim.LensParameterEncoder`, the
:class:`~lensml.nets.astrorim_forward.ConditionalForwardOperator` and the :class:`RIM`.
Each observation is divided by its own maximum |y| (``normalise="max"``; the paper's metrics
and training pairs are per-example normalised) — the operator is linear, so the source is
scaled by the same factor and :meth:`AstroRIM.forward` returns it in the input's units.

Loss (eqs. 43–49), :meth:`AstroRIM.training_loss` on a dict batch with ``image`` (B, 1, H, H)
and ``source`` (B, 1, Ns, Ns) in the same flux units (the ``strong`` generator's store keys):

    L = L_recon + λ_fwd L_forward + λ_PSF L_PSF + λ_param (L_range + L_prior)

* L_recon = ⟨(x_T − x_GT)²⟩ (eq. 44), L_forward = ⟨(F_φ(x_GT; Θ(y)) − y)²⟩ (eq. 45) on the
  normalised images. The paper writes squared L2 norms averaged over the batch; lensml averages
  over pixels too (the MSE the paper reports and its authors' code minimises), which keeps the
  λ weights meaningful for any image size.
* L_PSF: total variation of the residual PSF (eq. 46), λ_PSF = 1e−3.
* L_range = ⟨max(0, −b)² + max(0, b − 0.5)² + x0² + y0² + (γ − 0.05)²⟩ (eq. 48),
  L_prior = ⟨(b − 0.08)² + (q − 0.7)² + (κ_s − 0.05)² + (r_s − 0.2)²⟩ (eq. 49), λ_param = 1e−3.
* λ_fwd = 0.5.
* lensml additions, both off by default (the paper's loss): ``prior`` moves the centres of
  eq. 49 (and the b bound of eq. 48) to a training set's own labels, and ``lambda_label``
  adds a supervised term on the lens parameters (:func:`label_penalty`), which the paper
  learns through L_forward alone — see :func:`lensml.pipelines.strong.train_strong`.

:meth:`AstroRIM.parameter_groups` splits the weights for the paper's optimiser (§3.3.4): the RIM
(learning rate × 1) and the forward operator including the encoder (× 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensml.nets.astrorim import (
    PARAM_NAMES,
    LensParameterEncoder,
    dihedral_copies,
    dihedral_mean,
    dihedral_params,
    labels_to_params,
    symmetrised_params,
)
from lensml.nets.astrorim_forward import ConditionalForwardOperator, LensGeometry
from lensml.nets.blocks import check_float, check_int, check_int_list
from lensml.registry import NETWORKS

__all__ = [
    "LABEL_SCALES",
    "PAPER_PRIOR",
    "RIM",
    "AstroRIM",
    "AstroRIMSmall",
    "ConvGRUCell",
    "label_penalty",
    "parameter_penalty",
]


class ConvGRUCell(nn.Module):
    """Convolutional GRU: ``h' = (1 − z) h + z tanh(W_n * [u, r h])``, z, r = σ(W_zr * [u, h]).

    Parameters
    ----------
    in_channels, hidden : int
        Channels of the input u and of the state h.
    kernel_size : int
        Odd kernel side of both convolutions ("same" padding).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 2 * hidden, kernel_size, padding=pad)
        self.candidate = nn.Conv2d(in_channels + hidden, hidden, kernel_size, padding=pad)

    def forward(self, u: Tensor, h: Tensor) -> Tensor:
        """One update of the state ``h`` ``(B, hidden, H, W)`` from ``u`` ``(B, in, H, W)``."""
        z, r = torch.sigmoid(self.gates(torch.cat([u, h], dim=1))).chunk(2, dim=1)
        n = torch.tanh(self.candidate(torch.cat([u, r * h], dim=1)))
        return h + z * (n - h)


class RIM(nn.Module):
    """Recurrent inference machine on an ``Ns × Ns`` source grid (module docstring).

    Parameters
    ----------
    features : list of 3 int
        Channels after the three stride-2 convolutions (16, 32, 48).
    hidden : list of 2 int
        ConvGRU state channels at Ns/4 and Ns/8 (32, 64).
    steps : int
        Default number of iterations T (10).
    """

    def __init__(
        self,
        features: Sequence[int] = (16, 32, 48),
        hidden: Sequence[int] = (32, 64),
        steps: int = 10,
    ) -> None:
        super().__init__()
        f1, f2, f3 = features
        h1, h2 = hidden
        self.steps = steps
        self.hidden = (h1, h2)
        self.down1 = nn.Conv2d(2, f1, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(f1, f2, 3, stride=2, padding=1)
        self.gru1 = ConvGRUCell(f2, h1)
        self.down3 = nn.Conv2d(h1, f3, 3, stride=2, padding=1)
        self.gru2 = ConvGRUCell(f3, h2)
        self.up3 = nn.ConvTranspose2d(h2, h1, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(h1, f1, 4, stride=2, padding=1)
        self.head = nn.Conv2d(f1, 4, 3, padding=1)  # 4 = 2 × 2 sub-pixels (pixel shuffle)
        self.skip = nn.Conv2d(2, 1, 1)  # evaluated as a weighted sum (see step)

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Zero hidden states for a source batch ``x`` ``(B, 1, Ns, Ns)``."""
        b, _, n, _ = x.shape
        h1, h2 = self.hidden
        return x.new_zeros(b, h1, n // 4, n // 4), x.new_zeros(b, h2, n // 8, n // 8)

    def step(
        self, x: Tensor, grad: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One update: ``(x_t, g_t, h_t) → (Δx_t, h_{t+1})``."""
        u = torch.cat([x, grad.to(x.dtype)], dim=1)
        e1 = torch.tanh(self.down1(u))
        e2 = torch.tanh(self.down2(e1))
        s1 = self.gru1(e2, state[0])
        e3 = torch.tanh(self.down3(s1))
        s2 = self.gru2(e3, state[1])
        d2 = torch.tanh(self.up3(s2) + s1)
        d1 = torch.tanh(self.up2(d2) + e1)
        w, b = self.skip.weight, self.skip.bias
        # the 1×1 skip on [x_t, g_t] as two multiply-adds: oneDNN's 2 → 1 convolution is ~50×
        # slower than this on a CPU
        skip = torch.addcmul(b.reshape(1, 1, 1, 1) + x * w[:, :1], u[:, 1:], w[:, 1:])
        return F.pixel_shuffle(self.head(d1), 2) + skip, (s1, s2)

    def forward(
        self,
        y: Tensor,
        forward_fn: Callable[[Tensor], Tensor],
        adjoint_fn: Callable[[Tensor], Tensor],
        x0: Tensor,
        steps: int | None = None,
        return_all: bool = False,
    ) -> Tensor | list[Tensor]:
        """Run T iterations from ``x0``.

        Parameters
        ----------
        y : Tensor
            Observation ``(B, 1, H, H)``.
        forward_fn : callable
            Source → model image (F_φ including the background).
        adjoint_fn : callable
            Image residual → source-plane signal (F_φ†).
        x0 : Tensor
            Initial source ``(B, 1, Ns, Ns)``.
        steps : int, optional
            T (default ``self.steps``).
        return_all : bool
            Return the list ``[x_1, …, x_T]`` instead of ``x_T``.
        """
        n = self.steps if steps is None else int(steps)
        if n < 1:
            raise ValueError(f"RIM: steps must be >= 1, got {steps!r}")
        if x0.shape[-1] % 8 or x0.shape[-2] % 8:
            raise ValueError(f"RIM: source side must be a multiple of 8; got {tuple(x0.shape)}")
        x, state = x0, self.initial_state(x0)
        xs: list[Tensor] = []
        for _ in range(n):
            grad = adjoint_fn(y - forward_fn(x))
            dx, state = self.step(x, grad, state)
            x = x + dx.to(x.dtype)
            xs.append(x)
        return xs if return_all else x


#: Prior centres of eq. 49 (normalised units) and the upper bound of b in eq. 48.
PAPER_PRIOR = {"b": 0.08, "q": 0.7, "kappa_s": 0.05, "r_s": 0.2, "gamma": 0.05, "b_max": 0.5}


def parameter_penalty(
    params: Mapping[str, Tensor], prior: Mapping[str, float] | None = None
) -> tuple[Tensor, Tensor]:
    """``(L_range, L_prior)`` of eqs. 48–49, batch means (normalised units).

    ``prior`` overrides entries of :data:`PAPER_PRIOR` (the centres of b, q, κ_s, r_s and γ,
    and ``b_max``): the paper's values suit its b ≤ 0.3 range; a training set with larger
    Einstein radii needs centres taken from its own labels, or the prior drags every b
    towards 0.08 (see :func:`lensml.pipelines.strong.prior_centres`).
    """
    c = {**PAPER_PRIOR, **dict(prior or {})}
    b, q = params["b"], params["q"]
    x0, y0, gamma = params["x0"], params["y0"], params["gamma"]
    k_s, r_s = params["kappa_s"], params["r_s"]
    rng = (
        torch.relu(-b) ** 2
        + torch.relu(b - c["b_max"]) ** 2
        + x0**2
        + y0**2
        + (gamma - c["gamma"]) ** 2
    )
    prior_t = (b - c["b"]) ** 2 + (q - c["q"]) ** 2 + (k_s - c["kappa_s"]) ** 2
    prior_t = prior_t + (r_s - c["r_s"]) ** 2
    return rng.mean(), prior_t.mean()


#: Scales (normalised units) of the supervised lens-parameter residuals of
#: :func:`label_penalty`: 5 % in θ_E, 0.05 in q, in the ellipticity (1 − q)/(1 + q) and in the
#: shear, half a pixel of a 96-pixel image in the centre each count as 1; 0.1 rad outside
#: [−π/2, π/2] for an axis angle (see :func:`label_penalty`).
LABEL_SCALES = {
    "log_b": 0.05,
    "q": 0.05,
    "e": 0.05,
    "centre": 1.0 / 96.0,
    "gamma": 0.05,
    "angle_period": 0.1,
}


def label_penalty(params: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> Tensor:
    """Supervised lens-parameter loss (a lensml addition to eq. 43; batch mean).

    Squared residuals, each divided by its :data:`LABEL_SCALES` entry, of log b, q, the centre
    (x0, y0), γ, and the two axis angles through ``2 e_true sin(φ − φ_true)`` and
    ``2 γ_true sin(γ_φ − γ_φ,true)`` (e = (1 − q)/(1 + q)): the distance between the true
    ellipticity (shear) vector and the same vector turned to the predicted angle, which is
    π-periodic and weighs an angle by how well the truth defines it. Magnitudes and angles are
    penalised separately on purpose: a Cartesian (e1, e2) residual lets a network that has
    not yet found the angle lower its loss by predicting a round lens, and the bounded heads
    of eqs. 14–15 then saturate at q = 1, γ = 0 and stop learning. The axis angles are
    π-periodic, so a term keeps φ and γ_φ inside [−π/2, π/2] (one period, where the tanh head
    is not saturated; Adam otherwise drifts a not-yet-learned angle to ±π, where its gradient
    vanishes). The NFW halo is left to the
    forward-fidelity term (absent from most systems). ``target`` holds the true parameters in
    the same normalised units (:func:`lensml.nets.astrorim.labels_to_params`).
    """
    s = LABEL_SCALES
    tiny = 1e-6
    d_b = torch.log(params["b"].clamp_min(tiny)) - torch.log(target["b"].clamp_min(tiny))
    e_true = (1 - target["q"]) / (1 + target["q"])
    d_phi = 2 * e_true * torch.sin(params["phi"] - target["phi"])
    d_gphi = 2 * target["gamma"] * torch.sin(params["gamma_phi"] - target["gamma_phi"])
    terms = (
        (d_b / s["log_b"]) ** 2
        + ((params["q"] - target["q"]) / s["q"]) ** 2
        + (d_phi / s["e"]) ** 2
        + ((params["x0"] - target["x0"]) ** 2 + (params["y0"] - target["y0"]) ** 2)
        / s["centre"] ** 2
        + ((params["gamma"] - target["gamma"]) / s["gamma"]) ** 2
        + (d_gphi / s["gamma"]) ** 2
    )
    half_pi = 0.5 * math.pi
    wrap = torch.relu(params["phi"].abs() - half_pi) ** 2
    wrap = wrap + torch.relu(params["gamma_phi"].abs() - half_pi) ** 2
    return terms.mean() / 7.0 + (wrap / s["angle_period"] ** 2).mean()


def _check_list(name: str, key: str, value: Any, n: int) -> list[int]:
    out = check_int_list(name, key, list(value) if isinstance(value, tuple) else value)
    if len(out) != n:
        raise ValueError(f"{name}: {key} must list {n} integers, got {value!r}")
    return out


def _check_bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {key} must be true or false, got {value!r}")
    return value


@NETWORKS.register("astrorim")
class AstroRIM(nn.Module):
    """Encoder + conditional forward operator + RIM, with the paper's loss (module docstring).

    Parameters
    ----------
    image_size : int
        Observation side H (96).
    source_size : int
        Source grid side Ns, a multiple of 8 (96).
    source_fov : float
        Source-grid half-side in units of the image's (1).
    steps : int
        RIM iterations T (10).
    encoder_channels, encoder_fc : list of int
        Encoder stage channels (32, 64, 96, 128) and FC widths (128, 64).
    encoder_groups, pool_size : int
        GroupNorm groups (8) and adaptive-pool side (8).
    rim_features, rim_hidden : list of int
        RIM stride-2 conv channels (16, 32, 48) and ConvGRU states (32, 64).
    psf_size : int
        Learned PSF side, odd (21).
    fwhm, beta, background : float
        Initial Moffat FWHM (pixels, 3.0), β (4.5) and background (1e−3, normalised units).
    core : float
        SIE core radius, normalised units (0.01).
    use_nfw : bool
        Include the NFW halo in the operator.
    supersample : int
        Warp sub-pixels per pixel side (1).
    ranges : mapping, optional
        Encoder range overrides (see :data:`lensml.nets.astrorim.PAPER_RANGES`).
    lambda_fwd, lambda_psf, lambda_param : float
        Loss weights (0.5, 1e−3, 1e−3).
    lambda_label : float
        Weight of the supervised lens-parameter term (:func:`label_penalty`; 0, the paper's
        loss). When > 0 the training batch must carry ``labels`` ``(B, 9)`` in the
        ``strong`` generator's units and ``pixel_scale`` ``(B,)`` (arcsec).
    prior : mapping, optional
        Overrides of the eq. 48–49 prior centres and ``b_max`` (:data:`PAPER_PRIOR`).
    encoder_lr_scale : float
        Learning-rate factor of the encoder relative to the RIM (paper 0.1, with the forward
        operator; see :meth:`parameter_groups`).
    normalise : {"max", "none"}
        Divide each observation (and its source) by max |y| before the networks.
    use_batch_psf : bool
        In :meth:`training_loss`, convolve with the batch's ``psf`` instead of the learned PSF.
    subtract_lens_light : bool
        In :meth:`training_loss`, subtract the batch's ``lens_light`` from ``image`` (the
        operator has no lens light; the paper leaves it in).
    """

    preset: ClassVar[dict[str, Any]] = {
        "image_size": 96,
        "source_size": 96,
        "steps": 10,
        "encoder_channels": [32, 64, 96, 128],
        "encoder_fc": [128, 64],
        "encoder_groups": 8,
        "pool_size": 8,
        "rim_features": [16, 32, 48],
        "rim_hidden": [32, 64],
        "psf_size": 21,
    }
    display_name: ClassVar[str] = "astrorim"

    def __init__(
        self,
        image_size: int | None = None,
        source_size: int | None = None,
        source_fov: float = 1.0,
        steps: int | None = None,
        encoder_channels: list[int] | None = None,
        encoder_fc: list[int] | None = None,
        encoder_groups: int | None = None,
        pool_size: int | None = None,
        rim_features: list[int] | None = None,
        rim_hidden: list[int] | None = None,
        psf_size: int | None = None,
        fwhm: float = 3.0,
        beta: float = 4.5,
        background: float = 1e-3,
        core: float = 0.01,
        use_nfw: bool = True,
        supersample: int = 1,
        ranges: dict[str, list[float]] | None = None,
        lambda_fwd: float = 0.5,
        lambda_psf: float = 1e-3,
        lambda_param: float = 1e-3,
        lambda_label: float = 0.0,
        prior: dict[str, float] | None = None,
        encoder_lr_scale: float = 0.1,
        normalise: str = "max",
        use_batch_psf: bool = False,
        subtract_lens_light: bool = False,
    ) -> None:
        super().__init__()
        name, p = self.display_name, self.preset

        def pick(value: Any, key: str) -> Any:
            return p[key] if value is None else value

        image_size = check_int(name, "image_size", pick(image_size, "image_size"), lo=16)
        source_size = check_int(name, "source_size", pick(source_size, "source_size"), lo=8)
        if source_size % 8:
            raise ValueError(f"{name}: source_size must be a multiple of 8, got {source_size}")
        steps = check_int(name, "steps", pick(steps, "steps"))
        enc_ch = check_int_list(
            name, "encoder_channels", pick(encoder_channels, "encoder_channels")
        )
        enc_fc = check_int_list(name, "encoder_fc", pick(encoder_fc, "encoder_fc"))
        groups = check_int(name, "encoder_groups", pick(encoder_groups, "encoder_groups"))
        pool = check_int(name, "pool_size", pick(pool_size, "pool_size"))
        feats = _check_list(name, "rim_features", pick(rim_features, "rim_features"), 3)
        hidden = _check_list(name, "rim_hidden", pick(rim_hidden, "rim_hidden"), 2)
        psf_size = check_int(name, "psf_size", pick(psf_size, "psf_size"), lo=3)
        lam = {
            "lambda_fwd": check_float(name, "lambda_fwd", lambda_fwd, 0.0, 1e6),
            "lambda_psf": check_float(name, "lambda_psf", lambda_psf, 0.0, 1e6),
            "lambda_param": check_float(name, "lambda_param", lambda_param, 0.0, 1e6),
            "lambda_label": check_float(name, "lambda_label", lambda_label, 0.0, 1e6),
        }
        self.encoder_lr_scale = check_float(name, "encoder_lr_scale", encoder_lr_scale, 1e-6, 1e3)
        prior_d: dict[str, float] = {}
        if prior is not None:
            if not isinstance(prior, Mapping):
                raise ValueError(f"{name}: prior must be a mapping, got {prior!r}")
            for key, value in prior.items():
                if key not in PAPER_PRIOR:
                    raise ValueError(
                        f"{name}: prior key {key!r} is not one of {sorted(PAPER_PRIOR)}"
                    )
                prior_d[key] = check_float(name, f"prior.{key}", value, -1e3, 1e3)
        if normalise not in ("max", "none"):
            raise ValueError(f"{name}: normalise must be 'max' or 'none', got {normalise!r}")
        use_batch_psf = _check_bool(name, "use_batch_psf", use_batch_psf)
        subtract_lens_light = _check_bool(name, "subtract_lens_light", subtract_lens_light)
        if image_size < 2 ** len(enc_ch):
            raise ValueError(f"{name}: image_size must be >= {2 ** len(enc_ch)} for the encoder")
        self.config: dict[str, Any] = {
            "image_size": image_size,
            "source_size": source_size,
            "source_fov": float(source_fov),
            "steps": steps,
            "encoder_channels": enc_ch,
            "encoder_fc": enc_fc,
            "encoder_groups": groups,
            "pool_size": pool,
            "rim_features": feats,
            "rim_hidden": hidden,
            "psf_size": psf_size,
            "fwhm": float(fwhm),
            "beta": float(beta),
            "background": float(background),
            "core": float(core),
            "use_nfw": use_nfw,
            "supersample": supersample,
            "ranges": None if ranges is None else {k: list(v) for k, v in ranges.items()},
            **lam,
            "prior": prior_d or None,
            "encoder_lr_scale": self.encoder_lr_scale,
            "normalise": normalise,
            "use_batch_psf": use_batch_psf,
            "subtract_lens_light": subtract_lens_light,
        }
        self.image_size, self.source_size = image_size, source_size
        self.lambdas = lam
        self.prior = prior_d
        self.normalise, self.use_batch_psf = normalise, use_batch_psf
        self.subtract_lens_light = subtract_lens_light
        self.encoder = LensParameterEncoder(1, enc_ch, groups, pool, enc_fc, ranges=ranges)
        self.operator = ConditionalForwardOperator(
            image_size=image_size,
            source_size=source_size,
            source_fov=source_fov,
            psf_size=psf_size,
            fwhm=fwhm,
            beta=beta,
            background=background,
            core=core,
            use_nfw=use_nfw,
            supersample=supersample,
        )
        self.rim = RIM(feats, hidden, steps)

    # ------------------------------------------------------------------ helpers
    def _check(self, t: Any, key: str, side: int) -> Tensor:
        expected = f"(B, 1, {side}, {side})"
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{self.display_name}: {key!r} must be a floating {expected}; got {shape}"
            )
        if t.shape[1] != 1 or tuple(t.shape[-2:]) != (side, side) or t.shape[0] < 1:
            raise ValueError(
                f"{self.display_name}: {key!r} must be {expected}; got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{self.display_name}: {key!r} contains NaN or inf values")
        return t

    def _scale(self, y: Tensor) -> Tensor:
        if self.normalise == "none":
            return torch.ones(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device)
        tiny = torch.finfo(y.dtype).tiny
        return y.detach().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(tiny)

    def reconstruct(
        self,
        y: Tensor,
        psf: Tensor | None = None,
        steps: int | None = None,
        return_all: bool = False,
        symmetrise: bool = False,
    ) -> dict[str, Any]:
        """Encoder + RIM on an already normalised observation ``y`` ``(B, 1, H, H)``.

        With ``symmetrise`` the reconstruction is averaged over the eight mirrored and
        turned copies of ``y`` (lensing commutes with them): the lens parameters are the
        encoder's equivariant mean (:func:`lensml.nets.astrorim.symmetrised_params`), the
        RIM runs on every copy with those parameters carried into the copy's frame, and the
        eight sources are turned back and averaged — the same construction as the shear
        estimator's eq. 14. The result is exactly equivariant; it costs eight encoder and
        eight RIM passes (one batch of 8 B).

        Returns a dict with ``params`` (nine ``(B,)`` tensors), ``geometry``
        (:class:`LensGeometry`), ``source`` (x_T) and, with ``return_all``, ``steps``
        (``[x_1, …, x_T]``).
        """
        if symmetrise:
            params = symmetrised_params(self.encoder, y)
            # each copy is seen through the turned / mirrored PSF (the learned one included)
            if psf is None:
                psf = self.operator.psf_kernel(torch.promote_types(y.dtype, torch.float32))
            psf_c = dihedral_copies(psf)
            if psf.shape[0] == 1:  # one PSF for the batch: its copies, per item
                psf_c = psf_c.repeat_interleave(y.shape[0], dim=0)
            res = self._run_rim(dihedral_copies(y), dihedral_params(params), psf_c, steps,
                                return_all)  # fmt: skip
            out = [dihedral_mean(x) for x in res] if return_all else dihedral_mean(res)
            result: dict[str, Any] = {"params": params, "geometry": self.operator.geometry(params)}
        else:
            params = self.encoder(y)
            result = {"params": params, "geometry": self.operator.geometry(params)}
            out = self._run_rim(y, params, psf, steps, return_all, result["geometry"])
        if return_all:
            result["steps"], result["source"] = out, out[-1]
        else:
            result["source"] = out
        return result

    def _run_rim(
        self,
        y: Tensor,
        params: Mapping[str, Tensor],
        psf: Tensor | None,
        steps: int | None,
        return_all: bool,
        geom: LensGeometry | None = None,
    ) -> Any:
        """The RIM on ``y`` with the lens fixed by ``params`` (x_T, or every x_t)."""
        geom = self.operator.geometry(params) if geom is None else geom
        op = self.operator

        def fwd(x: Tensor) -> Tensor:
            return op(x, geom, psf)

        def adj(r: Tensor) -> Tensor:
            return op.adjoint(r, geom, psf)

        x0 = adj(y - op.background.to(y.dtype))
        return self.rim(y, fwd, adj, x0.to(y.dtype), steps, return_all)

    def forward(
        self, image: Tensor, psf: Tensor | None = None, symmetrise: bool = False
    ) -> dict[str, Any]:
        """Reconstruct the source of each observation.

        Parameters
        ----------
        image : Tensor
            ``(B, 1, H, H)`` observations (any flux unit; sky-subtracted).
        psf : Tensor, optional
            ``(B|1, 1, K, K)`` PSF to use instead of the learned global one.
        symmetrise : bool
            Average the reconstruction (lens parameters and source) over the image's eight
            mirrors and quarter turns (:meth:`reconstruct`; 8× the time).

        Returns
        -------
        dict
            ``source`` ``(B, 1, Ns, Ns)`` (flux per source pixel, units of ``image``),
            ``params`` (the nine ``(B,)`` lens parameters, normalised units) and
            ``model_image`` ``F_φ(source) + b_bg`` ``(B, 1, H, H)`` in the units of ``image``.
        """
        y = self._check(image, "image", self.image_size)
        scale = self._scale(y)
        res = self.reconstruct(y / scale, psf, symmetrise=symmetrise)
        model = self.operator(res["source"], res["geometry"], psf)
        return {
            "source": res["source"] * scale,
            "params": res["params"],
            "model_image": model * scale,
        }

    # ------------------------------------------------------------------ loss
    def loss_terms(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each term of eq. 43 (``recon``, ``forward``, ``psf``, ``range``, ``prior``), ``total``.

        ``batch`` holds ``image`` ``(B, 1, H, H)`` and ``source`` ``(B, 1, Ns, Ns)``; ``psf`` and
        ``lens_light`` are read when ``use_batch_psf`` / ``subtract_lens_light`` are set.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"{self.display_name}: training batch must be a dict with keys 'image' and 'source'"
            )
        for key in ("image", "source"):
            if key not in batch:
                raise ValueError(f"{self.display_name}: training batch lacks {key!r}")
        y = self._check(batch["image"], "image", self.image_size)
        x_gt = self._check(batch["source"], "source", self.source_size).to(y.dtype)
        if self.subtract_lens_light:
            if "lens_light" not in batch:
                raise ValueError(f"{self.display_name}: subtract_lens_light needs 'lens_light'")
            y = y - self._check(batch["lens_light"], "lens_light", self.image_size).to(y.dtype)
        psf = None
        if self.use_batch_psf:
            if "psf" not in batch:
                raise ValueError(f"{self.display_name}: use_batch_psf needs 'psf' in the batch")
            psf = batch["psf"]
        scale = self._scale(y)
        y, x_gt = y / scale, x_gt / scale
        res = self.reconstruct(y, psf)
        recon = ((res["source"] - x_gt) ** 2).mean()
        fwd = ((self.operator(x_gt, res["geometry"], psf) - y) ** 2).mean()
        tv = self.operator.psf_tv()
        rng, prior = parameter_penalty(res["params"], self.prior)
        lam = self.lambdas
        total = (
            recon
            + lam["lambda_fwd"] * fwd
            + lam["lambda_psf"] * tv
            + lam["lambda_param"] * (rng + prior)
        )
        out = {"recon": recon, "forward": fwd, "psf": tv, "range": rng, "prior": prior}
        if lam["lambda_label"] > 0:
            out["label"] = label_penalty(res["params"], self._label_targets(batch, y))
            total = total + lam["lambda_label"] * out["label"]
        out["total"] = total
        return out

    def _label_targets(self, batch: Mapping[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        """True parameters (normalised units) from the batch's ``labels`` and ``pixel_scale``."""
        for key in ("labels", "pixel_scale"):
            if key not in batch:
                raise ValueError(
                    f"{self.display_name}: lambda_label > 0 needs {key!r} in the batch"
                )
        labels = batch["labels"]
        if not isinstance(labels, Tensor) or labels.ndim != 2 or labels.shape != (y.shape[0], 9):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(
                f"{self.display_name}: 'labels' must be ({y.shape[0]}, 9) {PARAM_NAMES}; "
                f"got {shape}"
            )
        scale = torch.as_tensor(batch["pixel_scale"], dtype=y.dtype, device=y.device)
        half = scale.reshape(-1) * (self.image_size / 2.0)
        return labels_to_params(labels.to(y.dtype), half)

    def training_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Eq. 43 on a dict batch (see :meth:`loss_terms`); a scalar for the engine."""
        return self.loss_terms(batch)["total"]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups of §3.3.4: ``rim`` (``lr_scale`` 1) and ``forward`` (encoder + PSF
        + background, ``lr_scale`` 0.1); every parameter is in exactly one group. With an
        ``encoder_lr_scale`` other than the paper's 0.1 the encoder gets a group of its own."""
        groups = [
            {"name": "rim", "params": list(self.rim.parameters()), "lr_scale": 1.0},
            {"name": "forward", "params": list(self.operator.parameters()), "lr_scale": 0.1},
        ]
        enc = list(self.encoder.parameters())
        if self.encoder_lr_scale == 0.1:
            groups[1]["params"] = enc + groups[1]["params"]
        else:
            groups.append({"name": "encoder", "params": enc, "lr_scale": self.encoder_lr_scale})
        return groups

    def param_names(self) -> tuple[str, ...]:
        """Names of the nine lens parameters, in :data:`lensml.nets.astrorim.PARAM_NAMES` order."""
        return PARAM_NAMES


@NETWORKS.register("astrorim-small")
class AstroRIMSmall(AstroRIM):
    """CPU preset: the same structure with narrow layers, T = 4, on 96 × 96 observations."""

    preset: ClassVar[dict[str, Any]] = {
        "image_size": 96,
        "source_size": 96,
        "steps": 4,
        "encoder_channels": [16, 32, 48, 64],
        "encoder_fc": [64, 32],
        "encoder_groups": 4,
        "pool_size": 4,
        "rim_features": [8, 8, 16],
        "rim_hidden": [8, 16],
        "psf_size": 21,
    }
    display_name: ClassVar[str] = "astrorim-small"
