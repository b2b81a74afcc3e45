import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from stylevid.attention import (
    CrossFrameAttnProcessor,
    StyleSharedAttnProcessor,
    StyleSharing,
    adain,
    installed_processors,
    layer_selected,
    self_attention_layers,
)


def make_attention(seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=16, heads=2, dim_head=8).eval()


def heads(x, n=2):
    return x.view(x.shape[0], x.shape[1], n, -1).transpose(1, 2)


def test_adain_matches_style_statistics_per_channel():
    torch.manual_seed(0)
    content = torch.randn(3, 2, 10, 4) * 3 + 1
    style = torch.randn(1, 2, 12, 4) * 0.5 - 2
    out = adain(content, style, eps=0.0)
    torch.testing.assert_close(out.mean(-2), style.mean(-2).expand_as(out.mean(-2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(-2, unbiased=False), style.std(-2, unbiased=False).expand_as(out.mean(-2)), atol=1e-5, rtol=1e-5)


def test_cross_frame_processor_equals_diffusers_reference():
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor2_0

    attn = make_attention()
    hidden = torch.randn(2 * 3, 5, 16)  # 2 guidance groups x 3 frames, 5 tokens
    attn.set_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    expected = attn(hidden)
    attn.set_processor(CrossFrameAttnProcessor(num_groups=2))
    torch.testing.assert_close(attn(hidden), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("adain_values", [False, True])
def test_style_processor_equals_direct_computation_of_eqs_7_to_9(adain_values):
    attn = make_attention()
    torch.manual_seed(1)
    groups, frames, tokens = 2, 3, 6
    hidden = torch.randn(1 + groups * frames, tokens, 16)  # [style, group 1 frames, group 2 frames]
    attn.set_processor(StyleSharedAttnProcessor(StyleSharing(strength=1.0, adain_values=adain_values), num_groups=groups))
    out = attn(hidden)

    def attend(query, key, value):
        weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1)
        return weights @ value

    def norm(x, ref):  # AdaIN written out: per head and channel, statistics over tokens
        mu, sd = x.mean(1, keepdim=True), (x.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        mu_r, sd_r = ref.mean(1, keepdim=True), (ref.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        return (x - mu) / sd * sd_r + mu_r

    with torch.no_grad():
        q, k, v = (heads(layer(hidden)) for layer in (attn.to_q, attn.to_k, attn.to_v))
        q_r, k_r, v_r = q[0], k[0], v[0]
        expected = [attend(q_r, k_r, v_r)]  # the style row attends to itself
        for g in range(groups):
            first = 1 + g * frames
            key = norm(k[first], k_r)  # eq. 8: K = AdaIN(K_1, K_r)
            value = norm(v[first], v_r) if adain_values else v[first]  # Figure 2: AdaIN(V_1, V_r); eq. 8: V = V_1
            for i in range(frames):
                expected.append(attend(norm(q[first + i], q_r), key, value))  # eqs. 7, 9
        expected = torch.stack(expected).transpose(1, 2).reshape(hidden.shape[0], tokens, 16)
        expected = attn.to_out[0](expected)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_style_strength_zero_gives_cross_frame_attention_for_the_frames_exactly():
    attn = make_attention()
    torch.manual_seed(2)
    groups, frames = 2, 3
    hidden = torch.randn(1 + groups * frames, 5, 16)
    attn.set_processor(StyleSharedAttnProcessor(StyleSharing(strength=0.0), num_groups=groups))
    styled = attn(hidden)[1:]
    attn.set_processor(CrossFrameAttnProcessor(num_groups=groups))
    assert torch.equal(styled, attn(hidden[1:]))


def test_reference_tokens_with_very_negative_shift_change_nothing():
    attn = make_attention()
    hidden = torch.randn(1 + 2 * 3, 5, 16)
    attn.set_processor(StyleSharedAttnProcessor(StyleSharing(strength=1.0), num_groups=2))
    without = attn(hidden)
    attn.set_processor(StyleSharedAttnProcessor(StyleSharing(strength=1.0, attend_to_reference=True, reference_score_shift=-1e4), num_groups=2))
    torch.testing.assert_close(attn(hidden), without, atol=1e-6, rtol=0)
    attn.set_processor(StyleSharedAttnProcessor(StyleSharing(strength=1.0, attend_to_reference=True), num_groups=2))
    assert not torch.allclose(attn(hidden), without, atol=1e-4)


def test_installed_processors_are_restored_and_only_self_attention_changes(tiny_pipe):
    unet = tiny_pipe.unet
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    with installed_processors(unet, lambda name: CrossFrameAttnProcessor(2)):
        during = unet.attn_processors
        assert all(isinstance(during[n], CrossFrameAttnProcessor) for n in self_attention_layers(unet))
        assert not any(isinstance(p, CrossFrameAttnProcessor) for n, p in during.items() if "attn2" in n)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before

    with pytest.raises(RuntimeError):
        with installed_processors(unet, lambda name: CrossFrameAttnProcessor(2)):
            raise RuntimeError("generation failed half way")
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_layer_selection_by_level():
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
    assert layer_selected(name, ["all"])
    assert layer_selected(name, ["up_blocks"])
    assert layer_selected(name, ["up_blocks.1"])
    assert not layer_selected(name, ["up_blocks.10"])
    assert not layer_selected(name, ["down_blocks", "mid_block"])
