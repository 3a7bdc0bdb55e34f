"""Recurrent inference machine for a pixelated source and a pixelated κ map (Adam et al., §2.3–2.4).

The parameters are two maps on one N × N grid: the source surface brightness s (on the source
grid, ``source_fov`` arcsec wide) and ξ = log10 κ (on the image grid, ``fov`` arcsec wide).
The κ link function is Ψ(ξ) = 10^ξ (Appendix C: it makes κ ≥ 0 and leaves the pixel values
roughly normal); the source link is the identity. Both maps are channels of one U-net input, so
``n_source`` must equal ``n_image`` (paper: 128 and 128).

Recurrence (eq. 6, Figs. 1, 2, 12)
----------------------------------
Initialisation (§2.3): the network first sees the observation alone,
``x^(0) = (0, ξ0) + g_φ(0, y, 0)`` — zero source, ξ = ξ0 (``xi_init``, default 0), zero gradient
channels and zero hidden states — so it learns the starting point from the data. Then, for
t = 0 … T − 1::

    g_s, g_ξ = ∇_s log p(y | x^(t)),  ∇_ξ log p(y | x^(t))      (autograd, NOT recorded)
    m ← β1 m + (1 − β1) g,  v ← β2 v + (1 − β2) g²              (Adam, Modi et al. 2021)
    ĝ = m̂ / (√v̂ + ε),  m̂ = m / (1 − β1^(t+1)),  v̂ = v / (1 − β2^(t+1))
    Δ, h ← U-net([s^(t), ξ^(t), ĝ_s, ĝ_ξ, y], h)
    x^(t+1) = x^(t) + Δ

so one reconstruction costs T + 1 U-net evaluations and T likelihood gradients; the loss and the
outputs use x^(1) … x^(T) (T = 8, Table 7).

* **Gradient variables.** The gradient is taken with respect to the network-space variables
  (s, ξ), i.e. through the link: ∇_ξ log p = ln 10 · κ · ∇_κ log p. This is the gradient of the
  function the network actually moves along, and it vanishes where κ → 0 rather than
  exploding in low-density regions.
* **Not recorded for BPTT** (dashed arrows of Figs. 1 and 12): the gradient is computed with
  ``torch.enable_grad`` on detached copies of (s, ξ, y, σ, PSF) and returned detached, so the
  training loss differentiates through the network and the recurrence only, never through the
  ray tracer. (It is also computed outside ``torch.inference_mode`` on clones, so evaluation
  under inference mode works.)
* **Adam pre-processing** (§2.3): per pixel and per example (each pixel of each example is its
  own "parameter"), running moments over the T steps, bias-corrected; β = (0.9, 0.99) by default
  (``adam_betas``), ε = 1e−8 (``adam_eps``). The raw log-likelihood gradient scales as 1/σ² and
  spans orders of magnitude between examples and pixels; after Adam it is O(1) (|ĝ| ≤ 1 at the
  first step), which is what a tanh network needs.
* **Observation channel.** y is fed as is: the data are in source units (source peak 1, image
  peak ≲ 1), the same O(1) range as s and the Adam-normalised gradients, so no rescaling is
  needed and the network sees the absolute surface brightness it must reproduce.

U-net with a memory in every level (§2.4, Fig. 2)
-------------------------------------------------
``filters = [f_0, …, f_{L−1}]`` gives L resolution levels N, N/2, …, N/2^(L−1) (N must be a
multiple of 2^(L−1)); level L − 1 is the bottleneck.

* input: Conv 11 × 11, 5 → f_0, tanh;
* encoder level i: ``convs_per_level`` × (Conv 3 × 3, f_i → f_i, tanh) giving e_i; a ConvGRU
  (:class:`lensml.nets.rim.ConvGRUCell`, ``gru_kernel``) with hidden state h_i of e_i's shape,
  h_i ← GRU(e_i, h_i), feeds the skip connection; e_i (not h_i) goes down through a stride-2
  Conv 3 × 3, f_i → f_(i+1), tanh;
* bottleneck: the GRU state h_(L−1) of the last level starts the decoder;
* decoder level i (from L − 2 to 0): ConvTranspose 3 × 3 stride 2 (“half-stride conv”),
  f_(i+1) → f_i, tanh; concatenated with h_i; ``convs_per_level`` × (Conv 3 × 3, tanh), the first
  2 f_i → f_i;
* output: Conv 1 × 1, f_0 → 2, linear (Δs, Δξ).

Every convolution except the output has a tanh, the strided ones included (§2.4).

Loss (eq. 7, Appendix C)
------------------------
Computed in the network space (ξ, not κ) to avoid vanishing gradients through the link::

    L = (1/T) Σ_t [ Σ_i w_i (ξ_t,i − log10 κ_i)² + (1/M) Σ_i (s_t,i − s_i)² ],
    w_i = √κ_i / Σ_j κ_j        (C7, from the TRUE κ; M = number of source pixels)

:meth:`PixelatedRIM.per_example_loss` returns it per example (for the Table-4 statistics) and
:meth:`PixelatedRIM.training_loss` the batch mean (for :func:`lensml.train.fit`).

Presets
-------
``rim-pixelated`` (the paper's GPU model, 128², T = 8): filters [48, 96, 192, 384, 768, 1536]
(6 levels, bottleneck at 4²), 3 convolutions per level, 3 × 3 GRUs: 311,365,826 parameters.
Table 7 gives 348,546,818 for the paper's network but not its widths. Among filter-doubling
U-nets of this design (base 16–128 filters, 4–8 levels, 1–4 convolutions per level, GRU kernel
3–7) this is the one closest to that size (−10.7 %); the next ones are 1536-filter variants
with 2 convolutions (276 M) and 2048-filter ones with 1 convolution (428 M).
``rim-pixelated-small`` (CPU, 64², same fields of view, T = 8): filters [8, 16, 32],
1 convolution per level: 107,138 parameters, 0.33 s per forward (T = 8) of 8 examples on one
CPU core ([16, 32, 64] has 418,178 parameters but takes 0.73 s). On CPUs the activations run in
channels-last layout and tanh is evaluated as 2 σ(2x) − 1 (same function, ~2× faster there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lensml.nets.blocks import check_float, check_int, check_int_list
from lensml.nets.rim import ConvGRUCell
from lensml.physics.pixelated_lensing import PixelatedLensing
from lensml.registry import NETWORKS

__all__ = ["PixelatedRIM", "PixelatedRIMSmall", "RecurrentUNet", "adam_preprocess"]


def adam_preprocess(
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: int,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam moment update of a gradient map, elementwise (Kingma & Ba 2014).

    Parameters
    ----------
    grad, m, v : Tensor
        Current gradient and running first / second moments (same shape; zeros at the start).
    step : int
        1-based index of this update (for the bias corrections 1 − β^step).
    betas : (float, float)
        Moment decay rates β1, β2 in [0, 1).
    eps : float
        Added to √v̂.

    Returns
    -------
    (ĝ, m, v) : tuple of Tensor
        ``ĝ = m̂ / (√v̂ + ε)`` with ``m̂ = m / (1 − β1^step)``, ``v̂ = v / (1 − β2^step)``, and
        the updated moments.
    """
    b1, b2 = betas
    m = b1 * m + (1.0 - b1) * grad
    v = b2 * v + (1.0 - b2) * grad * grad
    m_hat = m / (1.0 - b1**step)
    v_hat = v / (1.0 - b2**step)
    return m_hat / (v_hat.sqrt() + eps), m, v


def _memory_format(device: torch.device) -> torch.memory_format:
    # oneDNN runs these narrow convolutions (the 11 × 11 input layer above all) 2–3× faster on
    # channels-last tensors; GPUs keep the default layout
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _tanh(x: Tensor) -> Tensor:
    # tanh(x) = 2 σ(2x) − 1 (|error| < 2e−7 in float32): torch's CPU tanh is ~4× slower than
    # its sigmoid, and the activations are a third of this network's CPU time
    if x.device.type != "cpu":
        return torch.tanh(x)
    return torch.sigmoid(x + x) * 2.0 - 1.0


class RecurrentUNet(nn.Module):
    """U-net with a ConvGRU memory in every level (module docstring, Fig. 2).

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels (5) and output channels (2, linear).
    filters : list of int
        Feature channels per level, top to bottom (``L = len(filters)`` levels).
    convs_per_level : int
        3 × 3 convolutions per encoder and per decoder level (>= 1).
    gru_kernel : int
        Odd kernel side of the ConvGRU convolutions.
    input_kernel : int
        Odd kernel side of the input convolution (11).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: Sequence[int],
        convs_per_level: int = 1,
        gru_kernel: int = 3,
        input_kernel: int = 11,
    ) -> None:
        super().__init__()
        f = list(filters)
        self.filters = f
        self.input_conv = nn.Conv2d(in_channels, f[0], input_kernel, padding=input_kernel // 2)
        self.encoders = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(convs_per_level)) for c in f
        )
        self.grus = nn.ModuleList(ConvGRUCell(c, c, gru_kernel) for c in f)
        self.downs = nn.ModuleList(
            nn.Conv2d(f[i], f[i + 1], 3, stride=2, padding=1) for i in range(len(f) - 1)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(f[i + 1], f[i], 3, stride=2, padding=1, output_padding=1)
            for i in range(len(f) - 1)
        )
        self.decoders = nn.ModuleList(
            nn.ModuleList(
                nn.Conv2d(2 * f[i] if k == 0 else f[i], f[i], 3, padding=1)
                for k in range(convs_per_level)
            )
            for i in range(len(f) - 1)
        )
        self.output = nn.Conv2d(f[0], out_channels, 1)

    def initial_state(
        self, batch: int, side: int, dtype: torch.dtype, device: torch.device
    ) -> list[Tensor]:
        """Zero hidden states, ``(B, f_i, side / 2^i, side / 2^i)`` for each level i."""
        fmt = _memory_format(torch.device(device))
        return [
            torch.zeros(batch, c, side >> i, side >> i, dtype=dtype, device=device).contiguous(
                memory_format=fmt
            )
            for i, c in enumerate(self.filters)
        ]

    def forward(self, u: Tensor, states: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One step: ``u`` ``(B, in, N, N)`` and states → (``(B, out, N, N)`` output, states)."""
        x = _tanh(self.input_conv(u.contiguous(memory_format=_memory_format(u.device))))
        new: list[Tensor] = []
        last = len(self.filters) - 1
        for i in range(last + 1):
            for conv in self.encoders[i]:
                x = _tanh(conv(x))
            new.append(self.grus[i](x, states[i]))
            if i < last:
                x = _tanh(self.downs[i](x))
        d = new[last]
        for i in reversed(range(last)):
            d = torch.cat([_tanh(self.ups[i](d)), new[i]], dim=1)
            for conv in self.decoders[i]:
                d = _tanh(conv(d))
        w, b = self.output.weight, self.output.bias
        # 1 × 1 linear output as a channel contraction (faster than a narrow conv on CPUs)
        out = torch.einsum("bchw,oc->bohw", d, w[:, :, 0, 0]) + b[None, :, None, None]
        return out, new


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@NETWORKS.register("rim-pixelated")
class PixelatedRIM(nn.Module):
    """RIM reconstructing a pixelated source and κ map from a lensed image (module docstring).

    Parameters
    ----------
    n_image : int
        Image / κ pixels per side N (128); also the source side (``n_source`` must equal it).
    fov : float
        Image field of view, arcsec (7.69).
    n_source : int, optional
        Source pixels per side; default ``n_image``; must equal ``n_image``.
    source_fov : float
        Source field of view, arcsec (3).
    kernel : {"point", "pixel", "linear"}
        Deflection kernel of :class:`~lensml.physics.pixelated_lensing.PixelatedLensing`.
    filters : list of int
        U-net feature channels per level (levels = its length; ``n_image`` must be a multiple
        of ``2^(levels − 1)``).
    convs_per_level : int
        3 × 3 convolutions per U-net level (encoder and decoder).
    gru_kernel : int
        Odd ConvGRU kernel side.
    input_kernel : int
        Odd kernel side of the first convolution (11).
    steps : int
        Recurrent steps T (8).
    adam_betas : list of 2 float
        Adam β1, β2 of the gradient pre-processing, each in [0, 1) ((0.9, 0.99)).
    adam_eps : float
        Adam ε (1e−8).
    xi_init : float
        ξ0: the ξ input of the initial call and the base of x^(0) (0, i.e. κ = 1 + learned).
    """

    preset: ClassVar[dict[str, Any]] = {
        "n_image": 128,
        "filters": [48, 96, 192, 384, 768, 1536],
        "convs_per_level": 3,
        "gru_kernel": 3,
        "steps": 8,
    }
    registry_name: ClassVar[str] = "rim-pixelated"

    def __init__(
        self,
        n_image: int | None = None,
        fov: float = 7.69,
        n_source: int | None = None,
        source_fov: float = 3.0,
        kernel: str = "point",
        filters: list[int] | None = None,
        convs_per_level: int | None = None,
        gru_kernel: int | None = None,
        input_kernel: int = 11,
        steps: int | None = None,
        adam_betas: Sequence[float] = (0.9, 0.99),
        adam_eps: float = 1e-8,
        xi_init: float = 0.0,
    ) -> None:
        super().__init__()
        name, p = self.registry_name, self.preset

        def pick(value: Any, key: str) -> Any:
            return p[key] if value is None else value

        n = check_int(name, "n_image", pick(n_image, "n_image"), lo=4)
        ns = n if n_source is None else check_int(name, "n_source", n_source, lo=4)
        if ns != n:
            raise ValueError(
                f"{name}: n_source must equal n_image (source and ξ maps are channels of one "
                f"U-net input); got n_source={ns}, n_image={n}"
            )
        fov = check_float(name, "fov", fov, 1e-6, 1e6)
        source_fov = check_float(name, "source_fov", source_fov, 1e-6, 1e6)
        filt = check_int_list(name, "filters", _as_list(pick(filters, "filters")))
        if not filt:
            raise ValueError(f"{name}: filters must list at least one integer")
        cpl = check_int(name, "convs_per_level", pick(convs_per_level, "convs_per_level"))
        gk = check_int(name, "gru_kernel", pick(gru_kernel, "gru_kernel"))
        ik = check_int(name, "input_kernel", input_kernel)
        for key, k in (("gru_kernel", gk), ("input_kernel", ik)):
            if k % 2 == 0:
                raise ValueError(f"{name}: {key} must be odd, got {k}")
        t = check_int(name, "steps", pick(steps, "steps"))
        betas = _as_list(adam_betas)
        if not isinstance(betas, list) or len(betas) != 2:
            raise ValueError(
                f"{name}: adam_betas must be two numbers in [0, 1), got {adam_betas!r}"
            )
        b1 = check_float(name, "adam_betas[0]", betas[0], 0.0, 1.0, hi_open=True)
        b2 = check_float(name, "adam_betas[1]", betas[1], 0.0, 1.0, hi_open=True)
        eps = check_float(name, "adam_eps", adam_eps, 1e-30, 1.0)
        xi0 = check_float(name, "xi_init", xi_init, -10.0, 10.0)
        div = 2 ** (len(filt) - 1)
        if n % div:
            raise ValueError(
                f"{name}: n_image must be a multiple of 2^(levels - 1) = {div} for "
                f"{len(filt)} levels, got {n}"
            )
        self.lens = PixelatedLensing(
            n_image=n, fov=fov, n_source=ns, source_fov=source_fov, kernel=kernel
        )
        self.config: dict[str, Any] = {
            "n_image": n,
            "fov": fov,
            "n_source": ns,
            "source_fov": source_fov,
            "kernel": kernel,
            "filters": filt,
            "convs_per_level": cpl,
            "gru_kernel": gk,
            "input_kernel": ik,
            "steps": t,
            "adam_betas": [b1, b2],
            "adam_eps": eps,
            "xi_init": xi0,
        }
        self.n_image, self.steps = n, t
        self.adam_betas, self.adam_eps, self.xi_init = (b1, b2), eps, xi0
        self.unet = RecurrentUNet(5, 2, filt, cpl, gk, ik)

    # ------------------------------------------------------------------ validation
    def _map(self, t: Any, key: str, batch: int | None = None) -> Tensor:
        n = self.n_image
        expected = f"(B, 1, {n}, {n})"
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(
                f"{self.registry_name}: {key!r} must be a floating tensor {expected}; "
                f"got {type(t).__name__}"
            )
        if t.ndim != 4 or t.shape[0] < 1 or t.shape[1] != 1 or tuple(t.shape[-2:]) != (n, n):
            raise ValueError(
                f"{self.registry_name}: {key!r} must have shape {expected}; got {tuple(t.shape)}"
            )
        if batch is not None and t.shape[0] != batch:
            raise ValueError(
                f"{self.registry_name}: {key!r} has batch {t.shape[0]}, expected {batch}"
            )
        if not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{self.registry_name}: {key!r} contains NaN or inf values")
        return t

    def _sigma(self, sigma: Any, y: Tensor) -> Tensor:
        b = y.shape[0]
        if isinstance(sigma, bool) or not isinstance(sigma, Tensor | float | int):
            raise ValueError(
                f"{self.registry_name}: 'sigma' must be a number or a (B,) tensor; "
                f"got {type(sigma).__name__}"
            )
        s = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).detach()
        if s.ndim == 0:
            s = s.expand(b)
        if s.ndim != 1 or s.shape[0] not in (1, b):
            raise ValueError(
                f"{self.registry_name}: 'sigma' must be a number or a (B,) tensor with "
                f"B = {b}; got shape {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError(f"{self.registry_name}: 'sigma' must be finite and > 0")
        return s.expand(b)

    def _psf(self, psf: Any, y: Tensor) -> Tensor | None:
        if psf is None:
            return None
        b = y.shape[0]
        if (
            not isinstance(psf, Tensor)
            or not psf.is_floating_point()
            or psf.ndim != 4
            or psf.shape[1] != 1
            or psf.shape[0] not in (1, b)
            or psf.shape[-1] != psf.shape[-2]
            or psf.shape[-1] % 2 == 0
        ):
            shape = tuple(psf.shape) if isinstance(psf, Tensor) else type(psf).__name__
            raise ValueError(
                f"{self.registry_name}: 'psf' must be a floating (B|1, 1, K, K) tensor with K odd "
                f"and B = {b}, or None; got {shape}"
            )
        if not bool(torch.isfinite(psf).all()):
            raise ValueError(f"{self.registry_name}: 'psf' contains NaN or inf values")
        return psf.detach().to(y.dtype)

    # ------------------------------------------------------------------ physics
    def link(self, xi: Tensor) -> Tensor:
        """κ = Ψ(ξ) = 10^ξ."""
        return torch.pow(10.0, xi)

    def likelihood_gradients(
        self, y: Tensor, source: Tensor, xi: Tensor, sigma: Tensor, psf: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(∇_s, ∇_ξ) of log p(y | s, κ = 10^ξ) per example, detached (not recorded for BPTT).

        ``y``, ``source``, ``xi`` are ``(B, 1, N, N)``; ``sigma`` ``(B,)``; ``psf`` as in
        :meth:`forward`. ∇_ξ = ln 10 · κ · ∇_κ (chain rule through the link, by autograd).
        """
        with torch.inference_mode(False), torch.enable_grad():
            s = source.detach().clone().requires_grad_(True)
            x = xi.detach().clone().requires_grad_(True)
            yy, sig = y.detach().clone(), sigma.detach().clone()
            p = None if psf is None else psf.detach().clone()
            ll = self.lens.log_likelihood(yy, s, self.link(x), sig, p).sum()
            gs, gx = torch.autograd.grad(ll, (s, x))
        return gs.detach(), gx.detach()

    # ------------------------------------------------------------------ recurrence
    def _check_inputs(self, y: Any, sigma: Any, psf: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        y = self._map(y, "image")
        return y, self._sigma(sigma, y), self._psf(psf, y)

    def _unroll(
        self, y: Tensor, sigma: Tensor, psf: Tensor | None, steps: int, trace: bool
    ) -> tuple[list[Tensor], list[Tensor], list[dict[str, Tensor]]]:
        b, n = y.shape[0], self.n_image
        dtype = next(self.parameters()).dtype
        y_in = y.to(dtype)
        states = self.unet.initial_state(b, n, dtype, y.device)
        zeros = torch.zeros(b, 1, n, n, dtype=dtype, device=y.device)
        xi0 = torch.full_like(zeros, self.xi_init)
        delta, states = self.unet(torch.cat([zeros, xi0, zeros, zeros, y_in], dim=1), states)
        s, xi = delta[:, :1], xi0 + delta[:, 1:]
        m_s = v_s = m_x = v_x = torch.zeros_like(zeros)
        sources, xis, records = [], [], []
        for t in range(1, steps + 1):
            g_s, g_x = self.likelihood_gradients(y, s, xi, sigma, psf)
            g_s, g_x = g_s.to(dtype), g_x.to(dtype)
            a_s, m_s, v_s = adam_preprocess(g_s, m_s, v_s, t, self.adam_betas, self.adam_eps)
            a_x, m_x, v_x = adam_preprocess(g_x, m_x, v_x, t, self.adam_betas, self.adam_eps)
            delta, states = self.unet(torch.cat([s, xi, a_s, a_x, y_in], dim=1), states)
            s, xi = s + delta[:, :1], xi + delta[:, 1:]
            sources.append(s)
            xis.append(xi)
            if trace:
                records.append(
                    {"grad_source": g_s, "grad_xi": g_x, "adam_source": a_s, "adam_xi": a_x}
                )
        return sources, xis, records

    def unroll(
        self,
        y: Tensor,
        sigma: Tensor | float,
        psf: Tensor | None = None,
        steps: int | None = None,
        return_trace: bool = False,
    ) -> Any:
        """The T estimates x^(1) … x^(T), differentiable with respect to the weights.

        Parameters
        ----------
        y : Tensor
            Observations ``(B, 1, N, N)``, source units (surface brightness, peak ≲ 1).
        sigma : Tensor or float
            Noise standard deviation per example ``(B,)`` (or one number), same units, > 0.
        psf : Tensor, optional
            ``(B|1, 1, K, K)`` unit-sum PSFs, K odd; None for no blur.
        steps : int, optional
            T (default: the configured ``steps``).
        return_trace : bool
            Also return, per step, the raw gradients (``grad_source``, ``grad_xi``) and their
            Adam-processed versions (``adam_source``, ``adam_xi``) fed to the network.

        Returns
        -------
        (sources, xis) or (sources, xis, trace)
            Lists of T tensors ``(B, 1, N, N)``: source estimates s_t and ξ_t = log10 κ_t.
        """
        y, sig, p = self._check_inputs(y, sigma, psf)
        t = self.steps if steps is None else check_int(self.registry_name, "steps", steps)
        sources, xis, records = self._unroll(y, sig, p, t, return_trace)
        return (sources, xis, records) if return_trace else (sources, xis)

    def forward(
        self, y: Tensor, sigma: Tensor | float, psf: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Reconstruct (see :meth:`unroll` for the inputs).

        Returns
        -------
        dict
            ``source`` s_T ``(B, 1, N, N)`` (source grid, source units), ``kappa`` 10^ξ_T and
            ``xi`` ξ_T ``(B, 1, N, N)`` (image grid).
        """
        sources, xis = self.unroll(y, sigma, psf)
        return {"source": sources[-1], "kappa": self.link(xis[-1]), "xi": xis[-1]}

    # ------------------------------------------------------------------ loss
    def per_example_loss(
        self,
        source_steps: Sequence[Tensor],
        xi_steps: Sequence[Tensor],
        source_true: Tensor,
        kappa_true: Tensor,
    ) -> Tensor:
        """Eq. 7 per example, ``(B,)``, with the C7 κ weights and uniform source weights.

        Parameters
        ----------
        source_steps, xi_steps : sequence of Tensor
            The T estimates s_t and ξ_t, each ``(B, 1, N, N)``.
        source_true : Tensor
            True source ``(B, 1, N, N)``.
        kappa_true : Tensor
            True κ ``(B, 1, N, N)``, > 0 (compared as log10 κ).
        """
        if len(source_steps) == 0 or len(source_steps) != len(xi_steps):
            raise ValueError(
                f"{self.registry_name}: source_steps and xi_steps must be non-empty lists of "
                f"equal length; got {len(source_steps)} and {len(xi_steps)}"
            )
        b = source_steps[0].shape[0]
        s_true = self._map(source_true, "source", b)
        k_true = self._map(kappa_true, "kappa", b)
        if bool((k_true <= 0).any()):
            raise ValueError(f"{self.registry_name}: 'kappa' must be > 0 everywhere (ξ = log10 κ)")
        dtype = source_steps[0].dtype
        s_true, k_true = s_true.to(dtype), k_true.to(dtype)
        xi_true = torch.log10(k_true)
        w = k_true.sqrt() / k_true.sum(dim=(1, 2, 3), keepdim=True)
        m = s_true[0].numel()
        total = torch.zeros(b, dtype=dtype, device=s_true.device)
        for s_t, xi_t in zip(source_steps, xi_steps, strict=True):
            total = total + (w * (xi_t - xi_true) ** 2).sum(dim=(1, 2, 3))
            total = total + ((s_t - s_true) ** 2).sum(dim=(1, 2, 3)) / m
        return total / len(source_steps)

    def training_loss(self, batch: Mapping[str, Any]) -> Tensor:
        """Batch mean of eq. 7 for the training engine.

        ``batch`` holds ``image`` ``(B, 1, N, N)``, ``source`` ``(B, 1, N, N)``, ``kappa``
        ``(B, 1, N, N)``, ``sigma`` ``(B,)`` and optionally ``psf`` ``(B, 1, K, K)``.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"{self.registry_name}: training batch must be a dict with keys 'image', "
                "'source', 'kappa', 'sigma' (and optionally 'psf')"
            )
        for key in ("image", "source", "kappa", "sigma"):
            if key not in batch:
                raise ValueError(f"{self.registry_name}: training batch lacks {key!r}")
        sources, xis = self.unroll(batch["image"], batch["sigma"], batch.get("psf"))
        return self.per_example_loss(sources, xis, batch["source"], batch["kappa"]).mean()


@NETWORKS.register("rim-pixelated-small")
class PixelatedRIMSmall(PixelatedRIM):
    """CPU preset: 64² maps (same fields of view), filters [8, 16, 32], 1 conv per level, T = 8."""

    preset: ClassVar[dict[str, Any]] = {
        "n_image": 64,
        "filters": [8, 16, 32],
        "convs_per_level": 1,
        "gru_kernel": 3,
        "steps": 8,
    }
    registry_name: ClassVar[str] = "rim-pixelated-small"
