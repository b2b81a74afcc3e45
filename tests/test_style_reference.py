"""The style reference for AnimateDiff (stylevid/attention/reference.py) on tiny random components.

The motion modules are NOT zero-initialised here (`zero_init=False`): a zero-initialised module is the identity,
and then "the reference skips the temporal layers" could not be told apart from "it went through them".
"""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from stylevid.attention import StyleSharing, adain
from stylevid.attention.reference import (
    StyleReferenceAttnProcessor,
    sharing_in_layers,
    spatial_self_attention_layers,
    style_reference,
)
from stylevid.models.motion_module import inflate, tiny_motion_adapter
from stylevid.models.tiny import TINY_TEXT_DIM, tiny_unet

FRAMES, TOKENS = 2, 5
# Layers that run after a motion module (down_blocks.0.attentions.0 runs before any), where skipping them shows.
LATE_LAYERS = (
    "mid_block.attentions.0.transformer_blocks.0.attn1.processor",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1.processor",
)
ALL_ON = dict(adain_queries=True, adain_keys=True, adain_values=True, attend_to_reference=True)
STRONG = StyleSharing(strength=1.0, reference_score_shift=2.0, **ALL_ON)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def image_unet():
    return tiny_unet(0)


@pytest.fixture(scope="module")
def video_unet(image_unet):
    return inflate(image_unet, tiny_motion_adapter(0, zero_init=False)).eval()


@pytest.fixture(scope="module")
def inputs():
    """A CFG batch as AnimateDiffPipeline calls the UNet: (2, C, F, h, w) and per-frame text (2*F, tokens, dim)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, FRAMES, 8, 8, generator=generator)
    text = torch.randn(2, TOKENS, TINY_TEXT_DIM, generator=generator).repeat_interleave(FRAMES, dim=0)
    # A style latent with statistics far from the frames', so that sharing it is visible.
    style = torch.randn(1, 4, 8, 8, generator=generator) * 3 + 2
    style_embeds = torch.randn(1, TOKENS, TINY_TEXT_DIM, generator=generator)
    return sample, text, style, style_embeds


def call(unet, sample, text, timestep=10):
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=text).sample


def test_only_the_image_models_self_attention_is_selectable(video_unet):
    names = spatial_self_attention_layers(video_unet)
    assert names and all(".attentions." in name and name.endswith("attn1.processor") for name in names)
    assert not any("motion_modules" in name for name in names)
    # `down_blocks` would also match the temporal attn1 under self_attention_layers; not here.
    selected = [name for name in names if sharing_in_layers("down_blocks", STRONG)(name) is not None]
    assert selected == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"]


def test_strength_zero_everywhere_is_the_plain_unet(video_unet, inputs):
    sample, text, style, style_embeds = inputs
    plain = call(video_unet, sample, text)
    zero = StyleSharing(0.0, reference_score_shift=3.0, **ALL_ON)
    with style_reference(video_unet, lambda t: style, style_embeds, sharing_in_layers("all", zero)) as reference:
        shared = call(video_unet, sample, text)
    assert reference.reference_passes == 1  # the reference ran, and left no trace
    torch.testing.assert_close(shared, plain, atol=1e-6, rtol=0)


def attn1_projections(unet, layer, run):
    """(q, k, v) in heads layout that `layer`'s attn1 computes during `run()`, read off its projections."""
    attn = unet.get_submodule(layer.removesuffix(".processor"))
    seen = {}
    hooks = [getattr(attn, f"to_{p}").register_forward_hook(lambda m, a, out, p=p: seen.setdefault(p, out)) for p in "qkv"]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[p].view(seen[p].shape[0], seen[p].shape[1], attn.heads, -1).transpose(1, 2) for p in "qkv"]


def test_the_reference_pass_is_the_image_model_without_temporal_layers(image_unet, video_unet, inputs):
    sample, text, style, style_embeds = inputs
    with style_reference(video_unet, lambda t: style, style_embeds, sharing_in_layers("all", STRONG)) as reference:
        call(video_unet, sample, text)
        recorded = {layer: reference.features(layer) for layer in spatial_self_attention_layers(video_unet)}
    for layer, features in recorded.items():
        expected = attn1_projections(image_unet, layer, lambda: image_unet(style, 10, encoder_hidden_states=style_embeds))
        for got, want in zip(features, expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The test has teeth: with the motion modules on, the same one-frame clip gives other keys after them.
    for layer in LATE_LAYERS:
        _, through_time, _ = attn1_projections(video_unet, layer, lambda: call(video_unet, style.unsqueeze(2), style_embeds))
        assert (through_time - recorded[layer].key).abs().max() > 1e-3


def heads(attn, x):
    return x.view(x.shape[0], x.shape[1], attn.heads, -1).transpose(1, 2)


@pytest.mark.parametrize(
    "sharing",
    [
        StyleSharing(1.0, adain_queries=True, adain_keys=True, adain_values=False),  # eqs. 7-8, own K_i, V_i
        StyleSharing(0.5, adain_queries=False, adain_keys=False, adain_values=True),  # Figure 2's values, blended
        StyleSharing(0.7, reference_score_shift=2.0, **ALL_ON),
    ],
    ids=["paper", "values-half", "aligned"],
)
def test_main_pass_equals_a_hand_computation_per_frame(sharing):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    processor = StyleReferenceAttnProcessor(sharing)
    attn.set_processor(processor)
    style = torch.randn(1, 7, 16) * 2 + 1  # another token count than the frames': sharing does not need the same size
    frames = torch.randn(2 * 3, 6, 16)  # 2 guidance branches x 3 frames
    with torch.no_grad():
        processor.recording = True
        attn(style)
        processor.recording = False
        out = attn(frames)

        q_r, k_r, v_r = (heads(attn, f(style)) for f in (attn.to_q, attn.to_k, attn.to_v))
        torch.testing.assert_close(processor.reference.key, k_r)
        s = sharing.strength
        q, k, v = (heads(attn, f(frames)) for f in (attn.to_q, attn.to_k, attn.to_v))  # each frame its own K_i, V_i
        if sharing.adain_queries:
            q = (1 - s) * q + s * adain(q, q_r)
        if sharing.adain_keys:
            k = (1 - s) * k + s * adain(k, k_r)
        if sharing.adain_values:
            v = (1 - s) * v + s * adain(v, v_r)
        logits = q @ k.transpose(-1, -2) / math.sqrt(8)
        if sharing.attend_to_reference:
            reference_logits = q @ k_r.transpose(-1, -2) / math.sqrt(8) + sharing.reference_score_shift
            logits = torch.cat([logits, reference_logits], dim=-1)
            v = torch.cat([v, v_r.expand(v.shape[0], -1, -1, -1)], dim=-2)
        mixed = torch.softmax(logits, dim=-1) @ v
        expected = attn.to_out[0](mixed.transpose(1, 2).reshape(frames.shape[0], 6, 16))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_the_reference_never_reaches_the_frames_temporal_layers(video_unet, inputs):
    sample, text, style, style_embeds = inputs
    plain = call(video_unet, sample, text)
    # Strength 1 but nothing shared: any leak of the reference into the video (say into temporal attention) shows.
    inert = StyleSharing(1.0, adain_queries=False, adain_keys=False, adain_values=False, attend_to_reference=False)
    seen = []
    norms = [m.norm for m in video_unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
    hooks = [norm.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape))) for norm in norms]
    try:
        with style_reference(video_unet, lambda t: style, style_embeds, sharing_in_layers("all", inert)) as reference:
            shared = call(video_unet, sample, text)
    finally:
        for hook in hooks:
            hook.remove()
    assert reference.reference_passes == 1
    torch.testing.assert_close(shared, plain, atol=1e-6, rtol=0)
    # Each motion module ran once, on the video's 2 x F frames only (its input is (batch, C, F, h, w)).
    assert len(seen) == len(norms)
    assert all(shape[0] == 2 and shape[2] == FRAMES for shape in seen)


def hooks_and_processors(unet):
    motion_forwards = [m.__dict__.get("forward") for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
    return dict(unet.attn_processors), dict(unet._forward_pre_hooks), motion_forwards


@pytest.mark.parametrize("where", ["body", "reference pass"])
def test_everything_is_restored_after_the_block_and_after_an_exception(video_unet, inputs, where):
    sample, text, style, style_embeds = inputs
    before = hooks_and_processors(video_unet)
    plain = call(video_unet, sample, text)

    def latents_at(timestep):
        # 3 channels instead of 4: conv_in fails inside the reference pass, with the motion modules switched off.
        return style[:, :3] if where == "reference pass" else style

    with style_reference(video_unet, lambda t: style, style_embeds, sharing_in_layers("up_blocks", STRONG)):
        inside = video_unet.attn_processors
        selected = [name for name, p in inside.items() if isinstance(p, StyleReferenceAttnProcessor)]
        assert selected == [n for n in spatial_self_attention_layers(video_unet) if n.startswith("up_blocks")]
        # Everything else (cross-attention, temporal attention, unselected layers) keeps its very processor.
        assert all(inside[name] is before[0][name] for name in inside if name not in selected)
        assert len(video_unet._forward_pre_hooks) == len(before[1]) + 1
    with pytest.raises(RuntimeError):
        with style_reference(video_unet, latents_at, style_embeds, sharing_in_layers("all", STRONG)) as reference:
            call(video_unet, sample, text)
            raise RuntimeError("generation failed half way")
    assert reference.reference_passes == (where == "body") and reference.timestep is None
    assert not any(p.recording or p.reference is not None for p in reference.processors.values())
    after = hooks_and_processors(video_unet)
    assert after[0].keys() == before[0].keys() and all(after[0][k] is before[0][k] for k in before[0])
    assert all(isinstance(p, AttnProcessor2_0) for p in after[0].values())
    assert after[1] == before[1] and after[2] == before[2] == [None] * len(before[2])
    assert torch.equal(call(video_unet, sample, text), plain)


def test_one_reference_per_distinct_timestep_serves_both_guidance_branches(video_unet, inputs):
    sample, text, style, style_embeds = inputs
    asked = []

    def latents_at(timestep):
        asked.append(timestep)
        return style

    twins = torch.cat([sample[:1], sample[:1]])  # both branches the same: they must come out the same
    twins_text = torch.cat([text[:FRAMES], text[:FRAMES]])
    plain = call(video_unet, twins, twins_text)
    with style_reference(video_unet, latents_at, style_embeds, sharing_in_layers("all", STRONG)) as reference:
        outs = [call(video_unet, twins, twins_text, t) for t in (10, 10, 5, 5, 10)]  # repeated calls per step reuse it
        single = call(video_unet, sample[:1], text[:FRAMES], 10)  # no guidance: batch 1
    assert asked == [10, 5, 10] and reference.reference_passes == 3
    torch.testing.assert_close(outs[0][0], outs[0][1], atol=1e-6, rtol=0)
    torch.testing.assert_close(outs[0][:1], single, atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[4], outs[0], atol=1e-6, rtol=0)
    assert (outs[0] - plain).abs().max() > 1e-2  # and sharing does move the output


def test_animatediff_pipeline_with_free_noise_split_inference_and_cpu_offload_hooks():
    """End to end in diffusers' own loop: FreeNoise (whose temporal blocks cannot run a one-frame clip), its split
    inference (which renames the attentions `...attentions.N.module...` and splits the batch), accelerate's model
    offload hook on the UNet; one reference pass per denoising step, at that step's timestep."""
    from stylevid.methods.animatediff import animatediff_pipeline
    from stylevid.models.tiny import tiny_pipeline

    pipe = animatediff_pipeline(tiny_pipeline(0), tiny_motion_adapter(0, zero_init=False), "linear")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_noise(context_length=2, context_stride=1)
    pipe.enable_free_noise_split_inference(spatial_split_size=16, temporal_split_size=2)
    pipe.enable_model_cpu_offload(device="cpu")
    style_embeds, _ = pipe.encode_prompt("a painting", torch.device("cpu"), 1, False)
    style = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3 + 2
    asked = []

    def latents_at(timestep):
        asked.append(timestep)
        return style

    def run():
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe(prompt="a cat", num_frames=3, height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
                    generator=generator, output_type="latent").frames

    plain = run()
    with style_reference(pipe.unet, latents_at, style_embeds, sharing_in_layers("up_blocks.1", STRONG)) as reference:
        assert len(reference.processors) == 2 and all(".module." in name for name in reference.processors)
        styled = run()
    assert asked == [int(t) for t in pipe.scheduler.timesteps] and reference.reference_passes == 2
    assert torch.isfinite(styled).all() and (styled - plain).abs().max() > 1e-2
    torch.testing.assert_close(run(), plain, atol=1e-6, rtol=0)  # and gone afterwards
