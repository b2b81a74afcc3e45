"""AnimateDiff's motion module (paper Section 3.3.2), built from diffusers' parts, and its weight formats.

The module itself is diffusers' `MotionAdapter`: one `AnimateDiffTransformer3D` per image layer at every
resolution level (down, mid, up). Each one reshapes a (batch*frames, C, H, W) feature map into
batch*H*W sequences over frames, adds sinusoidal position encoding (`SinusoidalPositionalEmbedding`,
a buffer `pos_embed.pe`), runs self-attention blocks along time plus a feed-forward, and projects back
(`proj_out`) onto the residual stream. `UNetMotionModel.from_unet2d(unet, adapter)` inflates an image
UNet with it: frames go into the batch axis for the image layers, as in Fig. 3.

What diffusers lacks and is added here:
  * zero-initialised output projections (paper: "we zero initialise the temporal transformer's output
    projection layer"), so that at step 0 the inflated UNet is exactly the image UNet, frame by frame;
  * export to the original AnimateDiff single-file key layout (`...temporal_transformer...`,
    `attention_blocks.N.pos_encoder.pe`), the reverse of diffusers'
    `convert_animatediff_checkpoint_to_diffusers`;
  * loading a motion module from a hub id, a diffusers directory or an original single file offline
    (diffusers' `MotionAdapter.from_single_file` fetches a config from the hub; here it is read off the
    weights' shapes, and heads and group-norm groups off the metadata that `export_original` writes);
  * a one-line error for a motion module made for another base model (`check_fits`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from ..errors import UserInputError
from .components import HUB_ID, load_component, read_weights  # noqa: F401 - HUB_ID: kept importable from here
DDP_PREFIX = "module."


# --- building ---------------------------------------------------------------------------------------


def zero_init_output_projections(module: torch.nn.Module) -> int:
    """Zero every temporal transformer's `proj_out` (weight and bias); returns how many were zeroed.

    diffusers' `AnimateDiffTransformer3D` initialises `proj_out` like any nn.Linear (random), so a fresh
    `MotionAdapter` changes the image model's output from step 0. The paper zero-initialises it (as
    ControlNet does) so that the residual `x + proj_out(...)` is the identity at the start of training.
    """
    count = 0
    for layer in module.modules():
        if isinstance(layer, AnimateDiffTransformer3D):
            torch.nn.init.zeros_(layer.proj_out.weight)
            if layer.proj_out.bias is not None:
                torch.nn.init.zeros_(layer.proj_out.bias)
            count += 1
    return count


def motion_adapter_for_unet(
    unet: UNet2DConditionModel,
    *,
    num_attention_heads: int = 8,
    max_seq_length: int = 32,
    transformer_layers_per_block: int = 1,
    use_mid_block: bool = True,
    zero_init: bool = True,
    seed: int | None = None,
) -> MotionAdapter:
    """A new motion module matched to `unet`'s levels, layers per block and group norm; zero-init output."""
    if seed is not None:
        torch.manual_seed(seed)
    config = unet.config
    channels = tuple(config.block_out_channels)
    for channel in channels:
        if channel % num_attention_heads:
            raise UserInputError(f"motion num_attention_heads={num_attention_heads} does not divide channel count {channel}")
    adapter = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=config.layers_per_block,
        motion_transformer_layers_per_block=transformer_layers_per_block,
        motion_mid_block_layers_per_block=1,
        motion_transformer_layers_per_mid_block=transformer_layers_per_block,
        motion_num_attention_heads=num_attention_heads,
        motion_norm_num_groups=config.norm_num_groups,
        motion_max_seq_length=max_seq_length,
        use_motion_mid_block=use_mid_block,
    )
    if zero_init:
        zero_init_output_projections(adapter)
    return adapter


def tiny_motion_adapter(seed: int = 0, zero_init: bool = True) -> MotionAdapter:
    """A motion module for `stylevid.models.tiny.tiny_unet` (channels 32/64, 8 groups, 2 heads)."""
    from .tiny import tiny_unet

    return motion_adapter_for_unet(tiny_unet(seed), num_attention_heads=2, zero_init=zero_init, seed=seed)


def check_fits(unet: UNet2DConditionModel, adapter: MotionAdapter) -> None:
    """A one-line UserInputError when `adapter` was made for another base model (other channels or layout).

    Cheap (configs only), so callers run it right after loading, before a run directory exists; inflating a
    mismatched module would otherwise fail late with diffusers' many-line size-mismatch RuntimeError.
    """
    unet_channels = tuple(unet.config.block_out_channels)
    motion_channels = tuple(adapter.config.block_out_channels)
    if unet_channels != motion_channels:
        raise UserInputError(
            f"the motion module is for a base model with channels {motion_channels}, this model has {unet_channels}; "
            "use a motion module trained for this base (SD 1.x modules with SD 1.x models)"
        )
    levels = len(unet_channels)
    unet_layers = unet.config.layers_per_block
    motion_layers = adapter.config.motion_layers_per_block
    unet_layers = [unet_layers] * levels if isinstance(unet_layers, int) else list(unet_layers)
    motion_layers = [motion_layers] * levels if isinstance(motion_layers, int) else list(motion_layers)
    if unet_layers != motion_layers:
        raise UserInputError(
            f"the motion module has {motion_layers} layers per level, this model {unet_layers}: it is for another base model"
        )


def inflate(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """The inflated video UNet (paper Section 3.3.1): image layers from `unet`, motion modules from `adapter`."""
    check_fits(unet, adapter)
    try:
        return UNetMotionModel.from_unet2d(unet, adapter)
    except (ValueError, RuntimeError) as error:  # diffusers: ValueError for layout, RuntimeError for shapes
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserInputError(f"the motion module does not fit this model: {reason[:200]}") from None


# --- motion weights in and out of an inflated UNet -------------------------------------------------------


def motion_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every motion-module parameter of a `UNetMotionModel` (or a `MotionAdapter`)."""
    return [(name, p) for name, p in model.named_parameters() if ".motion_modules." in f".{name}"]


def strip_ddp_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key: value for key, value in state_dict.items()}


def adapter_from_unet(unet: UNetMotionModel, like: MotionAdapter) -> MotionAdapter:
    """A `MotionAdapter` with `like`'s config holding `unet`'s current motion weights (a copy on the CPU)."""
    adapter = MotionAdapter.from_config(like.config)
    state = strip_ddp_prefix(unet.state_dict())
    motion_state = {k: v.detach().to("cpu", torch.float32) for k, v in state.items() if "motion_modules." in k}
    missing, unexpected = adapter.load_state_dict(motion_state, strict=False)
    if unexpected or missing:
        raise ValueError(f"motion weights do not match the adapter: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return adapter


def save_motion_adapter(adapter: MotionAdapter, directory: str | Path) -> Path:
    """diffusers format (config.json + diffusion_pytorch_model.safetensors), for `MotionAdapter.from_pretrained`."""
    adapter.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)


# --- the original AnimateDiff single-file layout ------------------------------------------------------------

# diffusers name -> original name, applied in this order (the reverse of convert_animatediff_checkpoint_to_diffusers).
_TO_ORIGINAL = (
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
)
_MOTION_MODULE = re.compile(r"(motion_modules\.\d+\.)")


def to_original_animatediff(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `MotionAdapter` keys -> original AnimateDiff keys, with each attention block's `pos_encoder.pe`.

    diffusers keeps one `pos_embed` per transformer block, added before each of its two temporal
    self-attentions; the original keeps a `pos_encoder` inside each attention block (same sinusoid), so
    the one buffer is written for both. `module.` (DDP) prefixes are dropped.
    """
    original = {}
    for key, value in strip_ddp_prefix(state_dict).items():
        if "motion_modules." not in key:
            continue
        key = _MOTION_MODULE.sub(r"\1temporal_transformer.", key, count=1)
        if key.endswith(".pos_embed.pe"):
            block = key[: -len("pos_embed.pe")]
            for index in (0, 1):
                original[f"{block}attention_blocks.{index}.pos_encoder.pe"] = value.clone()
            continue
        for new, old in _TO_ORIGINAL:
            key = key.replace(new, old)
        original[key] = value.contiguous()
    return original


# MotionAdapter config entries that an original-format file's shapes cannot tell; export_original writes them
# into the safetensors metadata. Files from elsewhere lack them (official modules: 8 heads, 32 groups).
ORIGINAL_METADATA_KEYS = ("motion_num_attention_heads", "motion_norm_num_groups")


def export_original(adapter: MotionAdapter, path: str | Path) -> Path:
    """Write `adapter` as an original-format AnimateDiff `.safetensors` (loads in AnimateDiff, ComfyUI, A1111)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in to_original_animatediff(adapter.state_dict()).items()}
    # Heads and group-norm groups leave no trace in the shapes: keep them in the header, read by load_motion_adapter.
    # Only plain integers: a per-level tuple of heads (which diffusers allows) is left to the caller.
    metadata = {"format": "pt"}
    metadata.update({key: str(adapter.config[key]) for key in ORIGINAL_METADATA_KEYS if isinstance(adapter.config[key], int)})
    save_file(tensors, str(path), metadata=metadata)
    return path


def config_from_original(state_dict: dict[str, torch.Tensor], num_attention_heads: int = 8, metadata: dict[str, str] | None = None) -> dict:
    """A `MotionAdapter` config read off an original checkpoint's shapes, plus what `metadata` (the file header)
    records; heads come from the metadata when present (it is what the module was trained with), else
    `num_attention_heads` (official modules use 8)."""
    levels = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"down_blocks\.(\d+)\.motion_modules\.", k))})
    if not levels:
        raise UserInputError("this file holds no AnimateDiff motion modules (no down_blocks.N.motion_modules keys)")
    channels, layers = [], []
    for level in levels:
        prefix = f"down_blocks.{level}.motion_modules."
        modules = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
        layers.append(len(modules))
        channels.append(int(state_dict[f"{prefix}0.temporal_transformer.proj_in.weight"].shape[0]))
    depth = {int(k.split("transformer_blocks.")[1].split(".")[0]) for k in state_dict if k.startswith("down_blocks.0.") and "transformer_blocks." in k}
    pe = next((v for k, v in state_dict.items() if k.endswith("pos_encoder.pe")), None)
    config = {
        "block_out_channels": tuple(channels),
        "motion_layers_per_block": layers[0] if len(set(layers)) == 1 else tuple(layers),
        "motion_transformer_layers_per_block": len(depth),
        "motion_transformer_layers_per_mid_block": len(depth),
        "motion_num_attention_heads": num_attention_heads,
        "motion_max_seq_length": int(pe.shape[1]) if pe is not None else 32,
        "use_motion_mid_block": any(k.startswith("mid_block.motion_modules.") for k in state_dict),
    }
    for key in ORIGINAL_METADATA_KEYS:
        if metadata and key in metadata:
            try:
                config[key] = int(metadata[key])
            except ValueError:
                raise UserInputError(f"motion module metadata {key}={metadata[key]!r} is not an integer") from None
    return config


def adapter_from_original(state_dict: dict[str, torch.Tensor], num_attention_heads: int = 8, metadata: dict[str, str] | None = None) -> MotionAdapter:
    """Load an original-format checkpoint (v1/v2/v3, or one of ours) into a `MotionAdapter` with diffusers' converter."""
    state_dict = strip_ddp_prefix(state_dict)
    adapter = MotionAdapter(**config_from_original(state_dict, num_attention_heads, metadata))
    converted = convert_animatediff_checkpoint_to_diffusers(state_dict)
    missing, unexpected = adapter.load_state_dict(converted, strict=False)
    # The converter drops pos_encoder.pe; diffusers recomputes the same sinusoid as a buffer.
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]
    if missing or unexpected:
        raise UserInputError(
            f"motion module weights do not match: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    return adapter


def load_motion_adapter(
    path: str, dtype: torch.dtype = torch.float32, *, allow_pickle: bool = False, num_attention_heads: int = 8,
    key: str = "motion.path",
) -> MotionAdapter:
    """A motion module from a hub id, a diffusers directory, or an original single file (.safetensors, or a pickle
    .ckpt only with `allow_pickle`, and then with `weights_only`). `key` is the setting named in errors."""

    def original_file(file: str) -> MotionAdapter:
        state_dict, metadata = read_weights(file, key, allow_pickle)
        if metadata is None:  # a pickle: weights_only still admits plain Python values; only named tensors are weights
            state_dict = state_dict.get("state_dict", state_dict)
            state_dict = {k: v for k, v in state_dict.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        return adapter_from_original(state_dict, num_attention_heads, metadata).to(dtype)

    return load_component(
        str(path),
        key=key,
        what="a diffusers MotionAdapter",
        pretrained=MotionAdapter.from_pretrained,
        single_file=original_file,
        suffix_picks_reader=False,  # read by content here, not by diffusers' from_single_file
        allow_pickle=allow_pickle,
        required_file="config.json",
        hint="<MotionAdapter directory or original .safetensors>",
        torch_dtype=dtype,
    )
