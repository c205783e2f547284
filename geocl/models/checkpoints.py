"""Reading geocl checkpoint files safely, and the encoder weights a pretraining checkpoint holds.

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain data
only, so a file a user received runs no code when it is opened. Low in the layers
(models): training, methods, retrieval, evaluation and finetuning all read checkpoints
through this module.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from geocl.errors import GeoclError

#: Prefix of encoder weights in a pretrain checkpoint's state dict (``PretrainMethod.encoder.body``).
PRETRAIN_ENCODER_PREFIX = "encoder.body."
#: Checkpoint key of a finetuned model's metadata (what ``geocl predict`` needs).
SEGMENTER_KEY = "geocl_segmenter"
#: What each geocl checkpoint holds besides Lightning's entries, and what made it (first match wins).
CHECKPOINT_KINDS = (
    ("geocl_semi_supervised", "a semi-supervised (FBA) finetuning checkpoint"),
    (SEGMENTER_KEY, "a finetuning checkpoint, made by `geocl finetune`"),
    ("geocl", "a pretraining checkpoint, made by `geocl pretrain`"),
)
#: How every checkpoint file written by ``torch.save`` (since PyTorch 1.6) begins: a zip archive.
ZIP_MAGIC = b"PK\x03\x04"


def pretrained_encoder_args(meta: dict[str, Any]) -> dict[str, Any]:
    """The timm arguments a pretrain checkpoint's encoder was built with (``{}`` before they existed)."""
    return dict(((meta.get("recipe") or {}).get("encoder") or {}).get("args") or {})


def read_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file's contents on the CPU, read with ``torch.load(weights_only=True)``.

    Only tensors and plain data (dicts, lists, numbers, strings) are read back: a file a
    user received cannot run code when it is opened, whatever it holds. A checkpoint
    holding any other Python object (one written by an older geocl, which stored some
    settings as objects, or by another program) is refused, naming the object's class.

    Args:
        path: the checkpoint.
        mmap: map the file instead of reading it (reading a few entries of a large file).

    Returns:
        The checkpoint; ``{}`` when the file holds something other than a dict.

    Raises:
        GeoclError: naming the file, in one line, when it is missing, a folder, empty,
            not a checkpoint at all (a text file), truncated or damaged, or holds Python
            objects.
    """
    path = Path(path)
    if path.is_dir():
        raise GeoclError("is a folder, not a checkpoint file", path=path)
    try:
        with open(path, "rb") as file:
            head = file.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise GeoclError("does not exist (no such checkpoint file)", path=path) from None
    except OSError as error:
        raise GeoclError(f"cannot be read ({error.strerror or error})", path=path) from None
    if not head:
        raise GeoclError("is empty (0 bytes), not a checkpoint", path=path)
    if head != ZIP_MAGIC:
        raise GeoclError(f"is not a checkpoint: {_not_a_checkpoint(path)}", path=path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch's unpickler on a user's file: any failure is the file's
        raise GeoclError(unreadable_reason(error), path=path) from None
    return checkpoint if isinstance(checkpoint, dict) else {}


def _not_a_checkpoint(path: Path) -> str:
    """Why a file that does not begin as a zip archive is no checkpoint, with its first bytes."""
    with open(path, "rb") as file:
        head = file.read(40)
    try:
        text = head.decode("utf-8").splitlines()[0] if head.strip() else ""
    except UnicodeDecodeError:  # cut inside a character, or binary
        text = ""
    if text and text.isprintable():
        return f"torch.save writes a zip archive, this file begins with {text!r}"
    return f"torch.save writes a zip archive, this file begins with the bytes {head[:8].hex(' ')}"


def unreadable_reason(
    error: Exception, remedy: str = "it was written by an older geocl or another program: make it again with this geocl"
) -> str:
    """One line for a file (checkpoint or weights) that ``torch.load(weights_only=True)`` refused.

    Args:
        error: what ``torch.load`` raised.
        remedy: the end of the line for a file holding Python objects.
    """
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        return (
            f"holds a Python object ({refused[1]}), and geocl reads only tensors and plain data from files, "
            f"so that opening a file runs no code; {remedy}"
        )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__  # torch adds paragraphs of advice
    return f"cannot be read: truncated or damaged ({reason})"


def checkpoint_kind(checkpoint: dict[str, Any]) -> str:
    """What made a checkpoint, in words (``a pretraining checkpoint, made by `geocl pretrain```)."""
    for key, kind in CHECKPOINT_KINDS:
        if key in checkpoint:
            return kind
    if "state_dict" in checkpoint:
        return "a checkpoint not made by geocl"
    return "not a checkpoint of a model"


def checkpoint_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 of a file's bytes (what identifies a checkpoint's content), None when unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(2**20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def read_pretrain_checkpoint(path: str | os.PathLike[str], momentum_encoder: bool = False) -> dict[str, Any]:
    """The ``geocl`` entry and encoder weights of a pretrain checkpoint (any method).

    Args:
        path: the checkpoint.
        momentum_encoder: read the method's momentum (EMA) encoder instead of the
            online one (MoCo, PatchMix, MultiNet).

    Returns:
        ``{"meta": <checkpoint["geocl"]>, "encoder_state": {timm key: tensor}}``.

    Raises:
        GeoclError: if the file is not a geocl pretrain checkpoint.
    """
    return pretrain_encoder_state(read_checkpoint(path), path, momentum_encoder)


def pretrain_encoder_state(
    checkpoint: dict[str, Any], path: str | os.PathLike[str], momentum_encoder: bool = False
) -> dict[str, Any]:
    """:func:`read_pretrain_checkpoint` of a checkpoint already read (``path`` is named in errors)."""
    meta = checkpoint.get("geocl")
    if not isinstance(meta, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise GeoclError(
            f"is {checkpoint_kind(checkpoint)}, not a pretraining checkpoint (made by `geocl pretrain`)", path=path
        )
    if type(meta.get("in_chans")) is not int or not isinstance(meta.get("encoder"), str):
        raise GeoclError("is a pretraining checkpoint without its band count or encoder name (damaged)", path=path)
    prefix = PRETRAIN_ENCODER_PREFIX
    if momentum_encoder:
        attribute = meta.get("momentum_encoder_attribute")
        if not attribute:
            raise GeoclError(f"method {meta.get('method')!r} keeps no momentum encoder", path=path)
        prefix = f"{attribute}.body."
    state = {
        key.removeprefix(prefix): value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)
    }
    if not state:
        raise GeoclError("checkpoint holds no encoder weights", path=path)
    return {"meta": meta, "encoder_state": state}


def snapshot_path(folder: Path, step: int) -> Path:
    """Where a pretraining run keeps its state at optimizer step ``step`` (``trainer.snapshot_steps``):
    ``<folder>/step<step>.ckpt``, ``folder`` being the run's ``snapshots/``."""
    return Path(folder) / f"step{step}.ckpt"
