"""Attention processors for zero-shot video: cross-frame attention (Text2Video-Zero) and the style-shared
AdaIN attention of StyleT2V0 (eqs. 7-9).

They follow diffusers' processor protocol (`__call__(attn, hidden_states, encoder_hidden_states, ...)`) and
are installed with `unet.set_attn_processor` by `stylevid.attention.install`; cross-attention to the text
runs unchanged. The UNet batch holds the frames in *groups* (one per classifier-free-guidance branch), frame 1 first in
each; with a style image, one style row leads the whole batch: `[style, uncond frames..., cond frames...]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


def _to_heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, attn.heads, -1).transpose(1, 2)


def _from_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class _ZeroShotVideoProcessor:
    """What both processors share: diffusers' AttnProcessor2_0 bookkeeping around a custom self-attention.

    Subclasses implement `self_attention(query, key, value)` on (batch, heads, tokens, head_dim) tensors.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_self_attention = encoder_hidden_states is None
        context = hidden_states if is_self_attention else encoder_hidden_states
        if not is_self_attention and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = _to_heads(attn, attn.to_q(hidden_states))
        key = _to_heads(attn, attn.to_k(context))
        value = _to_heads(attn, attn.to_v(context))

        if is_self_attention and attention_mask is None:
            out = self.self_attention(query, key, value, scale=attn.scale)
        else:
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], query.shape[0])
                attention_mask = attention_mask.view(query.shape[0], attn.heads, -1, attention_mask.shape[-1])
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)

        hidden_states = attn.to_out[1](attn.to_out[0](_from_heads(out).to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def self_attention(self, query, key, value, scale):  # pragma: no cover - abstract
        raise NotImplementedError


class CrossFrameAttnProcessor(_ZeroShotVideoProcessor):
    """Text2Video-Zero's cross-frame attention: every frame attends to the keys and values of frame 1.

    `num_groups` is the number of classifier-free-guidance branches stacked in the batch (2 with guidance,
    1 without); the frames of each group are consecutive rows and frame 1 is the group's first row.
    """

    def __init__(self, num_groups: int = 2):
        self.num_groups = num_groups

    def self_attention(self, query, key, value, scale):
        batch = key.shape[0]
        frames = max(1, batch // self.num_groups)
        key = key.unflatten(0, (-1, frames))[:, :1].expand(-1, frames, -1, -1, -1).flatten(0, 1)
        value = value.unflatten(0, (-1, frames))[:, :1].expand(-1, frames, -1, -1, -1).flatten(0, 1)
        return F.scaled_dot_product_attention(query, key, value, scale=scale)


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation over the token axis (-2), per head and channel.

    AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y); `style` broadcasts against `content`.
    """
    content_mean = content.mean(dim=-2, keepdim=True)
    content_std = (content.var(dim=-2, keepdim=True, unbiased=False) + eps).sqrt()
    style_mean = style.mean(dim=-2, keepdim=True)
    style_std = (style.var(dim=-2, keepdim=True, unbiased=False) + eps).sqrt()
    return (content - content_mean) / content_std * style_std + style_mean


@dataclass
class StyleSharing:
    """How one self-attention layer shares style with the style image.

    strength: 0 leaves the layer as plain cross-frame attention; 1 is the paper's eqs. 7-8 in full; values
        between interpolate linearly between the two (a blend of statistics, not of attention maps).
    adain_queries / adain_keys: apply eq. 7 / eq. 8's AdaIN; turning one off is an ablation the paper implies.
    adain_values: V = AdaIN(V_1, V_r) instead of eq. 8's V = V_1, as the paper's Figure 2 describes ("keys and
        values are also adapted using AdaIN"). Values are what attention outputs, so this moves the frames'
        feature statistics (colour and texture) towards the style image's far more than eqs. 7-8 alone.
    attend_to_reference: StyleAligned-style sharing on top: the style image's own keys and values are
        appended to the frame-1 keys and values, so frames can copy texture from it directly.
    reference_score_shift: added to the attention logits of those appended reference tokens (log-space weight;
        0 is neutral, negative weakens the reference, positive strengthens it).
    """

    strength: float = 1.0
    adain_queries: bool = True
    adain_keys: bool = True
    adain_values: bool = False
    attend_to_reference: bool = False
    reference_score_shift: float = 0.0


class StyleSharedAttnProcessor(_ZeroShotVideoProcessor):
    """StyleT2V0's shared attention (eqs. 7-9) on a batch `[style, group 1 frames..., group 2 frames...]`.

    One style row serves every guidance group (its latent and prompt are the same in each, so computing it
    once per group would only cost time). It attends to itself only, so its features stay those of the
    (inverted) style image; frame i of each group uses Q̂_i = AdaIN(Q_i, Q_r), K = AdaIN(K_1, K_r), V = V_1
    with K_1, V_1 from that group's frame 1, and softmax(Q̂ Kᵀ/√d) V.
    """

    def __init__(self, sharing: StyleSharing, num_groups: int = 2):
        self.sharing = sharing
        self.num_groups = num_groups

    def self_attention(self, query, key, value, scale):
        share = self.sharing
        style_q, style_k, style_v = query[:1], key[:1], value[:1]  # (1, heads, tokens, head_dim)
        frame_q, frame_k, frame_v = (t[1:].unflatten(0, (self.num_groups, -1)) for t in (query, key, value))
        frames = frame_q.shape[1]
        anchor_k, anchor_v = frame_k[:, :1], frame_v[:, :1]  # K_1, V_1 of each group

        if share.strength != 0 and share.adain_queries:
            frame_q = frame_q + share.strength * (adain(frame_q, style_q) - frame_q)  # eq. 7
        if share.strength != 0 and share.adain_keys:
            anchor_k = anchor_k + share.strength * (adain(anchor_k, style_k) - anchor_k)  # eq. 8
        if share.strength != 0 and share.adain_values:
            anchor_v = anchor_v + share.strength * (adain(anchor_v, style_v) - anchor_v)  # Figure 2

        keys = anchor_k.expand(-1, frames, -1, -1, -1)
        values = anchor_v.expand(-1, frames, -1, -1, -1)
        mask = None
        if share.attend_to_reference and share.strength != 0:
            reference_k = style_k.expand(self.num_groups, frames, -1, -1, -1)
            reference_v = style_v.expand(self.num_groups, frames, -1, -1, -1)
            keys, values = torch.cat([keys, reference_k], dim=-2), torch.cat([values, reference_v], dim=-2)
            # An additive bias on the logits, broadcast over batch, heads and queries: 0 for frame 1's keys,
            # the shift for the style image's.
            mask = torch.zeros(1, 1, 1, keys.shape[-2], dtype=query.dtype, device=query.device)
            mask[..., anchor_k.shape[-2] :] = share.reference_score_shift
        frame_out = F.scaled_dot_product_attention(
            frame_q.flatten(0, 1), keys.flatten(0, 1), values.flatten(0, 1), attn_mask=mask, scale=scale
        )  # eq. 9
        style_out = F.scaled_dot_product_attention(style_q, style_k, style_v, scale=scale)
        return torch.cat([style_out, frame_out])
