"""Install attention processors on a diffusers model for the duration of a `with` block.

Behaviour inside attention changes only through `set_attn_processor`, keyed by layer path, and the
original processors are always put back, even when generation fails half way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch


def self_attention_layers(model: torch.nn.Module) -> list[str]:
    """Processor keys of the spatial self-attention layers (`...attn1.processor`) of a UNet or ControlNet."""
    return [name for name in model.attn_processors if name.endswith("attn1.processor")]


def layer_selected(name: str, selectors: Sequence[str] | str) -> bool:
    """Whether processor key `name` falls under one of `selectors`.

    A selector is `all`, or a prefix of the layer path on a block boundary: `down_blocks`, `mid_block`,
    `up_blocks`, `up_blocks.1` (one resolution level), `up_blocks.1.attentions.0`...
    """
    if isinstance(selectors, str):
        selectors = [selectors]
    return any(s == "all" or name == s or name.startswith(s + ".") for s in selectors)


@contextmanager
def installed_processors(model: torch.nn.Module, processor_for: Callable[[str], object | None]) -> Iterator[None]:
    """Give each self-attention layer `processor_for(layer_name)` (None keeps the layer's own processor)."""
    original = model.attn_processors
    replaced = dict(original)
    for name in self_attention_layers(model):
        processor = processor_for(name)
        if processor is not None:
            replaced[name] = processor
    model.set_attn_processor(replaced)
    try:
        yield
    finally:
        model.set_attn_processor(original)
