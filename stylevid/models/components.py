"""One loader for every component a user names by a hub id, a local directory or a single file.

The Stable Diffusion pipeline, ControlNets, motion modules, the condition annotators and the metric networks
all take such a setting. `load_component` decides, in this one place, what the setting is and how it fails:

  * a local directory: `pretrained(dir, local_files_only=True, ...)`, after checking that it holds the file the
    component needs (`model_index.json` for a pipeline, `config.json` for a model);
  * a local file: sniffed by content with `weight_files` (a pickle only with `<block>.allow_pickle=true`, and a
    file diffusers would read by its suffix must carry the right one), then `single_file(path)`; refused when
    the component has no single-file form;
  * a hub id (`owner/name`): `pretrained(id, ...)`; offline (HF_HUB_OFFLINE=1, read at call time) or without a
    connection, an id that is not in the local cache is one line naming the setting to pass instead;
  * anything else: `<key> <path> does not exist`.

Every failure is a one-line `UserInputError` (exit code 2 in the CLI). `download_hub_file` is the same for one
file of a hub repository (`owner/name:path/in/repo`, the metrics' TorchScript networks).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserInputError
from .weight_files import GGUF, SAFETENSORS, check_single_file, check_weight_file, load_pickle_weights

Loaded = TypeVar("Loaded")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# What huggingface_hub / transformers / diffusers raise when a file is neither cached nor reachable.
_UNREACHABLE_TYPES = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError",
                      "ConnectTimeout", "Timeout", "ReadTimeout", "TimeoutException")
_UNREACHABLE_WORDS = ("couldn't connect", "cannot reach", "not fully cached", "outgoing traffic has been disabled",
                      "offline mode", "not in the local cache", "in the cached files")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def is_hub_id(value: str) -> bool:
    """`owner/name`, not a path: no leading `.`, `/` or `~`, exactly one slash."""
    return not value.startswith((".", "/", "~")) and HUB_ID.match(value) is not None


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line (its class name when it has no message), at most `limit` characters."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]


def not_cached_error(key: str, source: str, hint: str, *, local_files_only: bool = False) -> UserInputError:
    """THE line for a hub reference that is not in the local cache and cannot be fetched."""
    if hub_offline():
        why = "the hub is offline (HF_HUB_OFFLINE=1)"
    elif local_files_only:  # the caller asked for the cache only
        why = "only local files were asked for (local_files_only)"
    else:
        why = "the hub cannot be reached"
    return UserInputError(f"{key}={source} is not in the local cache and {why}; pass {key}={hint}")


def _unreachable(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) says the hub could not be asked, rather than answered no."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(cls.__name__ in _UNREACHABLE_TYPES for cls in type(error).__mro__):
            return True
        if any(words in str(error).lower() for words in _UNREACHABLE_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _cached(repo_id: str, filename: str, revision: str | None, cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)
    except ValueError:  # huggingface_hub refuses the name itself; pretrained() will say why
        return True


def read_weights(path: str | Path, key: str, allow_pickle: bool = False) -> tuple[dict, dict | None]:
    """A weight file's tensors and its safetensors header metadata (None for a pickle), read by content:
    safetensors, or a pickle only with `allow_pickle` and then with `weights_only`; GGUF and anything else
    refused on one line."""
    kind = check_weight_file(path, key, allow_pickle)
    if kind == GGUF:
        raise UserInputError(f"{key}={path} is a GGUF file; this loads from .safetensors (or a .ckpt pickle)")
    if kind == SAFETENSORS:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as file:
                return {name: file.get_tensor(name) for name in file.keys()}, file.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise UserInputError(f"{key}={path} is a broken safetensors file: {first_line(error, 160)}") from None
    state = load_pickle_weights(path, key)
    return state, None


def load_component(
    source: str | os.PathLike,
    *,
    key: str,
    pretrained: Callable[..., Loaded],
    single_file: Callable[[str], Loaded] | None = None,
    allow_pickle: bool = False,
    required_file: str | None = "config.json",
    what: str = "a diffusers model",
    hint: str | None = None,
    suffix_picks_reader: bool = True,
    revision: str | None = None,
    subfolder: str | None = None,
    local_files_only: bool = False,
    **kwargs: Any,
) -> Loaded:
    """Load what the setting `key` (e.g. `model.path`) names: a local directory, a local file or a hub id.

    `pretrained(source, **kwargs)` loads a directory or a hub id (a `from_pretrained`; `kwargs` go to it as
    given, with `local_files_only=True` for a directory, when offline or when `local_files_only`, and
    `revision` / `subfolder` when set). `single_file(path)` loads a file that passed the content check;
    without it a file is refused. `suffix_picks_reader`: the file goes to diffusers' `from_single_file`, which
    picks its reader by the suffix, so the suffix must match the content (False: `single_file` reads by
    content, e.g. with `read_weights`). `required_file` must be in a directory (under `subfolder`) and, for a
    hub id that is offline, in the cache; `what` names the component in those refusals ("a diffusers
    pipeline"); `hint` is what to pass instead (default: a local directory, or file when there is a
    single-file form). Every failure is a one-line `UserInputError` naming `key`.
    """
    if hint is None:
        hint = "<local directory or file>" if single_file is not None else "<local directory>"
    text = "" if source is None else str(source).strip()
    if not text:
        raise UserInputError(f"{key} is not set; pass {key}={hint}")
    local = Path(text).expanduser()
    options = dict(kwargs)
    if subfolder:
        options["subfolder"] = subfolder

    if local.is_dir():
        needed = local / subfolder / required_file if (subfolder and required_file) else (
            local / required_file if required_file else None)
        if needed is not None and not needed.is_file():
            where = f"{subfolder}/{required_file}" if subfolder else required_file
            raise UserInputError(f"{key}={local} is a directory but not {what} (no {where})")
        return _load_local(lambda: pretrained(str(local), local_files_only=True, **options), key, local)

    if local.is_file():
        if single_file is None:
            raise UserInputError(f"{key}={local} is a file; {what} loads from a directory or a hub id, not a single file")
        check = check_single_file if suffix_picks_reader else check_weight_file
        check(local, key, allow_pickle)  # by content: a name can mislead
        return _load_local(lambda: single_file(str(local)), key, local)

    if not is_hub_id(text):
        raise UserInputError(f"{key} {text} does not exist; pass {key}={hint}")

    # A hub id.
    offline = local_files_only or hub_offline()
    if revision:
        options["revision"] = revision
    if offline:
        options["local_files_only"] = True
        if required_file:
            filename = f"{subfolder}/{required_file}" if subfolder else required_file
            if not _cached(text, filename, revision, kwargs.get("cache_dir")):
                raise not_cached_error(key, text, hint, local_files_only=local_files_only)
    try:
        return pretrained(text, **options)
    except UserInputError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        if isinstance(error, OSError) and (offline or _unreachable(error)):
            raise not_cached_error(key, text, hint, local_files_only=local_files_only) from None
        raise UserInputError(f"{key}={text} could not be loaded: {first_line(error)}; pass {key}={hint}") from None


def _load_local(load: Callable[[], Loaded], key: str, local: Path) -> Loaded:
    from safetensors import SafetensorError

    try:
        return load()
    except UserInputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:
        # diffusers/transformers: OSError for missing files, ValueError for files they cannot interpret,
        # RuntimeError for shape mismatches; the user has to point at other weights either way.
        raise UserInputError(f"{key}={local} could not be loaded: {first_line(error)}") from None


def download_hub_file(reference: str, *, key: str, hint: str = "<local path>") -> Path:
    """The local copy of `owner/name:path/in/repo` through the hub cache, with `load_component`'s messages."""
    from huggingface_hub import hf_hub_download

    repo_id, filename = reference.split(":", 1)
    offline = hub_offline()
    if offline and not _cached(repo_id, filename, None, None):
        raise not_cached_error(key, reference, hint)
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except Exception as error:  # noqa: BLE001 - any hub failure means the same thing to the user
        if isinstance(error, OSError) and (offline or _unreachable(error)):
            raise not_cached_error(key, reference, hint) from None
        raise UserInputError(f"{key}={reference} could not be loaded: {first_line(error)}; pass {key}={hint}") from None


def method_weights_root(cfg, toy_folder: str, marker: str, layout: str) -> Path | None:
    """The weights directory a trained method reads (VideoGen, Gen-1): `method.weights=` when given; with
    `model=toy` the packaged toy one (`stylevid/toy/weights/<toy_folder>`, refused in one line until built, `marker`
    being its manifest); None with `model=tiny` (random tiny parts built in memory); else one line asking for it,
    `layout` saying what the directory holds."""
    weights = cfg.method.get("weights")
    if weights:
        root = Path(str(weights)).expanduser()
        if not root.is_dir():
            raise UserInputError(f"method.weights={weights} is not a directory")
        return root
    name = cfg.model.get("name")
    if name == "toy":
        from ..toy import WEIGHTS

        root = WEIGHTS / toy_folder
        if not (root / marker).is_file():
            raise UserInputError(f"the toy {toy_folder} weights are not built ({root}); run "
                                 "`python scripts/build_toy_world.py --stage all` or pass method.weights=")
        return root
    if name == "tiny" and not cfg.model.get("path"):
        return None
    raise UserInputError(f"method.weights= is required: a weights directory ({layout})")
