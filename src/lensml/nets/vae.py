"""Convolutional β-VAEs of the source and κ maps (Adam et al., pixelated RIM, §4.1, App. B).

The pixelated-RIM paper trains two variational autoencoders (Kingma & Welling 2013): one on
COSMOS galaxy images (the background sources, Table 5) and one on IllustrisTNG convergence maps
(Table 6). Their decoders generate the RIM's training labels (§3), and their latent spaces give
the fine-tuning sampling distribution N(z^(T), σ = 0.3) around the latent code of the RIM's
baseline prediction (§2.5.2, Table 3; :meth:`ConvVAE.sample_near`).

Architecture
------------
A *level* is the set of layers working at one resolution (Appendix B). With ``f_i = filters ·
filter_scale**i`` and ``L = levels``:

* encoder: a ``input_kernel`` × ``input_kernel`` (7×7) input convolution 1 → f_0; then per level
  i = 0 … L−1, ``conv_per_level`` 3×3 convolutions f_i → f_i followed by a 3×3 stride-2
  convolution f_i → f_{i+1} (down-sampling with strided convolutions, as in the RIM's U-net);
  flatten the f_L × (S/2^L)² code h_enc; one dense layer → (μ, log σ²), 2 × latent_dim;
* decoder: one dense layer latent_dim → f_L (S/2^L)² (h_dec), reshaped to f_L × (S/2^L)²; then
  per level i = L−1 … 0 a 3×3 stride-2 transposed convolution → f_i followed by
  ``conv_per_level`` 3×3 convolutions f_i → f_i; a 3×3 output convolution f_0 → 1 and the output
  activation (sigmoid for the source, identity for κ).

Every hidden convolution (strided ones included) is followed by a leaky ReLU. The paper gives
no slope; lensml uses ``negative_slope`` = 0.2 (TensorFlow's ``leaky_relu`` default, the
framework of the authors' code). There is no normalisation layer and no skip connection. All
convolutions are zero-padded to keep (or exactly halve / double) the map side, so ``size``
must be a multiple of 2^L.

Layer table of ``vae-source`` (Table 5: S = 128, L = 3, 2 convolutions per level, latent 32,
16 filters)::

    layer                                   output            parameters
    input conv 7×7, 1 → 16                  16 × 128²                800
    level 0: 2 × conv 3×3, 16 → 16          16 × 128²       2 × 2,320
             conv 3×3 /2, 16 → 32           32 × 64²               4,640
    level 1: 2 × conv 3×3, 32 → 32          32 × 64²        2 × 9,248
             conv 3×3 /2, 32 → 64           64 × 32²              18,496
    level 2: 2 × conv 3×3, 64 → 64          64 × 32²       2 × 36,928
             conv 3×3 /2, 64 → 128          128 × 16²             73,856
    dense 32,768 → 2 × 32 (μ, log σ²)       64                 2,097,216
    dense 32 → 32,768                       128 × 16²          1,081,344
    level 2: convT 3×3 ×2, 128 → 64         64 × 32²              73,792
             2 × conv 3×3, 64 → 64          64 × 32²       2 × 36,928
    level 1: convT 3×3 ×2, 64 → 32          32 × 64²              18,464
             2 × conv 3×3, 32 → 32          32 × 64²        2 × 9,248
    level 0: convT 3×3 ×2, 32 → 16          16 × 128²              4,624
             2 × conv 3×3, 16 → 16          16 × 128²       2 × 2,320
    output conv 3×3, 16 → 1, sigmoid        1 × 128²                 145
    total                                                      3,567,361

Layer table of ``vae-kappa`` (Table 6: S = 128, L = 4, 1 convolution per level, latent 16,
16 filters)::

    layer                                   output            parameters
    input conv 7×7, 1 → 16                  16 × 128²                800
    level 0: conv 3×3 16 → 16; /2 16 → 32   32 × 64²       2,320 + 4,640
    level 1: conv 3×3 32 → 32; /2 32 → 64   64 × 32²      9,248 + 18,496
    level 2: conv 3×3 64 → 64; /2 64 → 128  128 × 16²    36,928 + 73,856
    level 3: conv 3×3 128 → 128; /2 → 256   256 × 8²    147,584 + 295,168
    dense 16,384 → 2 × 16 (μ, log σ²)       32                   524,320
    dense 16 → 16,384                       256 × 8²             278,528
    level 3: convT 256 → 128; conv 128      128 × 16²   295,040 + 147,584
    level 2: convT 128 → 64; conv 64        64 × 32²     73,792 + 36,928
    level 1: convT 64 → 32; conv 32         32 × 64²     18,464 + 9,248
    level 0: convT 32 → 16; conv 16         16 × 128²     4,624 + 2,320
    output conv 3×3, 16 → 1, identity       1 × 128²                 145
    total                                                      1,980,033

Both totals equal the paper's counts exactly (3,567,361 and 1,980,033), which pins down the
7×7 input convolution, the strided convolutions that also scale the channels, and the single
dense layer on each side of the latent space. The CPU presets ``vae-source-small`` and
``vae-kappa-small`` keep the structure at S = 64 with 8 first-level filters (495,009 and
395,217 parameters).

Preprocessing
-------------
The network sees ξ = p(x): ``"identity"`` for the source (pixel values in [0, 1], sigmoid
output) and ``"log10"`` for κ, ξ = log10(max(κ, ``log_floor``)) with ``log_floor`` = 1e−4
(κ below the floor, e.g. exact zeros, is clipped to it; TNG κ maps within 7.69″ lie far above
it). :meth:`ConvVAE.decode` returns data units, p⁻¹(ξ̂) = 10^ξ̂ > 0 for κ.

Objective (:meth:`ConvVAE.training_loss`)
-----------------------------------------
With the encoder's (μ, log σ²), z = μ + σ ε and the decoder output ξ̂(z), per example

    L = Σ_pixels (ξ̂ − ξ)² + β(s) KL(N(μ, σ²) ‖ N(0, 1)) + w(s) ⟨(h_dec(z) − h_enc)²⟩,

averaged over the batch, where KL = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) and s is the training
step. For κ the reconstruction is the squared error summed over the pixels
(``reconstruction="sum"``: the ELBO of a Gaussian decoder of variance ½, the scaling the
paper's β values refer to; ``"mean"`` averages over the pixels instead). For the source (sigmoid
output, pixels in [0, 1]) the presets use ``"bce"``: the Bernoulli cross-entropy of the decoder's
logits with the continuous pixel values, minus the values' own entropy (zero for a perfect
reconstruction), summed over the pixels. The paper does not give its reconstruction loss; a
squared error behind a sigmoid lets the source VAE collapse onto a blank image (measured on the
CPU preset: after 500 Adam steps at lr 1e-3 every reconstruction was blank, the validation loss
equal to Σ source²), because the gradient vanishes once the sigmoid saturates near 0 — which
most pixels of a compact source ask for. The KL weight warms up linearly (Bowman et al. 2015;
Sønderby et al. 2016), β(s) = β_start + (β_max − β_start) min(1, s / ``beta_warmup_steps``),
from β_start = 0.1 to β_max (0.1 for the source, 0.2 for κ). The last term is the bottleneck
penalty of Lanusse et al. (2021): the mean square difference between the input of the
encoder's dense layer (the flattened code h_enc) and the output of the decoder's dense layer
(h_dec, the same shape), which encourages the pair of dense layers around the latent space to
act as an identity; its weight decays linearly to zero, w(s) = ``l2_bottleneck`` · max(0, 1 −
s / ``l2_bottleneck_decay_steps``) ("slowly removed during training"). Neither schedule's
length is in the paper; the presets use 50,000 and 10,000 steps and w_0 = 0.01, the values of
the authors' public grid-search scripts.

The step s is the persistent buffer ``step`` (int64): every :meth:`ConvVAE.training_loss` call
in training mode (one per micro-batch under gradient accumulation) uses the current s and then
increments it, so it is saved in checkpoints and a resumed run continues both schedules where
it stopped. In eval mode (validation, the engine's
EMA copy) the loss uses z = μ, deterministic, and leaves ``step`` alone.

Randomness
----------
Nothing draws from torch's global generator. :meth:`sample`, :meth:`sample_near` and the
stochastic :meth:`forward` take an explicit ``torch.Generator``. The reparameterisation noise
ε of :meth:`training_loss` comes from the ``generator`` argument when one is given, else from
a private generator seeded with (``noise_seed``, ``step``, process rank) at every call: the
training engine calls ``training_loss(batch)`` without a generator and seeds only the global
state, so this keeps the noise reproducible, different on every step and on every DDP rank,
and identical after a resume (it depends only on the saved ``step``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lensml.nets.blocks import check_float, check_int, check_map_input
from lensml.registry import NETWORKS

__all__ = [
    "OUTPUT_ACTIVATIONS",
    "PREPROCESSINGS",
    "ConvVAE",
    "KappaVAE",
    "KappaVAESmall",
    "SourceVAE",
    "SourceVAESmall",
    "gaussian_kl",
]

#: Allowed ``output_activation`` values.
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")
#: Allowed ``preprocessing`` values.
PREPROCESSINGS = ("identity", "log10")
_RECONSTRUCTIONS = ("sum", "mean", "bce")
_DATA_KEYS = ("source", "kappa")
_MAX_SEED = 2**63


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example, summed over the latent dimensions.

    Parameters
    ----------
    mu, logvar : Tensor
        ``(B, D)`` means and log-variances log σ².

    Returns
    -------
    Tensor
        ``(B,)``, ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²) ≥ 0 (nats).
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def _check_choice(network: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{network}: {name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _check_generator(where: str, generator: Any) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"{where}: generator must be a torch.Generator, got {type(generator)}")
    return generator


class ConvVAE(nn.Module):
    """Convolutional β-VAE with the paper's level structure (see the module docstring).

    Arguments left at ``None`` take the value of the class's ``preset``.

    Parameters
    ----------
    size : int
        Input side S in pixels, a multiple of 2**levels (128 in the paper).
    levels : int
        Resolution levels L of encoder and decoder (>= 1).
    conv_per_level : int
        3×3 convolutions per level before down-sampling / after up-sampling (>= 0).
    latent_dim : int
        Latent dimension (>= 1).
    filters : int
        Channels f_0 of the first level.
    filter_scale : int
        Channel factor per level (2): f_i = filters · filter_scale**i.
    input_kernel : int
        Odd side of the encoder's input convolution (7).
    negative_slope : float
        Leaky-ReLU slope in [0, 1) (0.2).
    output_activation : {"sigmoid", "identity"}
        Applied to the decoder's last convolution (in the preprocessed space).
    preprocessing : {"identity", "log10"}
        Map from data units to network space (see module docstring).
    log_floor : float
        Floor applied before log10, in (0, 1) (1e−4).
    beta_start, beta_max : float
        KL weight at step 0 (0.1) and after the warm-up, each in [0, 100].
    beta_warmup_steps : int
        Steps of the linear warm-up from ``beta_start`` to ``beta_max`` (0: ``beta_max`` at once).
    l2_bottleneck : float
        Initial weight w_0 >= 0 of the bottleneck identity penalty.
    l2_bottleneck_decay_steps : int
        Steps over which that weight decays linearly to 0 (0: no penalty).
    reconstruction : {"sum", "mean", "bce"}
        Squared error summed or averaged over the pixels, or (sigmoid outputs only) the
        Bernoulli cross-entropy with continuous targets minus the targets' own entropy, summed
        over the pixels (then averaged over the batch); default: the preset's ("bce" for the
        source, "sum" for κ).
    data_key : {"source", "kappa"}
        Key of the dict batch that :meth:`training_loss` trains on.
    noise_seed : int
        Seed (>= 0) of the reparameterisation noise when no generator is passed.
    """

    preset: ClassVar[dict[str, Any]] = {
        "size": 128,
        "levels": 3,
        "conv_per_level": 2,
        "latent_dim": 32,
        "filters": 16,
        "output_activation": "sigmoid",
        "preprocessing": "identity",
        "reconstruction": "bce",
        "beta_max": 0.1,
        "beta_warmup_steps": 50_000,
        "l2_bottleneck_decay_steps": 10_000,
        "data_key": "source",
    }
    display_name: ClassVar[str] = "conv-vae"

    def __init__(
        self,
        size: int | None = None,
        levels: int | None = None,
        conv_per_level: int | None = None,
        latent_dim: int | None = None,
        filters: int | None = None,
        filter_scale: int = 2,
        input_kernel: int = 7,
        negative_slope: float = 0.2,
        output_activation: str | None = None,
        preprocessing: str | None = None,
        log_floor: float = 1e-4,
        beta_start: float = 0.1,
        beta_max: float | None = None,
        beta_warmup_steps: int | None = None,
        l2_bottleneck: float = 1e-2,
        l2_bottleneck_decay_steps: int | None = None,
        reconstruction: str | None = None,
        data_key: str | None = None,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        name, p = self.display_name, self.preset

        def pick(value: Any, key: str) -> Any:
            return p[key] if value is None else value

        levels = check_int(name, "levels", pick(levels, "levels"))
        size = check_int(name, "size", pick(size, "size"), lo=2**levels)
        if size % 2**levels:
            raise ValueError(
                f"{name}: size must be a multiple of 2**levels = {2**levels}, got {size}"
            )
        conv_per_level = check_int(
            name, "conv_per_level", pick(conv_per_level, "conv_per_level"), lo=0
        )
        latent_dim = check_int(name, "latent_dim", pick(latent_dim, "latent_dim"))
        filters = check_int(name, "filters", pick(filters, "filters"))
        filter_scale = check_int(name, "filter_scale", filter_scale)
        input_kernel = check_int(name, "input_kernel", input_kernel)
        if input_kernel % 2 == 0:
            raise ValueError(f"{name}: input_kernel must be odd, got {input_kernel}")
        negative_slope = check_float(name, "negative_slope", negative_slope, 0.0, 1.0, True)
        out_act = _check_choice(
            name,
            "output_activation",
            pick(output_activation, "output_activation"),
            OUTPUT_ACTIVATIONS,
        )
        prep = _check_choice(
            name, "preprocessing", pick(preprocessing, "preprocessing"), PREPROCESSINGS
        )
        log_floor = check_float(name, "log_floor", log_floor, 0.0, 1.0, hi_open=True)
        if log_floor <= 0:
            raise ValueError(f"{name}: log_floor must be > 0, got {log_floor!r}")
        beta_start = check_float(name, "beta_start", beta_start, 0.0, 100.0)
        beta_max = check_float(name, "beta_max", pick(beta_max, "beta_max"), 0.0, 100.0)
        warmup = check_int(
            name, "beta_warmup_steps", pick(beta_warmup_steps, "beta_warmup_steps"), lo=0
        )
        l2_bottleneck = check_float(name, "l2_bottleneck", l2_bottleneck, 0.0, 1e6)
        decay = check_int(
            name,
            "l2_bottleneck_decay_steps",
            pick(l2_bottleneck_decay_steps, "l2_bottleneck_decay_steps"),
            lo=0,
        )
        reconstruction = _check_choice(
            name, "reconstruction", pick(reconstruction, "reconstruction"), _RECONSTRUCTIONS
        )
        if reconstruction == "bce" and pick(output_activation, "output_activation") != "sigmoid":
            raise ValueError(
                f"{name}: reconstruction 'bce' needs output_activation 'sigmoid' (pixel values "
                "in [0, 1]); use 'sum' or 'mean'"
            )
        data_key = _check_choice(name, "data_key", pick(data_key, "data_key"), _DATA_KEYS)
        noise_seed = check_int(name, "noise_seed", noise_seed, lo=0)
        widths = [filters * filter_scale**i for i in range(levels + 1)]
        self.bottleneck_side = size // 2**levels
        self.bottleneck_channels = widths[-1]
        flat = widths[-1] * self.bottleneck_side**2
        if flat > 2**28:
            raise ValueError(
                f"{name}: the flattened bottleneck has {flat} features; reduce size, filters, "
                "filter_scale or raise levels"
            )

        self.config: dict[str, Any] = {
            "size": size,
            "levels": levels,
            "conv_per_level": conv_per_level,
            "latent_dim": latent_dim,
            "filters": filters,
            "filter_scale": filter_scale,
            "input_kernel": input_kernel,
            "negative_slope": negative_slope,
            "output_activation": out_act,
            "preprocessing": prep,
            "log_floor": log_floor,
            "beta_start": beta_start,
            "beta_max": beta_max,
            "beta_warmup_steps": warmup,
            "l2_bottleneck": l2_bottleneck,
            "l2_bottleneck_decay_steps": decay,
            "reconstruction": reconstruction,
            "data_key": data_key,
            "noise_seed": noise_seed,
        }
        self.size, self.latent_dim, self.data_key = size, latent_dim, data_key
        self.preprocessing, self.output_activation = prep, out_act
        self.log_floor, self.noise_seed = log_floor, noise_seed

        def act() -> nn.Module:
            return nn.LeakyReLU(negative_slope)

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, 1, 1), act()]

        enc: list[nn.Module] = [nn.Conv2d(1, widths[0], input_kernel, 1, input_kernel // 2), act()]
        for i in range(levels):
            for _ in range(conv_per_level):
                enc += conv(widths[i], widths[i])
            enc += [nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1), act()]
        self.encoder = nn.Sequential(*enc)
        #: encoder dense layer: flattened code h_enc → (μ, log σ²)
        self.to_latent = nn.Linear(flat, 2 * latent_dim)
        #: decoder dense layer: z → h_dec (the shape of h_enc)
        self.from_latent = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        for i in reversed(range(levels)):
            dec += [nn.ConvTranspose2d(widths[i + 1], widths[i], 3, 2, 1, output_padding=1), act()]
            for _ in range(conv_per_level):
                dec += conv(widths[i], widths[i])
        dec.append(nn.Conv2d(widths[0], 1, 3, 1, 1))
        if out_act == "sigmoid":
            dec.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*dec)
        #: training steps taken (persistent: drives the β and bottleneck schedules on resume)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    # --- preprocessing ---------------------------------------------------------------
    def preprocess(self, x: Tensor) -> Tensor:
        """Data units → network space ξ (identity, or log10 of κ clipped at ``log_floor``)."""
        if self.preprocessing == "log10":
            return torch.log10(x.clamp_min(self.log_floor))
        return x

    def postprocess(self, xi: Tensor) -> Tensor:
        """Network space ξ → data units (identity, or 10**ξ > 0 for κ)."""
        if self.preprocessing == "log10":
            return torch.pow(10.0, xi)
        return xi

    # --- schedules -------------------------------------------------------------------
    def _step_value(self, step: int | None) -> int:
        if step is None:
            return int(self.step)
        return check_int(self.display_name, "step", step, lo=0)

    def beta(self, step: int | None = None) -> float:
        """KL weight β at ``step`` (default: the current ``step`` buffer)."""
        s, c = self._step_value(step), self.config
        warm = c["beta_warmup_steps"]
        frac = 1.0 if warm == 0 else min(1.0, s / warm)
        return c["beta_start"] + (c["beta_max"] - c["beta_start"]) * frac

    def bottleneck_weight(self, step: int | None = None) -> float:
        """Bottleneck-penalty weight w at ``step``: linear decay from ``l2_bottleneck`` to 0."""
        s, c = self._step_value(step), self.config
        decay = c["l2_bottleneck_decay_steps"]
        if decay == 0:
            return 0.0
        return c["l2_bottleneck"] * max(0.0, 1.0 - s / decay)

    # --- network ---------------------------------------------------------------------
    def _check_input(self, x: Any) -> None:
        check_map_input(x, self.display_name, 1, size=self.size)

    def _check_latent(self, z: Any, where: str) -> None:
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z)
            raise ValueError(
                f"{self.display_name}: {where} z must have shape (B, {self.latent_dim}), "
                f"got {shape}"
            )
        if not z.is_floating_point():
            raise ValueError(f"{self.display_name}: {where} z must be floating point")

    def _encode_code(self, xi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = torch.flatten(self.encoder(xi), 1)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar, h

    def _decode_code(self, z: Tensor, logits: bool = False) -> tuple[Tensor, Tensor]:
        """Decoder output ξ̂ (or, with ``logits`` and a sigmoid output, its pre-activation)."""
        h = self.from_latent(z)
        side, ch = self.bottleneck_side, self.bottleneck_channels
        layers = self.decoder
        if logits and self.output_activation == "sigmoid":
            layers = self.decoder[:-1]
        return layers(h.view(h.shape[0], ch, side, side)), h

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data-unit maps ``(B, 1, S, S)`` → posterior ``(μ, log σ²)``, each ``(B, latent_dim)``."""
        self._check_input(x)
        mu, logvar, _ = self._encode_code(self.preprocess(x))
        return mu, logvar

    def decode_preprocessed(self, z: Tensor) -> Tensor:
        """Latent codes ``(B, latent_dim)`` → decoder output ξ̂ ``(B, 1, S, S)`` (network space)."""
        self._check_latent(z, "decode")
        return self._decode_code(z)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Latent codes ``(B, latent_dim)`` → maps ``(B, 1, S, S)`` in data units.

        Source: surface brightness in [0, 1] (sigmoid); κ: 10**ξ̂ > 0.
        """
        return self.postprocess(self.decode_preprocessed(z))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reconstruction of ``x`` ``(B, 1, S, S)``, in data units.

        Without ``generator``: the decoded posterior mean, decode(μ) (deterministic). With a
        generator: decode(μ + σ ε), ε ~ N(0, I) drawn from it.
        """
        mu, logvar = self.encode(x)
        z = mu
        if generator is not None:
            z = mu + (0.5 * logvar).exp() * self._normal(mu.shape, generator, mu)
        return self.decode(z)

    @staticmethod
    def _normal(shape: torch.Size | tuple[int, ...], generator: torch.Generator, like: Tensor):
        eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
        return eps.to(like.device)

    def _param_like(self) -> Tensor:
        return self.from_latent.weight

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` maps ``(n, 1, S, S)`` (data units) decoded from prior draws z ~ N(0, I)."""
        n = check_int(self.display_name, "n", n)
        _check_generator(f"{self.display_name}.sample", generator)
        z = self._normal((n, self.latent_dim), generator, self._param_like())
        return self.decode(z)

    @torch.no_grad()
    def sample_near(self, z: Tensor, sigma: float, n: int, generator: torch.Generator) -> Tensor:
        """Maps decoded from ``z + sigma · N(0, I)``: the fine-tuning sampling distribution.

        Parameters
        ----------
        z : Tensor
            ``(B, latent_dim)`` centres, e.g. the posterior means of the RIM's baseline
            prediction (:meth:`encode`).
        sigma : float
            Isotropic standard deviation in latent units, >= 0 (paper: 0.3, Table 3).
        n : int
            Draws per centre (>= 1).
        generator : torch.Generator
            Source of the noise.

        Returns
        -------
        Tensor
            ``(B·n, 1, S, S)`` in data units; rows ``b·n … b·n + n − 1`` come from ``z[b]``.
        """
        self._check_latent(z, "sample_near")
        sigma = check_float(self.display_name, "sigma", sigma, 0.0, 1e3)
        n = check_int(self.display_name, "n", n)
        _check_generator(f"{self.display_name}.sample_near", generator)
        centres = z.to(self._param_like()).repeat_interleave(n, dim=0)
        return self.decode(centres + sigma * self._normal(centres.shape, generator, centres))

    # --- objective -------------------------------------------------------------------
    def _noise_generator(self) -> torch.Generator:
        rank = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        seed = ((self.noise_seed * 1_000_003 + int(self.step)) * 65_537 + rank) % _MAX_SEED
        return torch.Generator().manual_seed(seed)

    def reconstruction_loss(self, xi_hat: Tensor, xi: Tensor) -> Tensor:
        """Per-example reconstruction error in network space, ``(B,)``.

        ``"sum"`` / ``"mean"``: squared error summed / averaged over the pixels. ``"bce"``:
        ``xi_hat`` are the decoder's logits; Bernoulli cross-entropy with the continuous targets
        ξ ∈ [0, 1] minus the targets' entropy, summed over the pixels — zero for a perfect
        reconstruction, and its gradient with respect to the logits, σ(ℓ) − ξ, does not vanish
        when the sigmoid saturates (a squared error on a saturated sigmoid does, which lets a
        source VAE collapse onto a blank image).
        """
        mode = self.config["reconstruction"]
        if mode == "bce":
            t = xi.clamp(0.0, 1.0)
            ce = nn.functional.binary_cross_entropy_with_logits(xi_hat, t, reduction="none")
            ent = -(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t))
            return (ce - ent).flatten(1).sum(1)
        err = (xi_hat - xi).square().flatten(1)
        return err.sum(1) if mode == "sum" else err.mean(1)

    def loss_terms(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Batch means of the objective's terms at the current ``step`` (no step update).

        Parameters
        ----------
        batch : mapping
            Holds ``data_key`` (``"source"`` or ``"kappa"``): maps ``(B, 1, S, S)`` in data
            units; other keys are ignored.
        generator : torch.Generator, optional
            Noise of z = μ + σ ε in training mode (default: the private per-step generator).
            In eval mode z = μ.

        Returns
        -------
        dict of Tensor
            ``reconstruction``, ``kl``, ``bottleneck`` (unweighted batch means), ``beta`` and
            ``bottleneck_weight`` (the schedule values) and ``total``.
        """
        if not isinstance(batch, Mapping) or self.data_key not in batch:
            keys = list(batch) if isinstance(batch, Mapping) else type(batch)
            raise ValueError(
                f"{self.display_name}: batch must be a dict holding {self.data_key!r} maps "
                f"(B, 1, {self.size}, {self.size}); got {keys}"
            )
        x = batch[self.data_key]
        self._check_input(x)
        x = x.to(self._param_like().dtype) if x.dtype != self._param_like().dtype else x
        xi = self.preprocess(x)
        mu, logvar, h_enc = self._encode_code(xi)
        z = mu
        if self.training:
            if generator is None:
                generator = self._noise_generator()
            else:
                _check_generator(f"{self.display_name}.training_loss", generator)
            z = mu + (0.5 * logvar).exp() * self._normal(mu.shape, generator, mu)
        xi_hat, h_dec = self._decode_code(z, logits=self.config["reconstruction"] == "bce")
        recon = self.reconstruction_loss(xi_hat, xi).mean()
        kl = gaussian_kl(mu, logvar).mean()
        bottleneck = (h_dec - h_enc).square().mean(1).mean()
        beta, weight = self.beta(), self.bottleneck_weight()
        total = recon + beta * kl + weight * bottleneck
        as_t = {"device": recon.device, "dtype": recon.dtype}
        return {
            "reconstruction": recon,
            "kl": kl,
            "bottleneck": bottleneck,
            "beta": torch.tensor(beta, **as_t),
            "bottleneck_weight": torch.tensor(weight, **as_t),
            "total": total,
        }

    def training_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> Tensor:
        """Scalar objective for the engine (see module docstring); in training mode the
        ``step`` buffer is incremented after the loss is built."""
        total = self.loss_terms(batch, generator)["total"]
        if self.training:
            with torch.no_grad():
                self.step += 1
        return total


@NETWORKS.register("vae-source")
class SourceVAE(ConvVAE):
    """Background-source VAE of Table 5 (128², 3 levels × 2 convs, latent 32): 3,567,361
    parameters; sigmoid output, no preprocessing, β 0.1 → 0.1; trains on ``batch["source"]``."""

    display_name: ClassVar[str] = "vae-source"
    registry_name: ClassVar[str] = "vae-source"


@NETWORKS.register("vae-kappa")
class KappaVAE(ConvVAE):
    """Convergence VAE of Table 6 (128², 4 levels × 1 conv, latent 16): 1,980,033 parameters;
    log10 preprocessing, identity output, β 0.1 → 0.2; trains on ``batch["kappa"]``."""

    preset: ClassVar[dict[str, Any]] = {
        "size": 128,
        "levels": 4,
        "conv_per_level": 1,
        "latent_dim": 16,
        "filters": 16,
        "output_activation": "identity",
        "preprocessing": "log10",
        "reconstruction": "sum",
        "beta_max": 0.2,
        "beta_warmup_steps": 50_000,
        "l2_bottleneck_decay_steps": 10_000,
        "data_key": "kappa",
    }
    display_name: ClassVar[str] = "vae-kappa"
    registry_name: ClassVar[str] = "vae-kappa"


@NETWORKS.register("vae-source-small")
class SourceVAESmall(SourceVAE):
    """CPU preset of ``vae-source``: 64², 8 first-level filters, shorter schedules
    (495,009 parameters)."""

    preset: ClassVar[dict[str, Any]] = {
        **SourceVAE.preset,
        "size": 64,
        "filters": 8,
        "beta_warmup_steps": 5_000,
        "l2_bottleneck_decay_steps": 2_000,
    }
    display_name: ClassVar[str] = "vae-source-small"
    registry_name: ClassVar[str] = "vae-source-small"


@NETWORKS.register("vae-kappa-small")
class KappaVAESmall(KappaVAE):
    """CPU preset of ``vae-kappa``: 64², 8 first-level filters, shorter schedules
    (395,217 parameters)."""

    preset: ClassVar[dict[str, Any]] = {
        **KappaVAE.preset,
        "size": 64,
        "filters": 8,
        "beta_warmup_steps": 5_000,
        "l2_bottleneck_decay_steps": 2_000,
    }
    display_name: ClassVar[str] = "vae-kappa-small"
    registry_name: ClassVar[str] = "vae-kappa-small"
