"""What kind of weight file a path holds, read off its first bytes rather than its name.

A name can mislead: a text file called `model.bin` is not "a pickle checkpoint", and a file called `.safetensors`
that is not one fails deep inside safetensors with a traceback. Every loader of a user's weight file asks
`check_weight_file` first, so the message says what the file really is. Pickles load only with the key's
`allow_pickle=true` and then only with `torch.load(weights_only=True)`: no code from the file ever runs.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from ..errors import UserInputError

SAFETENSORS, PICKLE, GGUF = "safetensors", "pickle", "gguf"
_ZIP = b"PK\x03\x04"  # torch.save's default format is a zip archive holding the pickle


def weight_file_kind(path: str | Path) -> str | None:
    """`"safetensors"`, `"pickle"` (torch.save's zip or legacy format), `"gguf"` or None for anything else."""
    path = Path(path)
    with path.open("rb") as file:
        head = file.read(9)
    if head.startswith(_ZIP) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):  # pickle protocol 2-5
        return PICKLE
    if head.startswith(b"GGUF"):
        return GGUF
    # safetensors: an 8-byte little-endian header length, then that many bytes of JSON
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return SAFETENSORS
    return None


def check_weight_file(path: str | Path, key: str, allow_pickle: bool = False) -> str:
    """The kind of the weight file `key` (e.g. `motion.path`) names; a one-line UserInputError when it is not a
    checkpoint, or is a pickle without `<block>.allow_pickle=true` (the block is `key`'s first part)."""
    path = Path(path)
    try:
        kind = weight_file_kind(path)
    except OSError as error:
        raise UserInputError(f"{key}={path} cannot be read: {error.strerror or error}") from None
    if kind is None:
        raise UserInputError(f"{key}={path} is not a checkpoint file (neither safetensors nor a PyTorch pickle)")
    if kind == PICKLE and not allow_pickle:
        block = key.split(".")[0]
        raise UserInputError(
            f"{key}={path} is a pickle checkpoint; convert it to .safetensors, or pass {block}.allow_pickle=true "
            "if you trust its source"
        )
    return kind


def check_single_file(path: str | Path, key: str, allow_pickle: bool = False) -> str:
    """`check_weight_file` for a file handed to diffusers' `from_single_file`, which picks its reader by the suffix:
    a safetensors (gguf) file must be named `.safetensors` (`.gguf`) and a pickle neither."""
    path = Path(path)
    kind = check_weight_file(path, key, allow_pickle)
    wanted = {SAFETENSORS: ".safetensors", GGUF: ".gguf"}.get(kind)
    if (path.suffix in (".safetensors", ".gguf") or wanted is not None) and path.suffix != wanted:
        named = f"named {path.suffix}" if path.suffix else "without a suffix"
        raise UserInputError(f"{key}={path} is a {kind} file {named}; rename it to {wanted or '.ckpt'}")
    return kind


def load_pickle_weights(path: str | Path, key: str) -> dict:
    """A pickle checkpoint's tensors with `weights_only=True`; a file holding anything else is one line, and no
    code from it runs."""
    try:
        kind = weight_file_kind(path)
    except OSError as error:
        raise UserInputError(f"{key}={path} cannot be read: {error.strerror or error}") from None
    if kind != PICKLE:  # torch.load would call a text file's first byte "an invalid load key"
        raise UserInputError(f"{key}={path} is not a PyTorch checkpoint file")
    try:
        # A file object: torch.load must not pick a reader by the name either. Its warning about pickle protocols
        # other than 2 is not the user's concern (the error below, if any, is).
        with open(path, "rb") as file, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserInputError(
            f"{key}={path} holds objects other than tensors and is refused (only plain weights load: weights_only)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:  # a truncated or otherwise broken file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserInputError(f"{key}={path} is a broken checkpoint file: {reason[:160]}") from None
    if not isinstance(state, dict):
        raise UserInputError(f"{key}={path} holds a {type(state).__name__}, not a dictionary of weights")
    return state
