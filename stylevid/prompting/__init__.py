"""Prompts before sampling: LLM refinement (`refine.py`, `backends.py`) and per-frame prompts (`frames.py`)."""

from .backends import RefinementError
from .frames import anchor_frames, frame_prompts_setting, interpolate_frame_embeddings, requested_frame_count
from .refine import Refinement, PromptRefiner, parse_frame_prompts, parse_prompt, prompt_refiner

__all__ = [
    "PromptRefiner", "Refinement", "RefinementError", "anchor_frames", "frame_prompts_setting",
    "interpolate_frame_embeddings", "parse_frame_prompts", "parse_prompt", "prompt_refiner", "requested_frame_count",
]
