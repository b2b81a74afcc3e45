"""Fusing LoRA files into a pipeline's weights: W <- W + scale * (alpha / rank) * up @ down.

Formats are read with diffusers' own `StableDiffusionPipeline.lora_state_dict`, which turns kohya
(`lora_unet_..._to_q.lora_down.weight`, `lora_te_...`) and old diffusers files into diffusers keys; the
fusion itself is done here because diffusers' `load_lora_weights` needs the optional `peft` package, and
a fused LoRA costs nothing at sampling time. Motion LoRAs (AnimateDiff's camera-motion LoRAs) are fused
into a `MotionAdapter` the same way: their `unet.<level>.motion_modules...` keys name its modules.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..errors import UserInputError

log = logging.getLogger(__name__)

# Old diffusers attention-processor names -> module names (`attn1.processor.to_q_lora` -> `attn1.to_q`).
_OLD_UNET = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_OLD_TEXT = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}
_ROLE = re.compile(
    r"^(?P<module>.+?)\.(?:lora_(?P<ab>[AB])|lora\.(?P<ud>down|up)|lora_linear_layer\.(?P<lud>down|up)|lora_(?P<kud>down|up))\.weight$"
)


def _split(key: str) -> tuple[str, str] | None:
    """(module path, "down" | "up") for one LoRA weight key, or None for a key that is not one."""
    for old, new in _OLD_UNET.items():
        if f".{old}." in key:
            table = _OLD_TEXT if key.startswith("text_encoder.") else _OLD_UNET
            key = key.replace(".processor.", ".").replace(f".{old}.", f".{table[old]}.lora.")
            break
    match = _ROLE.match(key)
    if not match:
        return None
    role = match.group("ab") or match.group("ud") or match.group("lud") or match.group("kud")
    return match.group("module"), {"A": "down", "B": "up"}.get(role, role)


def _original_motion_key(module: str) -> str:
    """Original AnimateDiff motion-LoRA module names -> diffusers' (as convert_animatediff_checkpoint_to_diffusers)."""
    return (
        module.replace(".temporal_transformer", "")
        .replace(".attention_blocks.0", ".attn1")
        .replace(".attention_blocks.1", ".attn2")
    )


def read_lora(path: str | Path) -> dict[str, dict[str, torch.Tensor | float]]:
    """{"<component>.<module path>": {"down", "up", "alpha"}} from a kohya, diffusers or PEFT LoRA file."""
    from diffusers import StableDiffusionPipeline

    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise UserInputError(f"LoRA file not found: {path}")
    try:
        state_dict, network_alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise UserInputError(f"{path} is not a LoRA file diffusers can read ({str(error).splitlines()[0][:160]})") from None
    network_alphas = network_alphas or {}
    pairs: dict[str, dict] = {}
    for key, value in state_dict.items():
        if key.endswith(".alpha"):
            pairs.setdefault(key[: -len(".alpha")], {})["alpha"] = float(value)
            continue
        split = _split(key)
        if split is None:
            raise UserInputError(f"{path}: cannot interpret LoRA key {key}")
        module, role = split
        if not module.startswith(("unet.", "text_encoder.")):
            module = "unet." + _original_motion_key(module)  # an original AnimateDiff motion LoRA
        pairs.setdefault(module, {})[role] = value
        alpha = network_alphas.get(key + ".alpha", network_alphas.get(key.rsplit(".", 2)[0] + ".alpha"))
        if role == "down" and alpha is not None:
            pairs[module]["alpha"] = float(alpha)
    return pairs


@torch.no_grad()
def fuse_lora(components: dict[str, torch.nn.Module], path: str | Path, scale: float) -> int:
    """Add the LoRA at `path`, times `scale`, into the named components' weights; returns the layers changed.

    `components` maps a key prefix to a module, e.g. {"unet": pipe.unet, "text_encoder": pipe.text_encoder},
    or {"unet": motion_adapter} for a motion LoRA.
    """
    changed = 0
    skipped = set()
    for name, weights in read_lora(path).items():
        prefix, _, module_path = name.partition(".")
        if "down" not in weights or "up" not in weights:
            raise UserInputError(f"{path}: LoRA layer {name} lacks its down or up matrix")
        if prefix not in components:
            skipped.add(prefix)
            continue
        try:
            target = components[prefix].get_submodule(module_path)
        except AttributeError:
            raise UserInputError(f"{path}: LoRA layer {module_path} does not exist in this model's {prefix}") from None
        down, up = weights["down"].float(), weights["up"].float()
        rank = down.shape[0]
        factor = scale * (weights.get("alpha", rank) / rank)
        delta = (up.flatten(1) @ down.flatten(1)) * factor
        target.weight.add_(delta.reshape(target.weight.shape).to(target.weight))
        changed += 1
    if skipped:
        log.warning("LoRA %s: layers for %s ignored", path, ", ".join(sorted(skipped)))
    if changed == 0:
        raise UserInputError(f"LoRA {path} changes nothing in {', '.join(components)}")
    return changed
