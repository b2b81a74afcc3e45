"""A style image for AnimateDiff: StyleT2V0's shared AdaIN attention (eqs. 7-9) on a `UNetMotionModel`.

StyleT2V0 (Section 4) steers Text2Video-Zero with a style image: the image's latent (its DDIM inversion, or the
clean latent) is denoised alongside the frames, and in the self-attention layers each frame i uses
    Q̂_i = AdaIN(Q_i, Q_r)              (eq. 7)
    K = AdaIN(K_1, K_r),  V = V_1       (eq. 8; Figure 2 also adapts V with AdaIN)
    softmax(Q̂_i Kᵀ / √d) V             (eq. 9)
with r the style image. Text2Video-Zero needs K_1, V_1 (frame 1's keys and values) for consistency across frames;
AnimateDiff gets it from its motion modules instead, so here every frame keeps its OWN keys and values and only
the style statistics are shared: K_i' = AdaIN(K_i, K_r), V_i' = AdaIN(V_i, V_r) when `adain_values`, and with
`attend_to_reference` (StyleAligned) the style image's K_r, V_r are appended to every frame's, their logits shifted
by `reference_score_shift`. The flags and the strength blend are `StyleSharing`'s, as in `methods/stylet2v0.py`.

Where Q_r, K_r, V_r come from. stylet2v0 adds the style latent as one more batch row; a `UNetMotionModel` has no
place for one, because its frames are folded into the batch (AnimateDiff Section 3.3.1: `(B, C, F, h, w)` ->
`B*F` rows, batch-major) and its motion modules attend along F: an extra frame would be mixed into the video's
motion (and shift its position encodings), an extra clip would cost F frames. Instead, once per UNet call, a
*reference pass* runs the same UNet on the style latent as a one-frame clip with every motion module switched off,
which is exactly the frozen (personalized) image model the motion module was plugged into, so "the reference
rides along through the spatial self-attention layers and never through the temporal layers". The selected spatial self-attention layers record Q_r, K_r, V_r
during that pass and use them in the main pass. One reference row serves both guidance branches (as in stylet2v0:
its latent and prompt are the same for both), and since each frame only needs its own row and the reference, the
math holds however the batch is split (CFG, FreeNoise's split inference).

Use:
    sharing = StyleSharing(strength=0.8, adain_values=True, attend_to_reference=True, reference_score_shift=2.0)
    with style_reference(pipe.unet, latents_at, style_embeds, sharing_in_layers(["up_blocks"], sharing)):
        pipe(prompt=..., num_frames=16, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from .install import installed_processors, layer_selected, self_attention_layers
from .processors import StyleSharing, _ZeroShotVideoProcessor, adain


class ReferenceFeatures(NamedTuple):
    """One layer's projections of the style image, (1, heads, tokens, head_dim) each."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


def spatial_self_attention_layers(video_unet: torch.nn.Module) -> list[str]:
    """Processor keys of the image model's self-attention layers (`...attentions.N.transformer_blocks.M.attn1`).

    `self_attention_layers` alone would also list the motion modules' temporal self-attention
    (`down_blocks.0.motion_modules.0.transformer_blocks.0.attn1`), which a selector such as `down_blocks` matches
    too; style is shared across space, never along time, so those are left out here.
    """
    return [name for name in self_attention_layers(video_unet) if ".motion_modules." not in f".{name}"]


def sharing_in_layers(layers: Sequence[str] | str, sharing: StyleSharing) -> Callable[[str], StyleSharing | None]:
    """`sharing` for the layers the selectors pick (`layer_selected`: all, down_blocks, up_blocks.1, ...), None
    (diffusers' own processor) elsewhere: the `sharing_for_layer` that `style_reference` takes."""
    return lambda name: sharing if layer_selected(name, layers) else None


def _toward_style(x: torch.Tensor, style: torch.Tensor, strength: float) -> torch.Tensor:
    # The blend StyleSharedAttnProcessor uses: strength 1 is AdaIN in full, 0 leaves x as it is.
    return x + strength * (adain(x, style) - x)


def shared_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, reference: ReferenceFeatures, sharing: StyleSharing, scale: float
) -> torch.Tensor:
    """Eqs. 7-9 per frame: each row of `query`/`key`/`value` (rows, heads, tokens, head_dim) is one frame with its own
    keys and values; the reference (1 row) broadcasts over every row, whatever the batch holds."""
    mask = None
    if sharing.strength != 0:
        if sharing.adain_queries:
            query = _toward_style(query, reference.query, sharing.strength)  # eq. 7
        if sharing.adain_keys:
            key = _toward_style(key, reference.key, sharing.strength)  # eq. 8, with K_i for K_1
        if sharing.adain_values:
            value = _toward_style(value, reference.value, sharing.strength)  # Figure 2
        if sharing.attend_to_reference:
            own = key.shape[-2]
            rows = query.shape[0]
            key = torch.cat([key, reference.key.expand(rows, -1, -1, -1)], dim=-2)
            value = torch.cat([value, reference.value.expand(rows, -1, -1, -1)], dim=-2)
            # An additive bias on the logits, broadcast over rows, heads and queries: 0 for the frame's own keys,
            # the shift for the style image's (as StyleSharedAttnProcessor does).
            mask = torch.zeros(1, 1, 1, key.shape[-2], dtype=query.dtype, device=query.device)
            mask[..., own:] = sharing.reference_score_shift
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)  # eq. 9


class StyleReferenceAttnProcessor(_ZeroShotVideoProcessor):
    """One spatial self-attention layer: records the style image's projections while `recording` (the reference
    pass), and applies `shared_attention` with them otherwise (the main pass).

    The bookkeeping around it is `_ZeroShotVideoProcessor`'s, which, like stylet2v0's processors, has no q/k norms
    (SD 1.x has none) and sends a call with an attention mask to plain attention (diffusers passes none to attn1).
    """

    def __init__(self, sharing: StyleSharing):
        self.sharing = sharing
        self.recording = False
        self.reference: ReferenceFeatures | None = None

    def self_attention(self, query, key, value, scale):
        if self.recording:
            self.reference = ReferenceFeatures(query, key, value)
            # The style image attends to itself only, so its features further down stay those of the image.
            return F.scaled_dot_product_attention(query, key, value, scale=scale)
        if self.reference is None:
            raise RuntimeError("style reference: a shared layer ran before the reference pass recorded it")
        return shared_attention(query, key, value, self.reference, self.sharing, scale)


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


@contextmanager
def _temporal_layers_off(motion_modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Every motion module returns its input unchanged (it is a residual block, so this is "no temporal layer").

    Done by replacing the instance's `forward`, not by a forward hook that discards the output: a hook would still
    run the module, which costs time and fails outright under FreeNoise (its `FreeNoiseTransformerBlock` finds no
    context window in a one-frame clip: IndexError). An instance `forward` already there (accelerate's offload
    wrapper) is put back afterwards.
    """
    saved = [module.__dict__.get("forward") for module in motion_modules]
    for module in motion_modules:
        module.forward = _pass_through
    try:
        yield
    finally:
        for module, forward in zip(motion_modules, saved):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def _argument(args: tuple, kwargs: dict, index: int, name: str):
    return args[index] if len(args) > index else kwargs[name]


def _timestep_key(timestep) -> float:
    """The one timestep of a UNet call as a number (the pipeline passes a scalar; a per-row tensor must agree)."""
    if torch.is_tensor(timestep):
        values = timestep.flatten()
        if values.numel() > 1 and not bool((values == values[0]).all()):
            raise ValueError("style reference: the UNet was called with different timesteps per row; the reference needs one")
        return values[0].item()
    return float(timestep)


class StyleReference:
    """What `style_reference` yields: the installed processors by layer, and a count of reference passes run."""

    def __init__(
        self,
        processors: dict[str, StyleReferenceAttnProcessor],
        motion_modules: list[torch.nn.Module],
        latents_at: Callable[[int], torch.Tensor],
        embeds: torch.Tensor,
    ):
        self.processors = processors
        self.reference_passes = 0
        self.timestep: float | None = None  # the timestep the recorded features are for
        self._motion_modules = motion_modules
        self._latents_at = latents_at
        self._embeds = embeds
        self._running = False

    def features(self, layer: str) -> ReferenceFeatures | None:
        """The style image's recorded (query, key, value) at processor key `layer`, None before the first pass."""
        return self.processors[layer].reference

    def before_unet_call(self, unet: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the video UNet: runs the reference pass for this call's timestep, unless the features
        recorded last are for the same timestep (several calls per step reuse them). Only the last timestep is kept:
        all of them would cost the style image's activations in every shared layer times the number of steps, and a
        repeated schedule (FreeInit) pays one one-frame pass per step again."""
        if self._running or not self.processors:  # the reference pass's own call into the UNet
            return None
        timestep = _argument(args, kwargs, 1, "timestep")
        key = _timestep_key(timestep)
        if key == self.timestep:
            return None
        sample = _argument(args, kwargs, 0, "sample")
        context = _argument(args, kwargs, 2, "encoder_hidden_states")
        # The reference at the call's own timestep value (and dtype), one row of it.
        timestep = timestep.flatten()[:1].to(sample.device) if torch.is_tensor(timestep) else timestep
        self._reference_pass(unet, key, timestep, sample, context)
        return None

    def _reference_pass(self, unet: torch.nn.Module, key: float, timestep, sample: torch.Tensor, context: torch.Tensor) -> None:
        latents = self._latents_at(int(round(key)))
        if latents.ndim != 4 or latents.shape[0] != 1:
            raise ValueError(f"style reference: latents_at must return (1, C, h, w), got {tuple(latents.shape)}")
        # Devices and dtypes from the incoming call, never by moving modules: under accelerate's offload the
        # UNet's weights may still be on the CPU here (its hook moves them when the UNet is called, below).
        clip = latents.to(device=sample.device, dtype=sample.dtype).unsqueeze(2)  # one-frame clip (1, C, 1, h, w)
        embeds = self._embeds.to(device=context.device, dtype=context.dtype)
        self.timestep = None  # a pass that fails half way leaves nothing to reuse
        self._running = True
        for processor in self.processors.values():
            processor.recording = True
        try:
            # Through `unet(...)`, not `unet.forward`, so accelerate's hooks run; no ControlNet residuals or
            # cross_attention_kwargs: those belong to the video's frames, not to the style image.
            with torch.no_grad(), _temporal_layers_off(self._motion_modules):
                unet(clip, timestep, encoder_hidden_states=embeds, return_dict=False)
        finally:
            self._running = False
            for processor in self.processors.values():
                processor.recording = False
        self.timestep = key
        self.reference_passes += 1

    def release(self) -> None:
        """Drop the recorded features (they are the size of the style image's activations in every shared layer)."""
        for processor in self.processors.values():
            processor.reference = None
        self.timestep = None


@contextmanager
def style_reference(
    video_unet: torch.nn.Module,
    latents_at: Callable[[int], torch.Tensor],
    embeds: torch.Tensor,
    sharing_for_layer: Callable[[str], StyleSharing | None],
) -> Iterator[StyleReference]:
    """Share a style image's attention statistics with every frame the `UNetMotionModel` denoises in this block.

    latents_at(timestep) -> (1, C, h, w): the style image's latent for a UNet call at `timestep` (the clean latent
        at every step, or its DDIM inversion at that timestep); called at each reference pass, i.e. once per UNet
        call whose timestep differs from the previous call's.
    embeds: (1, tokens, dim) text embeddings of the style prompt for the reference pass (one reference row serves
        both classifier-free-guidance branches).
    sharing_for_layer(processor key) -> the StyleSharing of that spatial self-attention layer, or None to keep its
        processor (diffusers' default): e.g. `sharing_in_layers(["up_blocks"], sharing)`. Asked only for the
        layers of `spatial_self_attention_layers`; cross-attention and the temporal layers are never touched.

    Installs the processors and the UNet's forward pre-hook; on exit (also on an exception) the original processors
    come back, the hook goes and the recorded features are dropped. Enter it after anything that rebuilds the UNet's
    layers (`enable_free_noise`, split inference), so the processors sit on the layers that run.
    """
    motion_modules = [module for module in video_unet.modules() if isinstance(module, AnimateDiffTransformer3D)]
    if not motion_modules:
        raise TypeError(f"style_reference needs a UNetMotionModel (one with motion modules), got {type(video_unet).__name__}")
    processors = {}
    for name in spatial_self_attention_layers(video_unet):
        sharing = sharing_for_layer(name)
        if sharing is not None:
            processors[name] = StyleReferenceAttnProcessor(sharing)
    handle = StyleReference(processors, motion_modules, latents_at, embeds)
    with installed_processors(video_unet, processors.get):
        hook = video_unet.register_forward_pre_hook(handle.before_unet_call, with_kwargs=True)
        try:
            yield handle
        finally:
            hook.remove()
            handle.release()


class _OneFrameImageModel:
    """A `UNetMotionModel` called as the image model it inflates: (N, C, h, w) latents in, temporal layers off."""

    def __init__(self, video_unet: torch.nn.Module):
        self.video_unet = video_unet

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        clips = sample.unsqueeze(2)  # (N, C, 1, h, w): every image a one-frame clip
        noise = self.video_unet(clips, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return _Prediction(noise[:, :, 0])


class _Prediction(NamedTuple):
    sample: torch.Tensor


@contextmanager
def image_layers_only(video_unet: torch.nn.Module) -> Iterator[_OneFrameImageModel]:
    """The video UNet as its image model (UNet2DConditionModel's call: `unet(latents, t, encoder_hidden_states=...)
    .sample`), for DDIM-inverting the style image with the same weights, device and offload hooks as the video
    instead of keeping a second copy of the image UNet."""
    motion_modules = [module for module in video_unet.modules() if isinstance(module, AnimateDiffTransformer3D)]
    with _temporal_layers_off(motion_modules):
        yield _OneFrameImageModel(video_unet)
