"""Starting weights of an encoder (recipe ``encoder.weights``), found offline and fitted to any band count.

``encoder.weights`` names the weights a run starts from instead of a random init:

* a **TorchGeo weights name**, ``<Model>_Weights.<NAME>`` such as
  ``ResNet18_Weights.SENTINEL2_ALL_MOCO`` (the SSL4EO-S12 MoCo ResNet-18, Wang et al.,
  arXiv:2211.07044). TorchGeo (0.10) downloads them with ``torch.hub.load_state_dict_from_url``,
  which keeps the file in ``torch.hub.get_dir()/checkpoints/`` under the last part of
  the weights' URL (``resnet18_sentinel2_all_moco-59bfdff9.pth``); geocl reads that file.
  Only weights whose ``meta["model"]`` is a timm architecture (TorchGeo's ResNets and
  ViTs) fit a geocl encoder; the file is a plain timm state dict (classifier optional).
* a **timm pretrained tag**, ``<architecture>.<tag>`` such as ``resnet18.a1_in1k``, or
  an architecture alone for its default tag. timm (1.0) downloads from the Hugging Face
  hub into the hub's cache (``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``, layout
  ``models--timm--resnet18.a1_in1k/snapshots/<commit>/model.safetensors`` with
  ``refs/main`` naming the commit), preferring ``model.safetensors`` to
  ``pytorch_model.bin``, as timm's ``load_state_dict_from_hf`` does; weights that timm
  only has at a URL are looked up in the torch hub cache as above.
* a **file**: a state dict in ``.pth``/``.pt``/``.bin`` (read with
  ``torch.load(weights_only=True)``, also when wrapped in ``{"state_dict": ...}`` or
  ``{"model": ...}``, ``module.`` prefixes of DDP removed) or ``.safetensors``; or a
  geocl pretraining checkpoint (``.ckpt``), whose encoder is taken.

Nothing is ever downloaded: a name whose file is not in the cache stops with one
:class:`WeightsNotFoundError` line giving the command that lets TorchGeo or timm fetch
it once on a machine with network, and the cache path it will land in. The cache
folders are read at call time from the same environment variables TorchGeo and timm
use (``TORCH_HOME``, ``XDG_CACHE_HOME``, ``HF_HOME``, ``HF_HUB_CACHE``).

``encoder.pretrained: true`` (timm's ImageNet weights) is short for ``encoder.weights:``
the encoder's default timm tag (``resnet18`` -> ``resnet18.a1_in1k``), read from the
cache the same way; giving both is an error, since they would name two starting points.

**Band count.** When the tile set has C bands and the weights' first convolution
(timm's ``pretrained_cfg["first_conv"]``: ``conv1`` of a ResNet, ``patch_embed.proj``
of a ViT) was trained on C_w, the first-convolution weight ``W[o, c, i, j]`` becomes
``W'`` by the rule of timm's ``timm.models.adapt_input_conv``, by band position:

* C = C_w: unchanged;
* C = 1: ``W'[o, 0] = sum_c W[o, c]`` (a grey image gives what C_w equal bands gave);
* otherwise: ``W'[o, b] = W[o, b mod C_w] * C_w / C`` for b = 0 .. C-1: the weights'
  channels repeated cyclically (fewer bands: the first C of them) and scaled by C_w / C,
  as timm does (exact for equal bands only when C is a multiple of C_w).

Why timm's rule and not the one of TorchGeo's trainers: those drop the pretrained first
convolution when the band counts differ (random init, with a warning), which throws away
the stem that matters most with few labels; TorchGeo's own detection and instance
segmentation tasks adapt their stems with timm's ``adapt_input_conv`` too. The mapping
is by position: order the tile set's bands as the weights' (TorchGeo names them in
``meta["bands"]``, recorded with the run) to give each pretrained filter its band.

Other weights are fitted as timm fits its own: the architecture module's
``checkpoint_filter_fn`` runs first where timm has one (it resamples a ViT's position
embedding and patch kernel to the encoder's ``img_size``/``patch_size``), classifier
weights are left out, and a missing final ``norm`` (TorchGeo's MAE encoder files have
none; TorchGeo accepts that too) keeps timm's initial identity. Any other missing
weight or shape mismatch is an error naming it.

**Normalisation.** geocl normalises every band with the tile set's stored per-band
mean and standard deviation (z-scores), in pretraining, finetuning and prediction
alike, and does not apply the weights' own preprocessing (TorchGeo's
``weights.transforms``, e.g. SSL4EO-S12's division by 10 000, or timm's ImageNet mean
and std). The pretrained filters therefore see z-scored bands rather than the values
they were trained on; the first BatchNorm (ResNet) or LayerNorm (ViT) re-normalises
their responses, and training adapts the rest.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import timm
import torch
from timm.models import adapt_input_conv, get_pretrained_cfg, model_entrypoint
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.models.checkpoints import checkpoint_fingerprint, pretrain_encoder_state, unreadable_reason

#: File name endings read as weights files.
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
#: How ``encoder.weights`` values look (the end of every "unknown weights" message).
NAME_FORMS = (
    "a TorchGeo weights name (ResNet18_Weights.SENTINEL2_ALL_MOCO), a timm pretrained tag "
    "(resnet18.a1_in1k) or a weights file (.pth, .pt, .bin, .safetensors, or a geocl pretraining .ckpt)"
)
#: Weights the encoder may lack in a file: the final norm of TorchGeo's MAE encoders
#: (TorchGeo's ViT builders accept their absence too). They keep timm's initial values.
OPTIONAL_KEYS = frozenset({"norm.weight", "norm.bias"})
#: A TorchGeo weights enum member's name (``ResNet18_Weights.SENTINEL2_ALL_MOCO``).
TORCHGEO_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*_Weights\.\w+")

Source = Literal["torchgeo", "timm", "file", "geocl checkpoint"]


class WeightsNotFoundError(GeoclError, FileNotFoundError):
    """Named weights whose file is not in the local cache (geocl downloads nothing).

    Its message says where the file is looked for and how to let TorchGeo or timm
    download it once.
    """


@dataclass(frozen=True)
class StartingWeights:
    """Weights read from a file, before they are fitted to an encoder.

    Attributes:
        name: ``encoder.weights`` as given (or the tag ``encoder.pretrained`` stands for).
        source: ``torchgeo``, ``timm``, ``file`` or ``geocl checkpoint``.
        path: the file read.
        architecture: the timm model the weights are for, where the source says it
            (None for a plain file).
        state_dict: timm parameter name -> tensor, as stored (CPU).
        bands: names of the bands the weights were trained on, in order (TorchGeo's
            ``meta["bands"]``), where known.
    """

    name: str
    source: Source
    path: Path
    architecture: str | None
    state_dict: Mapping[str, Tensor] = field(repr=False)
    bands: tuple[str, ...] | None = None


# ------------------------------------------------------------------ caches


def torch_hub_checkpoints() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where TorchGeo's (and timm's URL) downloads are kept."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment now (as ``huggingface_hub`` reads it at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def url_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps (or would keep) the file of ``url``."""
    return torch_hub_checkpoints() / os.path.basename(urlparse(url).path)


# ------------------------------------------------------------------ names


def resolve_weights(name: str, *, key: str = "encoder.weights") -> StartingWeights:
    """Read the weights ``name`` stands for from the local file or cache (nothing is downloaded).

    Args:
        name: a TorchGeo weights name, a timm pretrained tag (or architecture), or a file.
        key: the recipe key or option that gave ``name`` (named in errors).

    Raises:
        WeightsNotFoundError: a name whose file is not in the cache, or a missing file.
        GeoclError: an unknown name (listing how names look), weights geocl cannot build
            an encoder for, or a file that holds no state dict.
    """
    text = name.strip()
    path = Path(text).expanduser()
    if path.is_file():
        return read_weights_file(path, name=name, key=key)
    if text.lower().endswith(WEIGHTS_SUFFIXES) or os.sep in text or (os.altsep and os.altsep in text):
        raise WeightsNotFoundError(f"no such weights file (given by {key})", path=path)
    if TORCHGEO_NAME.fullmatch(text):
        return _torchgeo_weights(text, key)
    if _is_timm_tag(text):
        return _timm_weights(text, key)
    close = difflib.get_close_matches(text, [*_timm_tags(), *_torchgeo_names_cached()], n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise GeoclError(f"unknown weights {name!r}{hint} (give {NAME_FORMS})", key=key)


def default_tag(architecture: str, *, key: str = "encoder.pretrained") -> str:
    """The timm tag ``encoder.pretrained: true`` stands for (``resnet18`` -> ``resnet18.a1_in1k``).

    Raises:
        GeoclError: timm has no pretrained weights for the architecture.
    """
    config = get_pretrained_cfg(architecture)
    if config is None or not (config.hf_hub_id or config.url):
        raise GeoclError(f"timm has no pretrained weights for {architecture!r}", key=key)
    return f"{architecture}.{config.tag}" if config.tag else architecture


def starting_weights_name(architecture: str, pretrained: bool, weights: str) -> str:
    """What the encoder starts from: ``weights``, or the default tag ``pretrained`` stands for ('' = random).

    Raises:
        GeoclError: both are given (key ``encoder.pretrained``).
    """
    if pretrained and weights:
        raise GeoclError(
            f"give encoder.pretrained or encoder.weights, not both (pretrained: true is short for "
            f"weights: {default_tag(architecture)}; weights is {weights!r})",
            key="encoder.pretrained",
        )
    return default_tag(architecture) if pretrained else weights


@cache
def _timm_tags() -> tuple[str, ...]:
    return tuple(timm.list_pretrained())


@cache
def _torchgeo_names() -> dict[str, Any]:
    """TorchGeo weights by their names (imports TorchGeo's models: only when a TorchGeo name is asked for)."""
    from torchgeo.models import get_model_weights, list_models

    found: dict[str, Any] = {}
    for model in list_models():
        try:
            enum = get_model_weights(model)
        except KeyError:  # a model without weights
            continue
        found.update({str(member): member for member in enum})
    return found


def _torchgeo_names_cached() -> tuple[str, ...]:
    """TorchGeo names for "did you mean", only if TorchGeo's models are imported already (they are slow to import)."""
    return tuple(_torchgeo_names()) if "torchgeo.models" in sys.modules else ()


def _is_timm_tag(text: str) -> bool:
    """A timm ``architecture.tag``, or an architecture alone that has pretrained weights."""
    if text in _timm_tags():
        return True
    config = get_pretrained_cfg(text) if "." not in text and text in timm.list_models() else None
    return config is not None and bool(config.hf_hub_id or config.url)


def _torchgeo_weights(name: str, key: str) -> StartingWeights:
    names = _torchgeo_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise GeoclError(f"TorchGeo has no weights {name!r}{hint} (give {NAME_FORMS})", key=key)
    weights = names[name]
    architecture = weights.meta.get("model")
    if architecture not in timm.list_models():
        raise GeoclError(
            f"{name} are weights of TorchGeo's {architecture or 'own'} model, not of a timm encoder; "
            "geocl starts from TorchGeo's ResNet and ViT weights",
            key=key,
        )
    path = url_file(weights.url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{name} is not in the torch hub cache ({path}) and geocl downloads nothing: on a machine with "
            f'network run once  python -c "from torchgeo.models import get_weight; '
            f"get_weight('{name}').get_state_dict()\"  (it saves the file there; TORCH_HOME moves the cache), "
            f"or set {key} to a copy of the file",
            key=key,
        )
    state = _state_dict_of(_load(path), path)
    bands = weights.meta.get("bands")
    return StartingWeights(name, "torchgeo", path, architecture, state, tuple(bands) if bands else None)


def _timm_weights(tag: str, key: str) -> StartingWeights:
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import _get_safe_alternatives, hf_split

    config = get_pretrained_cfg(tag)
    if config is None:
        raise GeoclError(f"timm has no pretrained weights {tag!r} (give {NAME_FORMS})", key=key)
    if config.custom_load:
        raise GeoclError(
            f"timm reads {tag} with code of its own (not a state dict); geocl cannot start from it", key=key
        )
    architecture = config.architecture or tag.split(".", 1)[0]
    candidates: list[Path] = []
    cache = hf_hub_cache()
    if config.hf_hub_id:
        repo, revision = hf_split(config.hf_hub_id)
        stored = config.hf_hub_filename or "pytorch_model.bin"
        # timm's order (load_state_dict_from_hf): the safetensors alternative first
        files = [stored] if stored.endswith(".safetensors") else [*_get_safe_alternatives(stored), stored]
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache, revision=revision)
            if isinstance(found, str):
                path = Path(found)
                return StartingWeights(tag, "timm", path, architecture, _state_dict_of(_load(path), path))
        candidates.append(cache / f"models--{repo.replace('/', '--')}")
    if config.url:  # timm's old cache: where torch.hub.load_state_dict_from_url keeps the URL's file
        path = url_file(config.url if isinstance(config.url, str) else config.url[0])
        if path.is_file():
            return StartingWeights(tag, "timm", path, architecture, _state_dict_of(_load(path), path))
        candidates.append(path)
    if not candidates:
        raise GeoclError(f"timm lists no weights file for {tag!r}", key=key)
    where = " or ".join(str(path) for path in candidates)
    raise WeightsNotFoundError(
        f"timm weights {tag} are not in the cache ({where}) and geocl downloads nothing: on a machine with "
        f"network run once  python -c \"import timm; timm.create_model('{tag}', pretrained=True)\"  "
        f"(it saves them there; HF_HOME moves the cache), or set {key} to a copy of the file",
        key=key,
    )


# ------------------------------------------------------------------ files


def read_weights_file(
    path: str | os.PathLike[str], *, name: str | None = None, key: str = "encoder.weights"
) -> StartingWeights:
    """A weights file's state dict: ``.safetensors``, a torch state dict, or a geocl pretraining checkpoint.

    Raises:
        GeoclError: naming the file, when it cannot be read or holds no state dict.
    """
    path = Path(path)
    data = _load(path)
    if isinstance(data, dict) and "geocl" in data:
        # the checkpoint's reader (imported here: geocl.finetune.model imports this package)

        loaded = pretrain_encoder_state(data, path)
        architecture = str(loaded["meta"]["encoder"]).removeprefix("tu-")
        return StartingWeights(name or str(path), "geocl checkpoint", path, architecture, loaded["encoder_state"])
    return StartingWeights(name or str(path), "file", path, None, _state_dict_of(data, path))


def _load(path: Path) -> Any:
    """A file's contents on the CPU: safetensors, else ``torch.load(weights_only=True)`` (no code runs)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise GeoclError(f"is not a readable safetensors file ({error})", path=path) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsNotFoundError("no such weights file", path=path) from None
    except Exception as error:
        remedy = "save the model's state_dict() (tensors only) instead of the model object"
        raise GeoclError(unreadable_reason(error, remedy), path=path) from None


def _state_dict_of(data: Any, path: Path) -> dict[str, Tensor]:
    """A state dict's tensors, unwrapped from ``{"state_dict": ...}`` or ``{"model": ...}``, DDP's ``module.`` off."""
    if isinstance(data, dict) and not all(isinstance(value, Tensor) for value in data.values()):
        inner = next((data[k] for k in ("state_dict", "model") if isinstance(data.get(k), dict)), None)
        if inner is None:
            raise GeoclError("holds no state dict (a mapping of parameter names to tensors)", path=path)
        data = inner
    if not isinstance(data, dict) or not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise GeoclError("holds no state dict (a mapping of parameter names to tensors)", path=path)
    return {str(k).removeprefix("module."): v for k, v in data.items()}


# ------------------------------------------------------------------ fitting


def first_conv_names(architecture: str) -> tuple[str, ...]:
    """The input convolution(s) of a timm architecture (its ``pretrained_cfg["first_conv"]``)."""
    config = get_pretrained_cfg(architecture)
    names = getattr(config, "first_conv", None) if config is not None else None
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def adapt_band_count(weight: Tensor, in_chans: int) -> Tensor:
    """A first-convolution weight ``[O, C_w, k, k]`` -> ``[O, C, k, k]`` for C = ``in_chans`` (the module's rule)."""
    return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


def band_mapping(weights_bands: int, in_chans: int) -> str:
    """The rule :func:`adapt_band_count` applies, in words (recorded in checkpoints)."""
    if weights_bands == in_chans:
        return f"unchanged ({in_chans} bands)"
    if in_chans == 1:
        return f"band 0 = sum of the {weights_bands} weight channels"
    channels = ", ".join(str(band % weights_bands) for band in range(in_chans))
    scale = Fraction(weights_bands, in_chans)
    return f"bands 0..{in_chans - 1} = weight channels {channels}, times {scale} ({float(scale):.4g})"


def _filter_fn(architecture: str) -> Any:
    """timm's ``checkpoint_filter_fn`` of the architecture's module, None where it has none."""
    return getattr(sys.modules[model_entrypoint(architecture).__module__], "checkpoint_filter_fn", None)


def fit_weights(
    weights: StartingWeights, target: nn.Module, architecture: str, in_chans: int, *, key: str = "encoder.weights"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Fit weights to a timm encoder module: its state dict, band count adapted, and the record of what was done.

    Args:
        weights: from :func:`resolve_weights`.
        target: the timm model (or smp's ``tu-`` wrapper of it) the weights are for; only
            its state dict's names and shapes are read.
        architecture: its timm name.
        in_chans: its band count C.
        key: named in errors.

    Returns:
        ``(state, record)``: ``state`` holds a tensor for every entry of the target's state
        dict except the :data:`OPTIONAL_KEYS` the weights lack; ``record`` (plain data)
        names the weights, file, SHA-256, band counts and :func:`band_mapping`.

    Raises:
        GeoclError: weights of another architecture, or weights that do not fit (naming
            the first missing or mismatching one).
    """
    if weights.architecture is not None and weights.architecture != architecture:
        raise GeoclError(
            f"{weights.name} are weights of {weights.architecture}, the encoder is {architecture}: "
            f"set encoder.name: {weights.architecture}",
            key=key,
        )
    state = dict(weights.state_dict)
    own = target.state_dict()
    filter_fn = _filter_fn(architecture)
    if filter_fn is not None:
        try:
            state = filter_fn(state, target)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            raise GeoclError(f"{weights.name} do not fit encoder {architecture} ({reason})", key=key) from None
    weights_bands: int | None = None
    for conv in first_conv_names(architecture):
        name = f"{conv}.weight"
        weight = state.get(name)
        if isinstance(weight, Tensor) and weight.ndim == 4 and name in own:
            weights_bands = int(weight.shape[1])
            if weights_bands != in_chans:
                state[name] = adapt_band_count(weight, in_chans)
    missing = [name for name in own if name not in state and name not in OPTIONAL_KEYS]
    if missing:
        raise GeoclError(
            f"{weights.name} do not fit encoder {architecture}: {len(missing)} of its weights are not in "
            f"{weights.path.name} (e.g. {missing[0]})",
            key=key,
        )
    for name, tensor in own.items():
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise GeoclError(
                f"{weights.name} do not fit encoder {architecture}: {name} is {tuple(state[name].shape)} in "
                f"{weights.path.name}, {tuple(tensor.shape)} in the encoder",
                key=key,
            )

    record: dict[str, Any] = {
        "weights": weights.name,
        "source": weights.source,
        "file": str(weights.path.absolute()),
        "sha256": checkpoint_fingerprint(weights.path),
        "architecture": architecture,
        "weights_bands": weights_bands,
        "in_chans": in_chans,
        "band_mapping": band_mapping(weights_bands, in_chans) if weights_bands else "no input convolution found",
        "kept_initial": sorted(name for name in own if name not in state),
    }
    if weights.bands:
        record["bands"] = list(weights.bands)
    return {name: state[name] for name in own if name in state}, record


def load_starting_weights(
    target: nn.Module, name: str, architecture: str, in_chans: int, *, key: str = "encoder.weights"
) -> dict[str, Any]:
    """Resolve ``name``, fit it to ``target`` and copy it in; returns the record (see :func:`fit_weights`)."""
    state, record = fit_weights(resolve_weights(name, key=key), target, architecture, in_chans, key=key)
    target.load_state_dict(state, strict=False)
    return record
