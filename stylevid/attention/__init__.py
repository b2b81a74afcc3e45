"""Attention processors and the context manager that installs them."""

from .install import installed_processors, layer_selected, self_attention_layers
from .processors import CrossFrameAttnProcessor, StyleSharedAttnProcessor, StyleSharing, adain

__all__ = [
    "CrossFrameAttnProcessor",
    "StyleSharedAttnProcessor",
    "StyleSharing",
    "adain",
    "installed_processors",
    "layer_selected",
    "self_attention_layers",
]
