"""A trained model as one directory, and loading it back safely.

Layout of a model directory::

    model/
      weights.pt           state_dict of the network (tensors only; torch.load weights_only=True)
      model.json           format tag, network registry name + config, training config,
                           input shape, loss, lensml version
      normalisation.json   label names, mean, std (and input normalisation, if any)
      lensml_version       the version of lensml that wrote it (plain text)

The directory is written into a temporary sibling and renamed into place, so it is complete or
absent. :func:`load_model` rebuilds the network through :data:`lensml.registry.NETWORKS` by name
and reports anything that is not a lensml model with one :class:`ModelLoadError` naming the file.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lensml import __version__
from lensml.registry import NETWORKS
from lensml.train.loaders import split_sample
from lensml.train.normalisation import Normalisation

__all__ = [
    "MODEL_FORMAT",
    "ModelInfo",
    "ModelLoadError",
    "build_network",
    "load_model",
    "network_spec",
    "predict",
    "save_model",
]

#: Value of ``model.json["format"]``.
MODEL_FORMAT = "lensml-model"
_SPEC_ATTR = "_lensml_network_spec"


class ModelLoadError(ValueError):
    """A path that is not a loadable lensml model; the message names the file and the problem."""


@dataclass
class ModelInfo:
    """What :func:`load_model` knows about a model besides its weights.

    Attributes
    ----------
    path : Path
    network : str
        Registry name in :data:`lensml.registry.NETWORKS`.
    network_config : dict
    normalisation : Normalisation
    train_config : dict
    lensml_version : str
    input_shape : list of int or None
        Shape of one input sample the network was trained on.
    loss : str
        ``"gaussian_nll"`` models predict means and standard deviations.
    """

    path: Path
    network: str
    network_config: dict[str, Any]
    normalisation: Normalisation
    train_config: dict[str, Any] = field(default_factory=dict)
    lensml_version: str = ""
    input_shape: list[int] | None = None
    loss: str = "mse"
    extra: dict[str, Any] = field(default_factory=dict)


def _ensure_networks_registered() -> None:
    """Import the modules that register networks (toy networks and ``lensml.nets`` if present)."""
    importlib.import_module("lensml.train.toy")
    try:
        importlib.import_module("lensml.nets")
    except ModuleNotFoundError as err:
        if err.name not in ("lensml.nets",):
            raise


def build_network(
    name: str, config: Mapping[str, Any] | None = None, seed: int | None = None
) -> nn.Module:
    """Build the network registered as ``name`` from its config.

    The registered object is called with the config as keyword arguments (or, if it has a
    ``from_config`` class method, with the mapping). The returned module remembers
    ``(name, config)`` so that :func:`lensml.train.fit` can save it without being told again.
    With ``seed`` the initial weights are redrawn by :func:`lensml.train.init.seeded_init`
    from a private generator, so ``(name, config, seed)`` fixes them.

    Raises
    ------
    ValueError
        For an unknown name (listing the known ones) or a config the network rejects.
    """
    _ensure_networks_registered()
    try:
        factory = NETWORKS.get(name)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    cfg = dict(config or {})
    try:
        json.dumps(cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"network {name!r}: config must hold JSON values only ({err})") from None
    try:
        net = factory.from_config(cfg) if hasattr(factory, "from_config") else factory(**cfg)
    except TypeError as err:
        raise ValueError(f"network {name!r}: invalid config {cfg}: {err}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"network {name!r} did not build an nn.Module")
    if seed is not None:
        from lensml.train.init import seeded_init

        seeded_init(net, seed)
    setattr(net, _SPEC_ATTR, (name.lower(), cfg))
    return net


def network_spec(net: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(registry name, config)`` of a module built by :func:`build_network`, else None.

    A module that carries a ``registry_name`` attribute and a ``config`` mapping (or pydantic
    model) is also recognised.
    """
    spec = getattr(net, _SPEC_ATTR, None)
    if spec is not None:
        return spec[0], dict(spec[1])
    name = getattr(net, "registry_name", None)
    cfg = getattr(net, "config", None)
    if isinstance(name, str) and cfg is not None:
        if hasattr(cfg, "model_dump"):
            cfg = cfg.model_dump(mode="json")
        if isinstance(cfg, Mapping):
            return name.lower(), dict(cfg)
    return None


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def save_model(
    out_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    network: str,
    network_config: Mapping[str, Any],
    normalisation: Normalisation,
    train_config: Mapping[str, Any] | None = None,
    input_shape: list[int] | None = None,
    loss: str = "mse",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory atomically (replacing an existing one).

    Parameters
    ----------
    out_dir : path
        The model directory to create.
    state_dict : mapping of str to Tensor
        Network weights (e.g. ``net.state_dict()``); moved to CPU.
    network, network_config
        Registry name and JSON-able config that rebuild the network.
    normalisation : Normalisation
    train_config : mapping, optional
        The effective training config (JSON-able).
    input_shape : list of int, optional
        Shape of one input sample; :func:`predict` checks inputs against it.
    loss : str
        Training loss name (``gaussian_nll`` models output means and log-variances).
    extra : mapping, optional
        More JSON-able metadata stored under ``model.json["extra"]``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    weights = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state_dict entry {k!r} is not a tensor ({type(v).__name__})")
        weights[k] = v.detach().cpu().clone()
    meta = {
        "format": MODEL_FORMAT,
        "format_version": 1,
        "lensml_version": __version__,
        "network": {"name": network.lower(), "config": dict(network_config)},
        "train_config": dict(train_config or {}),
        "input_shape": list(input_shape) if input_shape is not None else None,
        "loss": loss,
        "extra": dict(extra or {}),
    }
    try:
        meta_text = json.dumps(meta, indent=2)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model metadata must be JSON-able: {err}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        torch.save(weights, tmp / "weights.pt")
        _write_text(tmp / "model.json", meta_text)
        _write_text(tmp / "normalisation.json", normalisation.to_json())
        _write_text(tmp / "lensml_version", __version__ + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (not a lensml model directory)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from None


def _safe_torch_load(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (not a lensml model)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" in text or "global" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), "")
            raise ModelLoadError(
                f"{path}: refused to load: it holds objects other than tensors and plain values "
                f"(only weights_only=True loading is allowed). {detail}".strip()
            ) from None
        raise ModelLoadError(f"{path}: not a readable torch weights file") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, TypeError) as err:
        raise ModelLoadError(f"{path}: not a readable torch weights file ({err})") from None


def _build_for_load(name: Any, config: Any, source: Path) -> nn.Module:
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ModelLoadError(f"{source}: 'network' must hold a name (str) and a config (object)")
    try:
        return build_network(name, config)
    except ValueError as err:
        raise ModelLoadError(f"{source}: cannot rebuild network: {err}") from None


def _load_weights(net: nn.Module, state: Any, source: Path, name: str) -> None:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(f"{source}: expected a state_dict (mapping of names to tensors)")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())
        raise ModelLoadError(
            f"{source}: weights do not match network {name!r}: {msg[:400]}"
        ) from None


def _load_from_checkpoint(path: Path) -> tuple[nn.Module, ModelInfo]:
    ckpt = _safe_torch_load(path)
    state = ckpt.get("lensml") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or state.get("format") != "lensml-checkpoint":
        raise ModelLoadError(f"{path}: not a lensml model or training checkpoint")
    try:
        meta = json.loads(state["meta_json"])
        train_cfg = json.loads(state["train_config_json"])
        norm = Normalisation.from_dict(json.loads(state["normalisation_json"]), str(path))
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as err:
        raise ModelLoadError(f"{path}: malformed 'lensml' entry ({err})") from None
    net = _build_for_load(meta.get("network"), meta.get("network_config"), path)
    full = ckpt.get("state_dict", {})
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in full) else "net."
    weights = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    _load_weights(net, weights, path, meta.get("network"))
    info = ModelInfo(
        path=path,
        network=meta["network"],
        network_config=meta.get("network_config", {}),
        normalisation=norm,
        train_config=train_cfg,
        lensml_version=str(state.get("lensml_version", "")),
        input_shape=meta.get("input_shape"),
        loss=train_cfg.get("loss", {}).get("name", "mse"),
    )
    return net.eval(), info


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Load a model directory (or a lensml training checkpoint ``.ckpt`` file).

    Parameters
    ----------
    path : path
        A directory written by :func:`save_model` / :func:`lensml.train.fit`, or a
        ``checkpoints/*.ckpt`` file of a lensml training run (EMA weights when present).
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    (nn.Module, ModelInfo)
        The network in eval mode and its metadata.

    Raises
    ------
    ModelLoadError
        Naming the file: missing files, bad JSON, wrong keys, an unknown network, weights that
        do not match the network, or a pickle holding anything but tensors and plain values.
    """
    p = Path(path)
    if not p.exists():
        from lensml.models import list_models, resolve_model

        if not any(str(path).strip("/") in (m.name, f"{m.pipeline}/{m.name}")
                   for m in list_models()):  # fmt: skip
            raise ModelLoadError(f"{p}: no such model directory or checkpoint")
        p = resolve_model(path)  # a shipped model's name (lensml.models)
    if p.is_file():
        net, info = _load_from_checkpoint(p)
        return net.to(device), info
    meta = _read_json(p / "model.json")
    src = p / "model.json"
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"{src}: not a lensml model description (format != {MODEL_FORMAT!r})")
    network = meta.get("network")
    if not isinstance(network, dict) or "name" not in network or "config" not in network:
        raise ModelLoadError(f"{src}: missing 'network' with 'name' and 'config'")
    norm_path = p / "normalisation.json"
    try:
        norm = Normalisation.from_dict(_read_json(norm_path), str(norm_path))
    except ModelLoadError:
        raise
    except ValueError as err:
        raise ModelLoadError(str(err)) from None
    net = _build_for_load(network["name"], network["config"], src)
    _load_weights(net, _safe_torch_load(p / "weights.pt"), p / "weights.pt", network["name"])
    info = ModelInfo(
        path=p,
        network=network["name"],
        network_config=network["config"],
        normalisation=norm,
        train_config=meta.get("train_config") or {},
        lensml_version=str(meta.get("lensml_version", "")),
        input_shape=meta.get("input_shape"),
        loss=str(meta.get("loss", "mse")),
        extra=meta.get("extra") or {},
    )
    return net.eval().to(device), info


def _batches(inputs: Any, batch_size: int, input_key: str):
    if isinstance(inputs, torch.Tensor):
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size]
        return
    if isinstance(inputs, Dataset):
        for batch in DataLoader(inputs, batch_size=batch_size, shuffle=False):
            if isinstance(batch, torch.Tensor):
                yield batch
            elif isinstance(batch, Mapping):
                if input_key not in batch:
                    raise ValueError(f"dataset samples have no key {input_key!r}")
                yield batch[input_key]
            else:
                yield split_sample(batch)[0]
        return
    raise ValueError(f"inputs must be a tensor or a Dataset, got {type(inputs).__name__}")


@torch.no_grad()
def predict(
    model: str | Path | tuple[nn.Module, ModelInfo],
    inputs: torch.Tensor | Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    input_key: str | None = None,
) -> torch.Tensor:
    """Predictions in label units.

    The network runs in evaluation mode with its Conv2d → BatchNorm2d pairs folded into the
    convolutions (:func:`lensml.nets.inference.fold_batchnorm`); the model passed in is not
    modified.

    Parameters
    ----------
    model : path or (nn.Module, ModelInfo)
        A model directory / checkpoint, or the result of :func:`load_model`.
    inputs : Tensor or Dataset
        ``(N, *input_shape)`` tensor, or a Dataset of tensors, ``(x, y)`` tuples or dicts.
    batch_size : int
        Samples per forward pass (>= 1).
    device : str or torch.device
    input_key : str, optional
        Key of dict samples (default: the training config's ``input_key``).

    Returns
    -------
    Tensor
        ``(N, L)`` de-normalised predictions on CPU; for ``gaussian_nll`` models ``(N, 2L)``:
        the ``L`` means followed by the ``L`` standard deviations, both in label units.

    Raises
    ------
    ValueError
        For a bad ``batch_size``, inputs with NaN/inf, or a sample shape that differs from the
        one the model was trained on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from lensml.nets.inference import fold_batchnorm

    net, info = model if isinstance(model, tuple) else load_model(model, device)
    # an eval-mode copy with Conv2d → BatchNorm2d folded: same outputs, faster on CPU
    net = fold_batchnorm(net.to(device))
    key = input_key or str(info.train_config.get("input_key", "image"))
    norm = info.normalisation
    normalised = bool(info.train_config.get("normalise_labels", True))
    outs = []
    for x in _batches(inputs, batch_size, key):
        x = torch.as_tensor(x)
        if info.input_shape is not None and list(x.shape[1:]) != list(info.input_shape):
            raise ValueError(
                f"input sample shape {tuple(x.shape[1:])} does not match the shape the model "
                f"was trained on {tuple(info.input_shape)}"
            )
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("inputs contain NaN or inf values")
        x = norm.normalise_input(x.to(device=device, dtype=torch.float32))
        out = net(x).float()
        if out.ndim == 1:
            out = out[:, None]
        if info.loss in ("gaussian_nll", "huber_nll"):
            mu, logvar = out.chunk(2, dim=1)
            sigma = torch.exp(0.5 * logvar.clamp(-20.0, 20.0))
            if normalised:
                mu, sigma = norm.denormalise(mu), norm.denormalise_std(sigma)
            out = torch.cat([mu, sigma], dim=1)
        elif normalised:
            out = norm.denormalise(out)
        outs.append(out.cpu())
    if not outs:
        return torch.empty(0, len(norm.label_names))
    return torch.cat(outs)
