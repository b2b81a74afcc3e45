"""A style image and how a method shares attention with it (StyleT2V0 Section 4; StyleAligned).

Shared by every method that takes `style=` (`stylet2v0`, `animatediff`): the `method.sharing` presets and the
keys that override them (`StyleSettings`), the check that a layer selector matches the model, and reading
the image. The attention itself lives in `stylevid.attention` (in-batch style row for the zero-shot methods,
a reference pass for AnimateDiff).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from .. import values
from ..attention import StyleSharing, layer_selected, self_attention_layers
from ..errors import UserInputError
from ..io.video_input import read_image

REFERENCES = ("inverted", "clean")
SHARING_KEYS = ("layers", "adain_queries", "adain_keys", "adain_values", "attend_to_reference", "reference_score_shift", "reference")
# `method.sharing`: each preset sets every sharing key; a key given explicitly (not None) overrides its preset.
SHARING_PRESETS = {
    # Eqs. 7-9 as written: Q̂_i = AdaIN(Q_i, Q_r), K = AdaIN(K_1, K_r), V = V_1 in every self-attention layer, with
    # the style image's DDIM inversion as the reference row. On the toy world this leaves the colours where they
    # were (README, "The toy world"): the values carry colour, and eq. 8 keeps V_1's.
    "paper": dict(layers=("all",), adain_queries=True, adain_keys=True, adain_values=False, attend_to_reference=False,
                  reference_score_shift=0.0, reference="inverted"),
    # Figure 2's reading ("keys and values are also adapted using AdaIN": V = AdaIN(V_1, V_r)) plus StyleAligned's
    # attention to the style image's own keys and values (log-space weight 2), in the decoder (up) blocks only,
    # with the clean style latent as the reference row. Each choice was measured on the toy world (README).
    "aligned": dict(layers=("up_blocks",), adain_queries=True, adain_keys=True, adain_values=True, attend_to_reference=True,
                    reference_score_shift=2.0, reference="clean"),
}
DEFAULT_SHARING = "aligned"  # conf/shared/style_sharing.yaml's `sharing:` (a test checks that they agree)


@dataclass
class StyleSettings:
    """How the style image steers generation: a `sharing` preset (SHARING_PRESETS), any of whose keys a
    non-None argument overrides. See conf/shared/style_sharing.yaml and the README for why the default is `aligned`."""

    image: str
    sharing: str = DEFAULT_SHARING
    strength: float = 1.0
    layers: Sequence[str] | None = None
    adain_queries: bool | None = None
    adain_keys: bool | None = None
    adain_values: bool | None = None
    attend_to_reference: bool | None = None
    reference_score_shift: float | None = None
    # The style row's latent: "inverted" (the paper's reading: its DDIM-inversion latent at each timestep, as
    # StyleAligned does for a real reference) or "clean" (the encoded image itself at every timestep, as
    # reference-attention methods do; no inversion, so N fewer UNet passes).
    reference: str | None = None
    prompt: str = ""  # text used to invert the style image (e.g. "a painting"); empty = unconditional

    def __post_init__(self) -> None:
        # The one place a preset and its overrides become settings (the CLI goes through `from_config`).
        if self.sharing not in SHARING_PRESETS:
            raise UserInputError(f"method.sharing must be {' or '.join(SHARING_PRESETS)}, got {self.sharing!r}")
        for key, value in SHARING_PRESETS[self.sharing].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        # `method.layers=up_blocks` on the command line is one string: a selector, not a list of letters.
        self.layers = [self.layers] if isinstance(self.layers, str) else list(self.layers)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> StyleSettings:
        """The settings `stylevid generate` composes: `method.sharing` names the preset, and every sharing key the
        user sets (`method.adain_values=false`, `method.layers=all`, ...; null in the yaml) overrides it."""
        if not cfg.get("style"):
            raise UserInputError(f"method={cfg.method.name} needs a style image: pass style=path/to/image.png")
        method = cfg.method
        given = {key: method.get(key) for key in SHARING_KEYS if method.get(key) is not None}
        for key in ("adain_queries", "adain_keys", "adain_values", "attend_to_reference"):
            if key in given and not isinstance(given[key], bool):  # bool("no") would be True
                raise UserInputError(f"method.{key} must be true or false, got {given[key]!r}")
        if "layers" in given and not isinstance(given["layers"], str):
            given["layers"] = [str(selector) for selector in given["layers"]]
        if "reference_score_shift" in given:
            given["reference_score_shift"] = values.number(given["reference_score_shift"], "method.reference_score_shift")
        if "reference" in given:
            given["reference"] = str(given["reference"])
        return cls(
            image=str(cfg.style),
            sharing=str(method.sharing),
            strength=values.number(method.strength, "method.strength (style strength)"),
            prompt=str(cfg.get("style_prompt") or ""),
            **given,
        )

    def attention_sharing(self) -> StyleSharing:
        """How a selected self-attention layer shares style (the settings in full)."""
        return StyleSharing(
            strength=self.strength,
            adain_queries=self.adain_queries,
            adain_keys=self.adain_keys,
            adain_values=self.adain_values,
            attend_to_reference=self.attend_to_reference,
            reference_score_shift=self.reference_score_shift,
        )

    def sharing_for(self, layer: str) -> StyleSharing:
        """How self-attention layer `layer` shares style: `attention_sharing()` where `layers` selects it, strength 0 (no
        sharing) elsewhere."""
        sharing = self.attention_sharing()
        if not layer_selected(layer, self.layers):
            sharing.strength = 0.0
        return sharing

    def record(self) -> dict:
        """The resolved sharing, for a run's result.json: the preset's name and every value actually used."""
        return {"sharing": self.sharing, "strength": self.strength, **{key: getattr(self, key) for key in SHARING_KEYS}}

    def validate(self) -> None:
        """The checks that need no model, so a bad value fails before anything is loaded or written."""
        if not 0.0 <= self.strength <= 1.0:  # also refuses NaN
            raise UserInputError(f"method.strength (style strength) must be in [0, 1], got {self.strength}")
        if self.reference not in REFERENCES:
            raise UserInputError(f"method.reference must be {' or '.join(REFERENCES)}, got {self.reference!r}")


def check_layers(unet, layers: Sequence[str]) -> None:
    """Every selector in `method.layers` must pick at least one self-attention layer of this UNet.

    A typo (`up_block`) would otherwise select nothing and quietly turn style sharing off. An empty list is
    allowed: it selects no layer on purpose (the style row is carried along but shared nowhere).
    """
    names = self_attention_layers(unet)
    unmatched = [selector for selector in layers if not any(layer_selected(name, [selector]) for name in names)]
    if unmatched:
        levels = sorted({name.split(".attentions")[0] for name in names})  # down_blocks.0, mid_block, up_blocks.1...
        raise UserInputError(
            f"method.layers: {', '.join(repr(s) for s in unmatched)} matches no self-attention layer of this model; "
            f"use all, down_blocks, mid_block, up_blocks, or one level: {', '.join(levels)}"
        )


def load_style_image(path: str, height: int, width: int) -> np.ndarray:
    """The style image as uint8 (height, width, 3): scaled so it covers the frame, then centre-cropped.

    Read by the same `read_image` as `stylevid invert input=<image>`, so that task reproduces the style
    latents used here (same decoding, same resize).
    """
    return read_image(path, height, width, fit="crop", label="style image")


def check_style_image(path: str, height: int, width: int) -> None:
    """A missing or unreadable style image is one line before anything loads (it is decoded once here, so a
    truncated file fails now rather than after the model has loaded)."""
    if not Path(path).is_file():
        raise UserInputError(f"style image not found: {path}")
    load_style_image(path, height, width)
