"""Per-frame prompts: N prompts guiding successive frames, their text embeddings interpolated in between.

The decomposition of Free-Bloom that the VideoBooth-style paper adopts (Section 1, contribution 1; Section 3.5): an
LLM splits an abstract prompt into N concrete prompts, each is encoded by the text encoder, and the frames between
two of them are guided by a linear mix of the two embeddings. Prompt k sits at anchor frame
`round(k (F - 1) / (N - 1))`: the first prompt on the first frame, the last on the last, the others evenly between.

A method that carries per-frame prompts (`method.per_frame_prompts` in its config) reads them with
`frame_prompts_setting`, and turns their embeddings into one text context per frame with
`interpolate_frame_embeddings`.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig

from ..errors import UserInputError

KEY = "method.per_frame_prompts"


def anchor_frames(count: int, frames: int) -> list[int]:
    """The frame each of `count` prompts guides exactly: 0 and frames - 1 for the first and last, even steps between."""
    if not 1 <= count <= frames:
        raise ValueError(f"need 1 <= count <= frames, got count={count} frames={frames}")
    if count == 1:
        return [0]
    return [round(k * (frames - 1) / (count - 1)) for k in range(count)]


def interpolate_frame_embeddings(embeddings: torch.Tensor, frames: int) -> torch.Tensor:
    """(N, tokens, dim) prompt embeddings -> (frames, tokens, dim): prompt k's own embedding at its anchor frame,
    `(1 - a) e_k + a e_(k+1)` at a fraction `a` of the way to the next anchor.

    The same formula, in the same float operations, as diffusers' FreeNoise prompt interpolation (`_lerp`), so a
    method gets the same context per frame with FreeNoise on (where diffusers interpolates) or off (where it
    does not and the method calls this). One prompt is repeated unchanged, bit for bit."""
    count = embeddings.shape[0]
    anchors = anchor_frames(count, frames)
    if count == 1:
        return embeddings.expand(frames, *embeddings.shape[1:]).clone()
    per_frame = embeddings.new_empty((frames, *embeddings.shape[1:]))
    for k in range(count - 1):
        start, end = anchors[k], anchors[k + 1]
        for frame in range(start, end + 1):
            alpha = (frame - start) / (end - start)
            per_frame[frame] = (1 - alpha) * embeddings[k] + alpha * embeddings[k + 1]
    return per_frame


def requested_frame_count(cfg: DictConfig) -> int | None:
    """N of `method.per_frame_prompts=N`: the number of prompts the LLM is to write (None: none asked for, or
    the prompts are given as a list)."""
    value = cfg.method.get("per_frame_prompts")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def frame_prompts_setting(cfg: DictConfig, frames: int) -> list[str] | None:
    """A method's per-frame prompts from `method.per_frame_prompts`, checked against its frame count.

    - null: none (the one prompt guides every frame);
    - a list of prompts: used as given, no LLM needed;
    - a number N: the LLM writes them (`prompt_refiner=llm`), so here, before it is asked, only the number is
      checked and None returned; the generate task puts the LLM's list in place and asks the method again.
    """
    value = cfg.method.get("per_frame_prompts")
    if value is None:
        return None
    if isinstance(value, ListConfig):
        prompts = [str(item).strip() if item is not None else "" for item in value]
        if not prompts or not all(prompts):
            raise UserInputError(f"{KEY} must hold non-empty prompts, got {list(value)}")
        _check_count(len(prompts), frames)
        return prompts
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{KEY} must be a number of prompts for the LLM to write, or a list of prompts; got {value!r}")
    _check_count(value, frames)
    if cfg.get("prompt_refiner") != "llm":
        raise UserInputError(f"{KEY}={value} asks an LLM to write the prompts: add prompt_refiner=llm (and llm.api_base= "
                             f"or llm.path=), or give them yourself: '{KEY}=[\"...\", \"...\"]'")
    return None


def _check_count(count: int, frames: int) -> None:
    if count < 1:
        raise UserInputError(f"{KEY} must be at least 1, got {count}")
    if count > frames:
        raise UserInputError(f"{KEY}: {count} prompts for {frames} frames; at most one prompt per frame")
