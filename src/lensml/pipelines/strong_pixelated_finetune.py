"""Test-time fine-tuning of the pixelated RIM with an EWC prior (Adam et al. §2.5, App. A).

Given one observation y (with its PSF and noise σ) the trained RIM φ*_D gives a baseline
reconstruction x̂(φ*). Fine-tuning maximises, over the network weights φ (eqs. 9, 10, A6),

    J(φ) = (1/T) Σ_t log p(y | x̂^(t)(φ)) − (λ/2) Σ_j F_j (φ_j − φ*_j)²,

with log p(y | x) = −½ χ² (eq. 3, C = σ² I) and F the diagonal of the empirical Fisher
information of the weights at φ* (A4), estimated on examples *similar to the test task*:

1. encode the baseline source and κ with the two VAEs (posterior means z_s, z_κ);
2. draw n maps near them, x_i = decode(z + σ_z ε), σ_z = 0.3 (Table 3,
   :meth:`lensml.nets.vae.ConvVAE.sample_near`);
3. simulate y_i = F(x_i) + σ n_i with the observation's PSF and σ (the physics of the RIM);
4. F_j = (1/n) Σ_i (∂ℓ_i / ∂φ_j)², ℓ_i = −L_φ(x_i, y_i) + (1/T) Σ_t log p(y_i | x̂_t) −
   (ℓ2/2)‖φ‖² (A5; ℓ2 = 0 in the paper), L_φ the training loss of eq. 7 (ξ space).

Per-example gradients are computed by looping over the samples one at a time (micro-batches
of 1, ``torch.autograd.grad``): the RIM computes its own likelihood gradients with autograd
inside the forward pass, which ``torch.func.vmap`` cannot batch. Sampling and simulation are
batched (``fisher_batch_size`` maps per call). Cost: n + 1 unrolls and n backward passes.

The optimiser is RMSProp (Table 3) with TensorFlow's defaults (ρ = 0.9, ε = 1e−7; the paper's
code is TensorFlow), lr = 1e−6, at most 2000 updates, stopping as soon as the reduced χ²
of the last estimate x̂^(T), χ²_ν = χ²/ν with ν the number of image pixels, reaches the target
(1: noise level). χ²_ν is evaluated at every step from the same forward pass as the objective,
*before* that step's update, so ``chi2_history[i]`` is χ²_ν after i updates.

Likelihood scale
----------------
The paper writes log p(y | x) = −½ χ² in eqs. 9 and A5. The authors' public implementation
(Censai) evaluates the likelihood term of the fine-tuning cost and of the Fisher objective as the
*reduced* χ² (χ² divided by the number of image pixels ν), and λ = 2e5 of Table 3 refers to that
scale. The scale matters: the Fisher is a squared gradient, so with the raw sum the χ²-dominated
F grows by ν² while the likelihood gradient grows by ν, and the same λ would be a ν-times
stronger prior (×16,384 at 128²; RMSProp is otherwise invariant to the objective's scale). By
default (``loglike_per_pixel=True``) both terms therefore use log p / ν = −χ²_ν / 2, exactly
proportional to the paper's log p; ``loglike_per_pixel=False`` uses the raw sum.

Kept state
----------
The paper's text does not say which state is returned; early stopping at noise level makes the
last state the first with χ²_ν ≤ 1 when the target is reached. When it is not, RMSProp on a
non-convex objective can step past a good state, so by default (``keep="best"``, as in the
authors' public fine-tuning script, which tracks the lowest χ²) the state of lowest χ²_ν seen is
kept — identical to "last" whenever the target is reached, and never worse than the baseline (a
run whose updates all raise χ²_ν returns the baseline weights). ``keep="last"`` returns the
final state.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FineTuneConfig",
    "FineTuneResult",
    "draw_fisher_samples",
    "ewc_penalty",
    "finetune",
    "finetune_many",
    "fisher_diagonal",
    "fisher_from_samples",
]


@dataclass
class FineTuneConfig:
    """Hyper-parameters of the fine-tuning (defaults: Table 3).

    Attributes
    ----------
    learning_rate : float
        RMSProp learning rate (1e−6), > 0.
    max_steps : int
        Maximum number of optimiser updates (2000), >= 0.
    ewc_lambda : float
        λ, the weight of the EWC prior (2e5), >= 0.
    l2 : float
        ℓ2 weight-decay coefficient inside the Fisher objective A5 (0), >= 0.
    n_samples : int
        VAE samples for the Fisher diagonal (200), >= 1.
    latent_sigma : float
        σ of the isotropic latent sampling distribution N(z^(T), σ²) (0.3), >= 0.
    target_chi2 : float
        Early stop when χ²_ν ≤ this (1.0: noise level), > 0.
    fisher_batch_size : int
        Samples decoded and simulated per call while building the Fisher samples (16), >= 1
        (the gradients themselves are per sample).
    rmsprop_alpha : float
        RMSProp smoothing constant ρ (0.9, TensorFlow's default), in [0, 1).
    rmsprop_eps : float
        RMSProp ε added to √v (1e−7, TensorFlow's default), > 0.
    keep : {"best", "last"}
        Which state to return: lowest χ²_ν seen (default) or the last one.
    loglike_per_pixel : bool
        Use log p(y | x) / ν (ν = image pixels) instead of log p(y | x) in the objective and in
        the Fisher objective A5 (True; see the module docstring, "Likelihood scale").
    """

    learning_rate: float = 1e-6
    max_steps: int = 2000
    ewc_lambda: float = 2e5
    l2: float = 0.0
    n_samples: int = 200
    latent_sigma: float = 0.3
    target_chi2: float = 1.0
    fisher_batch_size: int = 16
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-7
    keep: str = "best"
    loglike_per_pixel: bool = True

    def __post_init__(self) -> None:
        def num(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < lo or v > hi or (lo_open and v <= lo):
                rel = ">" if lo_open else ">="
                upper = "" if hi == math.inf else f" and <= {hi}"
                raise ValueError(
                    f"FineTuneConfig.{name} must be a finite number {rel} {lo}{upper}, got {v!r}"
                )

        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"FineTuneConfig.{name} must be an integer >= {lo}, got {v!r}")

        num("learning_rate", 0.0, lo_open=True)
        integer("max_steps", 0)
        num("ewc_lambda", 0.0)
        num("l2", 0.0)
        integer("n_samples", 1)
        num("latent_sigma", 0.0)
        num("target_chi2", 0.0, lo_open=True)
        integer("fisher_batch_size", 1)
        num("rmsprop_alpha", 0.0, 1.0 - 1e-12)
        num("rmsprop_eps", 0.0, lo_open=True)
        if not isinstance(self.loglike_per_pixel, bool):
            raise ValueError(
                f"FineTuneConfig.loglike_per_pixel must be a bool, got {self.loglike_per_pixel!r}"
            )
        if self.keep not in ("best", "last"):
            raise ValueError(f"FineTuneConfig.keep must be 'best' or 'last', got {self.keep!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


@dataclass
class FineTuneResult:
    """Outcome of :func:`finetune` for one observation.

    Attributes
    ----------
    source_baseline, kappa_baseline : Tensor
        x̂^(T)(φ*) ``(1, 1, N, N)``: source (source grid) and κ = 10^ξ (image grid), detached.
    source_finetuned, kappa_finetuned : Tensor
        The same for the kept fine-tuned state.
    chi2_baseline, chi2_finetuned : float
        Reduced χ²_ν (ν = N² image pixels) of the baseline and the kept state.
    chi2_history : list of float
        χ²_ν after 0, 1, …, ``steps`` updates.
    loglike_history, penalty_history : list of float
        (1/T) Σ_t log p(y | x̂_t) and (λ/2) Σ F (φ − φ*)² at the same states.
    steps : int
        Optimiser updates performed.
    kept_step : int
        Number of updates of the returned state (``steps`` with keep="last").
    reached_target : bool
        Whether χ²_ν ≤ ``target_chi2`` was reached (then the loop stopped there).
    seconds, fisher_seconds : float
        Wall time of the whole call and of the Fisher estimate in it.
    baseline_steps, finetuned_steps : (list of Tensor, list of Tensor)
        The T estimates (s_t, ξ_t) of the baseline and of the kept state, detached — inputs of
        :meth:`lensml.nets.rim_pixelated.PixelatedRIM.per_example_loss` for Table 4.
    model : nn.Module or None
        The fine-tuned copy of the RIM at the kept state (None when not requested).
    """

    source_baseline: Tensor
    kappa_baseline: Tensor
    source_finetuned: Tensor
    kappa_finetuned: Tensor
    chi2_baseline: float
    chi2_finetuned: float
    chi2_history: list[float]
    loglike_history: list[float]
    penalty_history: list[float]
    steps: int
    kept_step: int
    reached_target: bool
    seconds: float
    fisher_seconds: float
    baseline_steps: tuple[list[Tensor], list[Tensor]] = field(repr=False)
    finetuned_steps: tuple[list[Tensor], list[Tensor]] = field(repr=False)
    model: nn.Module | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """Scalars and histories only (JSON-serialisable)."""
        keys = ("chi2_baseline", "chi2_finetuned", "chi2_history", "loglike_history",
                "penalty_history", "steps", "kept_step", "reached_target", "seconds",
                "fisher_seconds")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _physics(rim: nn.Module) -> Any:
    """The RIM's forward model (:class:`~lensml.physics.pixelated_lensing.PixelatedLensing`)."""
    phys = getattr(rim, "physics", None)
    if phys is None:
        phys = getattr(rim, "lens", None)
    if phys is None:
        raise ValueError("rim must expose its PixelatedLensing as .physics or .lens")
    return phys


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _mean_loglike(
    rim: nn.Module,
    y: Tensor,
    sources: Sequence[Tensor],
    xis: Sequence[Tensor],
    sigma: Any,
    psf: Tensor | None,
    per_pixel: bool = False,
) -> Tensor:
    """(1/T) Σ_t log p(y | s_t, 10^ξ_t) (divided by ν = pixels of y if ``per_pixel``), shape
    (B,), differentiable w.r.t. the estimates."""
    phys = _physics(rim)
    total = None
    for s_t, xi_t in zip(sources, xis, strict=True):
        ll = phys.log_likelihood(y.to(s_t.dtype), s_t, rim.link(xi_t), sigma, psf)
        total = ll if total is None else total + ll
    scale = len(sources) * (y[0].numel() if per_pixel else 1)
    return total / scale


def _check_single(rim: nn.Module, y: Any, name: str = "y") -> Tensor:
    n = int(rim.n_image)
    if not isinstance(y, Tensor) or y.ndim != 4 or tuple(y.shape[1:]) != (1, n, n):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must be a tensor (1, 1, {n}, {n}) (one observation), got {shape}")
    if y.shape[0] != 1:
        raise ValueError(f"{name} must hold one observation (batch 1), got batch {y.shape[0]}")
    return y


def _sigma_tensor(sigma: Any, like: Tensor) -> Tensor:
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device).detach().reshape(-1)
    if s.numel() != 1 or not bool(torch.isfinite(s).all()) or float(s) <= 0:
        raise ValueError(f"sigma must be one finite number > 0, got {sigma!r}")
    return s


def _check_vae(vae: nn.Module, n: int, name: str) -> None:
    size = getattr(vae, "size", None)
    if size != n:
        raise ValueError(f"{name}.size must equal the RIM's n_image = {n}, got {size}")


def ewc_penalty(
    model: nn.Module, anchor: dict[str, Tensor], fisher: dict[str, Tensor], ewc_lambda: float
) -> Tensor:
    """EWC prior −log p(φ) = (λ/2) Σ_j F_j (φ_j − φ*_j)² (eq. 10), a scalar tensor.

    Parameters
    ----------
    model : nn.Module
        Network with the current weights φ.
    anchor : dict
        φ* per parameter name.
    fisher : dict
        Fisher diagonal F per parameter name (same shapes).
    ewc_lambda : float
        λ >= 0.
    """
    total = None
    for name, p in _trainable(model):
        term = (fisher[name] * (p - anchor[name]).square()).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("model has no trainable parameters")
    return 0.5 * ewc_lambda * total


# ------------------------------------------------------------------------------------------
# Fisher diagonal (App. A)
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def draw_fisher_samples(
    rim: nn.Module,
    source_vae: nn.Module,
    kappa_vae: nn.Module,
    baseline_source: Tensor,
    baseline_kappa: Tensor,
    psf: Tensor | None,
    sigma: Any,
    config: FineTuneConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Examples similar to the test task (§2.5.2, Fig. 4): VAE draws near the baseline.

    Randomness, in this order per chunk of ``config.fisher_batch_size`` samples: the source
    latent noise, the κ latent noise, the image noise — all from ``generator``.

    Parameters
    ----------
    rim : PixelatedRIM
        Supplies the physics (``.physics`` / ``.lens``) and the map size N.
    source_vae, kappa_vae : ConvVAE
        Trained VAEs of the source and κ maps (``size`` = N); data-unit ``encode`` /
        ``sample_near``.
    baseline_source, baseline_kappa : Tensor
        The RIM's baseline estimate ``(1, 1, N, N)`` (source units; κ > 0).
    psf : Tensor or None
        The observation's PSF ``(1, 1, K, K)``.
    sigma : float or Tensor
        The observation's noise σ (> 0).
    config : FineTuneConfig
        ``n_samples``, ``latent_sigma``, ``fisher_batch_size``.
    generator : torch.Generator
        Source of all the randomness.

    Returns
    -------
    (sources, kappas, observations) : Tensor
        Each ``(n_samples, 1, N, N)``.
    """
    n = int(rim.n_image)
    _check_single(rim, baseline_source, "baseline_source")
    _check_single(rim, baseline_kappa, "baseline_kappa")
    _check_vae(source_vae, n, "source_vae")
    _check_vae(kappa_vae, n, "kappa_vae")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    phys = _physics(rim)
    dtype = next(rim.parameters()).dtype
    sig = _sigma_tensor(sigma, baseline_source.to(dtype))
    vdt = next(source_vae.parameters()).dtype
    kdt = next(kappa_vae.parameters()).dtype
    z_s = source_vae.encode(baseline_source.detach().to(vdt))[0]
    z_k = kappa_vae.encode(baseline_kappa.detach().to(kdt))[0]
    srcs, kaps, ys = [], [], []
    left = config.n_samples
    while left > 0:
        m = min(left, config.fisher_batch_size)
        s = source_vae.sample_near(z_s, config.latent_sigma, m, generator).to(dtype)
        k = kappa_vae.sample_near(z_k, config.latent_sigma, m, generator).to(dtype)
        p = None if psf is None else psf.detach().to(dtype)
        y = phys.simulate(s, k, p, sig, generator)
        srcs.append(s)
        kaps.append(k)
        ys.append(y.to(dtype))
        left -= m
    return torch.cat(srcs), torch.cat(kaps), torch.cat(ys)


def fisher_from_samples(
    rim: nn.Module,
    sources: Tensor,
    kappas: Tensor,
    observations: Tensor,
    sigma: Any,
    psf: Tensor | None,
    l2: float = 0.0,
    loglike_per_pixel: bool = True,
) -> dict[str, Tensor]:
    """Empirical Fisher diagonal (A4) of the weights from labelled samples.

    F_j = (1/n) Σ_i (∂ℓ_i/∂φ_j)², ℓ_i = −L_φ(x_i, y_i) + (1/T) Σ_t log p(y_i | x̂_t(y_i))
    − (ℓ2/2)‖φ‖² (A5; log p / ν with ``loglike_per_pixel``), one sample at a time. The RIM is
    not modified (``autograd.grad``, no ``.grad`` accumulation).

    Parameters
    ----------
    rim : PixelatedRIM
        Network at φ* (``unroll``, ``per_example_loss``, ``link``, physics).
    sources, kappas, observations : Tensor
        ``(n, 1, N, N)`` labels x_i = (s_i, κ_i > 0) and their simulated observations y_i.
    sigma : float or Tensor
        Noise σ of the observations (> 0, one value).
    psf : Tensor or None
        PSF ``(1, 1, K, K)``.
    l2 : float
        ℓ2 coefficient of A5 (>= 0; the paper: 0).
    loglike_per_pixel : bool
        Use log p / ν in ℓ_i (:class:`FineTuneConfig`).

    Returns
    -------
    dict of str to Tensor
        One non-negative tensor per trainable parameter (same name and shape), detached.
    """
    if not (sources.shape == kappas.shape == observations.shape) or sources.ndim != 4:
        raise ValueError(
            "sources, kappas and observations must share one shape (n, 1, N, N), got "
            f"{tuple(sources.shape)}, {tuple(kappas.shape)}, {tuple(observations.shape)}"
        )
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    params = _trainable(rim)
    if not params:
        raise ValueError("rim has no trainable parameters")
    dtype = params[0][1].dtype
    sig = _sigma_tensor(sigma, observations.to(dtype))
    p_psf = None if psf is None else psf.detach().to(dtype)
    acc = [torch.zeros_like(p) for _, p in params]
    n = sources.shape[0]
    for i in range(n):
        y_i = observations[i : i + 1].to(dtype)
        sources_t, xis_t = rim.unroll(y_i, sig, p_psf)
        loss = rim.per_example_loss(
            sources_t, xis_t, sources[i : i + 1].to(dtype), kappas[i : i + 1].to(dtype)
        )
        ll = _mean_loglike(rim, y_i, sources_t, xis_t, sig, p_psf, loglike_per_pixel)
        obj = (-loss + ll).sum()
        if l2 > 0:
            obj = obj - 0.5 * l2 * sum(p.square().sum() for _, p in params)
        grads = torch.autograd.grad(obj, [p for _, p in params], allow_unused=True)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a.add_(g.detach().square())
    return {name: a / n for (name, _), a in zip(params, acc, strict=True)}


def fisher_diagonal(
    rim: nn.Module,
    source_vae: nn.Module,
    kappa_vae: nn.Module,
    baseline_source: Tensor,
    baseline_kappa: Tensor,
    psf: Tensor | None,
    sigma: Any,
    config: FineTuneConfig,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Diagonal Fisher information of the RIM weights for one test task (App. A, eq. A4–A5).

    :func:`draw_fisher_samples` (VAE samples near the baseline, simulated with the
    observation's PSF and σ) followed by :func:`fisher_from_samples` with ``config.l2``.
    Arguments as in :func:`draw_fisher_samples`.

    Returns
    -------
    dict of str to Tensor
        F per trainable parameter name, non-negative, detached.
    """
    srcs, kaps, ys = draw_fisher_samples(
        rim, source_vae, kappa_vae, baseline_source, baseline_kappa, psf, sigma, config, generator
    )
    return fisher_from_samples(rim, srcs, kaps, ys, sigma, psf, config.l2, config.loglike_per_pixel)


# ------------------------------------------------------------------------------------------
# fine-tuning (eq. 9–10, A6)
# ------------------------------------------------------------------------------------------


def _detach_steps(sources: Sequence[Tensor], xis: Sequence[Tensor]) -> tuple[list, list]:
    return [s.detach().clone() for s in sources], [x.detach().clone() for x in xis]


def finetune(
    rim: nn.Module,
    y: Tensor,
    sigma: Any,
    psf: Tensor | None,
    source_vae: nn.Module,
    kappa_vae: nn.Module,
    config: FineTuneConfig | None = None,
    generator: torch.Generator | None = None,
    fisher: dict[str, Tensor] | None = None,
    return_model: bool = True,
) -> FineTuneResult:
    """Fine-tune a copy of the RIM on one observation (module docstring).

    Parameters
    ----------
    rim : PixelatedRIM
        Trained network φ*; never modified (a deep copy is optimised).
    y : Tensor
        One observation ``(1, 1, N, N)`` (source units).
    sigma : float or Tensor
        Its noise σ (> 0).
    psf : Tensor or None
        Its PSF ``(1, 1, K, K)`` (unit sum, K odd).
    source_vae, kappa_vae : ConvVAE
        VAEs for the Fisher samples (``size`` = N).
    config : FineTuneConfig, optional
        Defaults: Table 3.
    generator : torch.Generator
        Randomness of the Fisher samples (required unless ``fisher`` is given or the baseline
        already meets the target).
    fisher : dict, optional
        A precomputed Fisher diagonal (skips the sampling).
    return_model : bool
        Keep the fine-tuned copy in the result (``model``).

    Returns
    -------
    FineTuneResult
    """
    t0 = time.perf_counter()
    cfg = FineTuneConfig() if config is None else config
    if not isinstance(cfg, FineTuneConfig):
        raise ValueError(f"config must be a FineTuneConfig, got {type(cfg).__name__}")
    _check_single(rim, y)
    phys = _physics(rim)
    dtype = next(rim.parameters()).dtype
    y = y.detach().to(dtype)
    sig = _sigma_tensor(sigma, y)
    p_psf = None if psf is None else psf.detach().to(dtype)

    with torch.no_grad():
        b_src, b_xi = rim.unroll(y, sig, p_psf)
    baseline_steps = _detach_steps(b_src, b_xi)
    src0, kap0 = baseline_steps[0][-1], rim.link(baseline_steps[1][-1]).detach()
    with torch.no_grad():
        chi2_0 = float(phys.reduced_chi2(y, src0, kap0, sig, p_psf))

    def result(**kw: Any) -> FineTuneResult:
        base = {
            "source_baseline": src0,
            "kappa_baseline": kap0,
            "chi2_baseline": chi2_0,
            "baseline_steps": baseline_steps,
            "seconds": time.perf_counter() - t0,
        }
        return FineTuneResult(**base, **kw)

    if chi2_0 <= cfg.target_chi2 or cfg.max_steps == 0:
        return result(
            source_finetuned=src0, kappa_finetuned=kap0, chi2_finetuned=chi2_0,
            chi2_history=[chi2_0], loglike_history=[], penalty_history=[], steps=0,
            kept_step=0, reached_target=chi2_0 <= cfg.target_chi2, fisher_seconds=0.0,
            finetuned_steps=baseline_steps,
            model=copy.deepcopy(rim) if return_model else None,
        )  # fmt: skip

    t_f = time.perf_counter()
    if fisher is None:
        if not isinstance(generator, torch.Generator):
            raise ValueError("generator must be a torch.Generator (needed for the Fisher samples)")
        fisher = fisher_diagonal(rim, source_vae, kappa_vae, src0, kap0, p_psf, sig, cfg, generator)
    fisher_seconds = time.perf_counter() - t_f

    model = copy.deepcopy(rim)
    params = _trainable(model)
    missing = [n for n, _ in params if n not in fisher]
    if missing:
        raise ValueError(f"fisher lacks entries for parameters {missing[:5]}")
    fisher = {n: fisher[n].detach().to(p) for n, p in params}
    anchor = {n: p.detach().clone() for n, p in params}
    opt = torch.optim.RMSprop(
        [p for _, p in params], lr=cfg.learning_rate, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps
    )
    chi2_hist: list[float] = []
    ll_hist: list[float] = []
    pen_hist: list[float] = []
    best = (math.inf, -1, None, None)  # (χ²_ν, step, state, steps)
    reached = False
    step = 0
    last_steps = baseline_steps
    while True:
        opt.zero_grad(set_to_none=True)
        sources, xis = model.unroll(y, sig, p_psf)
        ll = _mean_loglike(model, y, sources, xis, sig, p_psf, cfg.loglike_per_pixel).sum()
        pen = ewc_penalty(model, anchor, fisher, cfg.ewc_lambda)
        with torch.no_grad():
            chi2 = float(phys.reduced_chi2(y, sources[-1], model.link(xis[-1]), sig, p_psf))
        chi2_hist.append(chi2)
        ll_hist.append(float(ll.detach()))
        pen_hist.append(float(pen.detach()))
        last_steps = _detach_steps(sources, xis)
        if cfg.keep == "best" and chi2 < best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (chi2, step, state, last_steps)
        if not math.isfinite(chi2):
            break
        if chi2 <= cfg.target_chi2:
            reached = True
            break
        if step >= cfg.max_steps:
            break
        (pen - ll).backward()
        opt.step()
        step += 1

    if cfg.keep == "best" and best[2] is not None:
        kept_chi2, kept_step, state, kept_steps = best
        model.load_state_dict(state)
    else:
        kept_chi2, kept_step, kept_steps = chi2_hist[-1], step, last_steps
    model.zero_grad(set_to_none=True)
    return result(
        source_finetuned=kept_steps[0][-1],
        kappa_finetuned=model.link(kept_steps[1][-1]).detach(),
        chi2_finetuned=float(kept_chi2),
        chi2_history=chi2_hist,
        loglike_history=ll_hist,
        penalty_history=pen_hist,
        steps=step,
        kept_step=int(kept_step),
        reached_target=reached,
        fisher_seconds=fisher_seconds,
        finetuned_steps=kept_steps,
        model=model if return_model else None,
    )


def finetune_many(
    rim: nn.Module,
    observations: Tensor,
    sigmas: Any,
    psfs: Tensor | None,
    source_vae: nn.Module,
    kappa_vae: nn.Module,
    config: FineTuneConfig | None = None,
    generator: torch.Generator | None = None,
    return_models: bool = False,
    progress: Any = None,
) -> list[FineTuneResult]:
    """:func:`finetune` each observation in turn (each from the same baseline φ*).

    Parameters
    ----------
    rim : PixelatedRIM
        Trained network (not modified).
    observations : Tensor
        ``(B, 1, N, N)``.
    sigmas : float or Tensor
        One σ for all, or ``(B,)``.
    psfs : Tensor or None
        ``(B, 1, K, K)`` or ``(1, 1, K, K)`` shared, or None.
    source_vae, kappa_vae : ConvVAE
        VAEs for the Fisher samples.
    config : FineTuneConfig, optional
        Defaults: Table 3.
    generator : torch.Generator
        Shared by all observations, used in order.
    return_models : bool
        Keep each fine-tuned network (memory: one RIM copy per observation).
    progress : callable, optional
        Called as ``progress(i, result)`` after each observation.

    Returns
    -------
    list of FineTuneResult
        One per observation, in order.
    """
    if not isinstance(observations, Tensor) or observations.ndim != 4:
        raise ValueError("observations must be a (B, 1, N, N) tensor")
    b = observations.shape[0]
    sig = torch.as_tensor(sigmas).detach().reshape(-1)
    if sig.numel() not in (1, b):
        raise ValueError(f"sigmas must be one number or (B,) = ({b},), got {tuple(sig.shape)}")
    sig = sig.expand(b)
    if psfs is not None and (psfs.ndim != 4 or psfs.shape[0] not in (1, b)):
        raise ValueError(f"psfs must be (B|1, 1, K, K) with B = {b}, got {tuple(psfs.shape)}")
    out = []
    for i in range(b):
        p = None if psfs is None else psfs[i : i + 1] if psfs.shape[0] == b else psfs
        res = finetune(
            rim, observations[i : i + 1], sig[i], p, source_vae, kappa_vae, config, generator,
            return_model=return_models,
        )  # fmt: skip
        out.append(res)
        if progress is not None:
            progress(i, res)
    return out
