"""The motion module: zero-init identity at step 0, diffusers MotionAdapter format, original AnimateDiff format."""

import pytest
import torch
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from safetensors.torch import load_file

from stylevid.errors import UserInputError
from stylevid.models.motion_module import (
    adapter_from_unet,
    config_from_original,
    export_original,
    inflate,
    load_motion_adapter,
    motion_parameters,
    save_motion_adapter,
    tiny_motion_adapter,
    to_original_animatediff,
)
from stylevid.models.tiny import TINY_TEXT_DIM, tiny_unet

FRAMES = 4


def randomized(adapter: MotionAdapter, seed: int = 1) -> MotionAdapter:
    """Give every weight (proj_out included) a distinct random value, so that formats are really compared."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return adapter


@pytest.fixture(scope="module")
def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(FRAMES, 4, 8, 8, generator=generator)
    text = torch.randn(1, 5, TINY_TEXT_DIM, generator=generator)
    return frames, text


def test_zero_initialised_inflated_unet_equals_the_image_unet_per_frame(unet_inputs):
    frames, text = unet_inputs
    unet = tiny_unet(0)
    adapter = tiny_motion_adapter(seed=0)
    assert all(torch.count_nonzero(m.proj_out.weight) == 0 for m in adapter.modules() if hasattr(m, "proj_out"))
    video_unet = inflate(unet, adapter).eval()
    identity = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: identity.append(torch.equal(args[0], out)))
        for m in video_unet.modules()
        if isinstance(m, AnimateDiffTransformer3D)
    ]
    with torch.no_grad():
        image_out = unet(frames, 500, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample
        video_in = frames.permute(1, 0, 2, 3)[None]  # (1, C, F, H, W)
        video_out = video_unet(video_in, 500, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample[0].permute(1, 0, 2, 3)
    for hook in hooks:
        hook.remove()
    # Every motion module is exactly the identity at step 0 (bit for bit) ...
    assert len(identity) == 7 and all(identity)
    # ... so the inflated UNet is the image UNet per frame; the last ~1e-6 is diffusers' own spatial code path
    # in UNetMotionModel vs UNet2DConditionModel (float summation order), not the motion modules.
    torch.testing.assert_close(video_out, image_out, rtol=0, atol=1e-5)

    # diffusers' own initialisation (no zero proj_out) is not the identity: the zero-init is what makes it so.
    video_unet_random = inflate(unet, tiny_motion_adapter(seed=0, zero_init=False)).eval()
    with torch.no_grad():
        random_out = video_unet_random(video_in, 500, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample[0].permute(1, 0, 2, 3)
    assert (random_out - image_out).abs().max() > 1e-3


def test_motion_modules_sit_at_every_resolution_level():
    video_unet = inflate(tiny_unet(0), tiny_motion_adapter(seed=0))
    names = {name.split(".motion_modules")[0] for name, _ in motion_parameters(video_unet)}
    assert names == {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"}


def test_diffusers_format_round_trip(tmp_path):
    adapter = randomized(tiny_motion_adapter(seed=0))
    video_unet = inflate(tiny_unet(0), adapter)
    extracted = adapter_from_unet(video_unet, adapter)
    save_motion_adapter(extracted, tmp_path / "mm")
    loaded = MotionAdapter.from_pretrained(str(tmp_path / "mm"))
    expected = adapter.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert load_motion_adapter(str(tmp_path / "mm")).config == loaded.config


def test_original_format_export_round_trips_through_diffusers_converter(tmp_path):
    adapter = randomized(tiny_motion_adapter(seed=0))
    # as saved from a DDP-wrapped model: the prefix must not reach the file
    ddp_state = {f"module.{k}": v for k, v in adapter.state_dict().items()}
    original = to_original_animatediff(ddp_state)
    assert not any(k.startswith("module.") for k in original)
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe" in original
    assert "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.weight" in original
    assert "up_blocks.1.motion_modules.1.temporal_transformer.proj_out.weight" in original

    path = export_original(adapter, tmp_path / "mm.safetensors")
    from_file = load_file(str(path))
    back = convert_animatediff_checkpoint_to_diffusers(from_file)
    expected = {k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    pe = adapter.state_dict()["down_blocks.1.motion_modules.0.transformer_blocks.0.pos_embed.pe"]
    for index in (0, 1):
        key = f"down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.{index}.pos_encoder.pe"
        assert torch.equal(from_file[key], pe)

    config = config_from_original(from_file, num_attention_heads=2)
    assert config["block_out_channels"] == (32, 64) and config["motion_max_seq_length"] == 32
    reloaded = load_motion_adapter(str(path), num_attention_heads=2)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in adapter.state_dict().items())


def test_missing_motion_path_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_motion_adapter(str(tmp_path / "nope.safetensors"))


def test_original_export_keeps_heads_and_groups_so_the_reloaded_module_computes_the_same(tmp_path, unet_inputs):
    """Heads and group-norm groups are not in the shapes: export_original records them in the file's metadata.

    Loaded with the default num_attention_heads (8, as for official modules), a 2-head module would still
    load (same shapes) but attend differently: the UNet output, not only the state dict, must match.
    """
    frames, text = unet_inputs
    adapter = randomized(tiny_motion_adapter(seed=0))  # 2 heads, 8 groups
    path = export_original(adapter, tmp_path / "mm.safetensors")
    reloaded = load_motion_adapter(str(path))  # no num_attention_heads given
    assert reloaded.config.motion_num_attention_heads == 2 and reloaded.config.motion_norm_num_groups == 8
    video_in = frames.permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        outputs = [inflate(tiny_unet(0), a).eval()(video_in, 500, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample
                   for a in (adapter, reloaded)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    # a file without the metadata (from elsewhere) falls back to the argument, as before
    from safetensors.torch import save_file

    save_file(load_file(str(path)), str(tmp_path / "plain.safetensors"))
    assert load_motion_adapter(str(tmp_path / "plain.safetensors"), num_attention_heads=4).config.motion_num_attention_heads == 4
    # ... and the default 8 heads really would change the output (what the metadata prevents)
    eight = load_motion_adapter(str(tmp_path / "plain.safetensors"))
    with torch.no_grad():
        wrong = inflate(tiny_unet(0), eight).eval()(video_in, 500, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample
    assert (wrong - outputs[0]).abs().max() > 1e-4


def test_inflating_a_module_for_another_base_is_a_user_error():
    other = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                          motion_num_attention_heads=2)
    with pytest.raises(UserInputError, match="channels"):
        inflate(tiny_unet(0), other)
