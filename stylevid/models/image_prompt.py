"""The image-prompt model (VideoBooth-style paper, Sections 3.1-3.4) on an AnimateDiff `UNetMotionModel`.

Two ways the image prompt I reaches the video model, shared by `method=image_prompt` and `stylevid train
image_prompt`:

* Coarse (Section 3.1): f_V = CLIP_I(I) is the class token of several layers of a frozen CLIP vision tower
  (`clip_layer_features`, as VideoBooth's ELITE-style mapper reads several layers); f_I = F(f_V) is
  `ImagePromptMapper`, an MLP giving `num_tokens` tokens of the text width. They replace the embedding rows of the
  subject word in the prompt (c_T = [f_T^0 .. f_T^{k-1}, f_I, f_T^{k+n} ..]) through a forward hook on the CLIP
  text model's token embedding (`subject_rows_replaced`: transformers' CLIPTextModel takes no inputs_embeds), and
  trained copies of every spatial cross-attention's K, V projections serve the composed text
  (`ComposedTextAttnProcessor`): the unconditional branch keeps the original projections.
* Fine (Section 3.2): the image prompt's VAE latent, noised to the current timestep, x_I^t = sqrt(ᾱ_t) x_I +
  sqrt(1 - ᾱ_t) ε, runs through the same UNet as a one-frame clip with the motion modules off (an exemplar pass,
  as `stylevid.attention.reference` runs a style image: an extra frame inside a UNetMotionModel would be mixed into
  the video's motion), and each spatial self-attention layer records its input there. In the main pass
  `ExemplarAttnProcessor` computes the paper's equations with K_I, V_I from trained exemplar projections of that
  recorded input:
      V_0^new = softmax(Q_0 [K_I, K_0]ᵀ / √d) [V_I, V_0]
      V_i^new = softmax(Q_i [K_0, K_{i-1}]ᵀ / √d) [V_0^new, V_{i-1}]      (i ≥ 1)
  A video without the image prompt (the unconditional guidance branch, a dropped training sample) has no K_I, V_I:
  frame 0 attends to itself, the other frames as above. Each layer's trained `ExemplarGates` blend this with the
  layer's own self-attention, from 0 at the start (the coarse model exactly) to 1 (the equations exactly), in the
  videos that have their exemplar; the others keep the layer's own attention.
* Position encoding (Section 3.4): 2D sine-cosine spatial encodings (positions scaled to the top level's grid, so
  every UNet scale shares one coordinate frame) plus 1D temporal ones over the frame index, added to Q, K, V in
  those layers (`position_encodings`); the exemplar gets the spatial part only (it has no time).

Which videos of a UNet batch carry the image prompt is `ImagePromptState.conditioned`, one bool per video (the
UNet folds frames into the batch video-major, so video b owns rows b*F .. b*F+F-1).

Weights directory (`save_image_prompt_weights`): mapper/ (ImagePromptMapper save_pretrained), image_encoder/ (the
frozen CLIP vision tower and its processor), attention_processors.safetensors (kv.<layer>.to_k/to_v: the K, V
copies; exemplar.<layer>.to_k/to_v: the exemplar projections, exemplar.<layer>.gates.injection/position), manifest.json {"format", "stages" trained,
"base_model", "clip_layers", "fine", "position_encoding", ...}.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed_from_grid
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from ..errors import UserInputError
from .components import load_component

FORMAT = "stylevid-image-prompt-weights"
MANIFEST = "manifest.json"
PROCESSORS_FILE = "attention_processors.safetensors"
STAGES = ("coarse", "fine", "joint")
DEFAULT_LAYER_COUNT = 5  # VideoBooth's mapper reads five CLIP layers


# --- coarse: CLIP features -> mapper -> tokens (Section 3.1) ---------------------------------------------------------


def default_clip_layers(num_hidden_layers: int, count: int = DEFAULT_LAYER_COUNT) -> list[int]:
    """`count` evenly spaced layers of a CLIP vision tower, the last included (indices into `hidden_states`, whose
    0 is the patch embedding)."""
    count = max(1, min(count, num_hidden_layers))
    return sorted({round(num_hidden_layers * (k + 1) / count) for k in range(count)})


def clip_layer_features(image_encoder, pixel_values: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """f_V: the class token of each of `layers` of the vision tower, (B, len(layers), hidden)."""
    hidden = image_encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    if max(layers) >= len(hidden) or min(layers) < 0:
        raise UserInputError(f"CLIP layers {layers} are outside the image encoder's 0..{len(hidden) - 1}")
    return torch.stack([hidden[layer][:, 0] for layer in layers], dim=1)


class ImagePromptMapper(ModelMixin, ConfigMixin):
    """F(·) of Section 3.1: the concatenated class tokens of `clip_layers` -> `num_tokens` tokens of `text_dim`."""

    @register_to_config
    def __init__(self, vision_dim: int, text_dim: int, clip_layers: list[int], num_tokens: int = 1,
                 hidden_dim: int = 1024):
        super().__init__()
        width = vision_dim * len(clip_layers)
        self.norm = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, hidden_dim), torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, hidden_dim), torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, num_tokens * text_dim),
        )

    @property
    def output_layer(self) -> torch.nn.Linear:
        return self.mlp[-1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, layers, vision_dim) -> (B, num_tokens, text_dim)."""
        tokens = self.mlp(self.norm(features.flatten(1)))
        return tokens.unflatten(1, (self.config.num_tokens, self.config.text_dim))


BACKGROUND = 255  # what the mask leaves around the subject and pads it with (VideoBooth pads its crops with white)


def prepare_image_prompt(image, mask=None, height: int | None = None, width: int | None = None):
    """The subject as the model sees it: uint8 (H, W, 3) with everything outside `mask` (uint8 (H, W), nonzero on the
    subject) set to the neutral background, padded to the frame's aspect (height x width) and resized to it."""
    import cv2
    import numpy as np

    image = np.array(image, dtype=np.uint8, copy=True)
    if mask is not None:
        if mask.shape[:2] != image.shape[:2]:
            raise UserInputError(f"image_prompt_mask is {mask.shape[0]}x{mask.shape[1]} but the image prompt is "
                                 f"{image.shape[0]}x{image.shape[1]}; they must have one size")
        image[np.asarray(mask) == 0] = BACKGROUND
    if height is None or width is None:
        return image
    rows, cols = image.shape[:2]
    target_rows = max(rows, round(cols * height / width))  # pad, never crop: the whole subject stays
    target_cols = max(cols, round(rows * width / height))
    padded = np.full((target_rows, target_cols, 3), BACKGROUND, np.uint8)
    top, left = (target_rows - rows) // 2, (target_cols - cols) // 2
    padded[top:top + rows, left:left + cols] = image
    interpolation = cv2.INTER_AREA if target_rows > height else cv2.INTER_LINEAR
    return cv2.resize(padded, (width, height), interpolation=interpolation)


# --- the subject word in the prompt ------------------------------------------------------------------------------------


def prompt_words(prompt: str) -> list[str]:
    return re.findall(r"[\w'-]+", prompt.lower())


@dataclass
class ComposedPrompt:
    """A prompt's token ids with the subject's span holding one slot per mapped token, and where those slots are."""

    input_ids: torch.Tensor  # (model_max_length,)
    positions: list[int]  # the slots f_I fills, num_tokens per occurrence of the subject


def compose_prompt(tokenizer, prompt: str, subject: str, num_tokens: int) -> ComposedPrompt:
    """Tokenize `prompt` as SD does (padded to the full length) and find `subject`'s tokens in it.

    A subject of n tokens (a multi-token word, or several words) spans n positions; its span is rewritten to
    `num_tokens` slots (the mapper's output length; with num_tokens = n the ids are the prompt's own), every
    occurrence of the subject. A subject the prompt does not contain is one line naming the prompt's words.
    """
    subject_ids = tokenizer(subject, add_special_tokens=False).input_ids
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    n = len(subject_ids)
    starts = [k for k in range(len(ids) - n + 1) if n and ids[k:k + n] == subject_ids] if subject.strip() else []
    if not starts:
        raise UserInputError(f"subject={subject!r} is not a word of the prompt; its words are: "
                             f"{', '.join(prompt_words(prompt)) or '(none)'}")
    slots = [subject_ids[min(j, n - 1)] for j in range(num_tokens)]  # placeholders: their embeddings are replaced
    composed, positions, at = [], [], 0
    for start in starts:
        composed += ids[at:start]
        positions += range(len(composed), len(composed) + num_tokens)
        composed += slots
        at = start + n
    composed += ids[at:]
    length = tokenizer.model_max_length
    if len(composed) > length:  # keep the end-of-text token last, as truncation does
        composed = composed[:length - 1] + [composed[-1]]
        if max(positions) >= length - 1:
            raise UserInputError(f"the prompt is too long: subject={subject!r} falls past the text encoder's "
                                 f"{length} tokens once its {num_tokens} image tokens are in")
    composed += [tokenizer.pad_token_id] * (length - len(composed))
    return ComposedPrompt(torch.tensor(composed), positions)


@contextmanager
def subject_rows_replaced(text_encoder, positions: list[list[int]], tokens: torch.Tensor):
    """While inside, the CLIP text model's token embedding returns f_I at `positions[b]` of sample b (tokens
    (B, num_tokens, D), one group of num_tokens per occurrence) and its own rows elsewhere, bit for bit: c_T of
    Section 3.1, made by a forward hook (the model takes no inputs_embeds)."""

    def replace(module, args, output):
        batch = torch.cat([torch.full((len(p),), b) for b, p in enumerate(positions)]).to(output.device)
        rows = torch.tensor([q for p in positions for q in p], device=output.device)
        values = torch.cat([tokens[b].repeat(len(p) // tokens.shape[1], 1) for b, p in enumerate(positions)])
        output = output.clone()
        output[batch, rows] = values.to(output.dtype)
        return output

    # The token embedding (`text_model.embeddings.token_embedding`; `embeddings.token_embedding` in transformers 5).
    hook = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        hook.remove()


def composed_text_embeddings(text_encoder, prompts: list[ComposedPrompt], tokens: torch.Tensor) -> torch.Tensor:
    """c_T for each prompt: the text encoder's last hidden state with the subject rows replaced by `tokens`."""
    ids = torch.stack([p.input_ids for p in prompts]).to(text_encoder.device)
    with subject_rows_replaced(text_encoder, [p.positions for p in prompts], tokens):
        return text_encoder(ids)[0]


# --- position encodings (Section 3.4) ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)  # every layer asks for the same few grids at every UNet call
def spatial_position_encoding(dim: int, height: int, width: int, top: tuple[int, int]) -> torch.Tensor:
    """(height*width, dim) 2D sine-cosine encodings (half the channels for each axis, diffusers' own
    `get_2d_sincos_pos_embed_from_grid`), the positions scaled to the `top` (height, width) grid: a token of a
    feature map 1/s the size sits at s times its index, so every UNet scale shares one coordinate frame."""
    rows = torch.arange(height, dtype=torch.float32) * (top[0] / height)
    cols = torch.arange(width, dtype=torch.float32) * (top[1] / width)
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=0).reshape(2, 1, height, width)
    return get_2d_sincos_pos_embed_from_grid(dim, grid).float()


@functools.lru_cache(maxsize=64)
def temporal_position_encoding(dim: int, frames: int) -> torch.Tensor:
    """(frames, dim) 1D sine-cosine encodings of the frame index."""
    return get_1d_sincos_pos_embed_from_grid(dim, torch.arange(frames, dtype=torch.float32)).float()


def feature_map_size(tokens: int, top: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a feature map of `tokens` tokens at the aspect of the top latent grid `top`."""
    for scale in range(0, 8):
        h, w = -(-top[0] // 2 ** scale), -(-top[1] // 2 ** scale)  # diffusers' stride-2 convs round up
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} tokens are no downsampling of a {top[0]}x{top[1]} latent")


# --- which videos carry the image prompt, and what the exemplar pass recorded ------------------------------------------


@dataclass
class ImagePromptState:
    """Shared by every processor of one UNet: set before each UNet call (`conditioned`), filled by the exemplar pass."""

    conditioned: torch.Tensor | None = None  # (videos,) bool
    # (videos,) bool: which videos' text cross-attention reads the composed text through the K, V copies; None: the
    # `conditioned` ones. Fine-stage training with target.coarse_dropout keeps the exemplar of a video whose coarse
    # tokens it drops (plain caption, the layer's own K, V).
    composed: torch.Tensor | None = None
    exemplars: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (conditioned videos, tokens, C)
    recording: bool = False  # inside the exemplar pass
    position_encoding: bool = True
    latent_size: tuple[int, int] | None = None  # the top latent grid (h, w) of the current call

    def row_mask(self, rows: int, device, text: bool = False) -> torch.Tensor:
        """One bool per UNet row: the video's `conditioned` (with `text`, its `composed`) repeated over its frames."""
        if self.conditioned is None:
            raise RuntimeError("image prompt: a UNet call without ImagePromptState.conditioned set")
        mask = self.composed if text and self.composed is not None else self.conditioned
        videos = len(mask)
        if rows % videos:
            raise RuntimeError(f"image prompt: {rows} UNet rows are not {videos} videos of equal length")
        return mask.to(device).repeat_interleave(rows // videos)


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


class ComposedTextAttnProcessor:
    """A spatial cross-attention whose rows of image-conditioned videos read the composed text c_T through the
    trained copies of to_k / to_v (Section 3.1: "we finetune the K and V projection layers ... to accommodate the
    composed embeddings"); other rows use the layer's own. Otherwise diffusers' AttnProcessor2_0 step for step, so
    copies equal to the originals give its output bit for bit."""

    def __init__(self, to_k: torch.nn.Linear, to_v: torch.nn.Linear, state: ImagePromptState):
        self.to_k, self.to_v, self.state = to_k, to_v, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is None or attn.spatial_norm is not None or hidden_states.ndim != 3:
            raise RuntimeError("ComposedTextAttnProcessor serves the text cross-attention of a transformer block only")
        batch = encoder_hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        composed = self.state.row_mask(batch, context.device, text=True)[:, None, None]
        key = torch.where(composed, self.to_k(context), attn.to_k(context))
        value = torch.where(composed, self.to_v(context), attn.to_v(context))
        query, key, value = _heads(attn, query), _heads(attn, key), _heads(attn, value)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def exemplar_attention(query, key, value, exemplar_key=None, exemplar_value=None):
    """Section 3.2's equations for one video, (frames, heads, tokens, d) each; exemplar K_I, V_I (heads, tokens_I, d)
    or None (no image prompt: frame 0 attends to itself)."""
    k0, v0 = key[:1], value[:1]
    if exemplar_key is not None:
        k0_all, v0_all = torch.cat([exemplar_key[None], k0], dim=-2), torch.cat([exemplar_value[None], v0], dim=-2)
    else:
        k0_all, v0_all = k0, v0
    v0_new = F.scaled_dot_product_attention(query[:1], k0_all, v0_all)  # V_0^new = softmax(K Q_0ᵀ/√d)·V
    if len(query) == 1:
        return v0_new
    others = len(query) - 1
    keys = torch.cat([k0.expand(others, -1, -1, -1), key[:-1]], dim=-2)  # [K_0, K_{i-1}]
    values = torch.cat([v0_new.expand(others, -1, -1, -1), value[:-1]], dim=-2)  # [V_0^new, V_{i-1}]
    return torch.cat([v0_new, F.scaled_dot_product_attention(query[1:], keys, values)])


class ExemplarGates(torch.nn.Module):
    """Two trained scalars of one fine-stage layer, both zero at the start: `injection` blends the layer's own
    self-attention (0) into the paper's equations (1), `position` scales the encodings added to Q, K, V.

    Why they exist: VideoBooth's base model already attends across frames, but AnimateDiff's frozen spatial attention
    was trained on each frame's own keys, and only the exemplar projections train here. Replacing that attention
    by [K_0, K_{i-1}] and adding unit-amplitude encodings to the frozen Q, K, V outright made the toy model worse,
    and 1,500 fine-stage steps did not repair it (held-out loss 0.0450 against 0.0389 for coarse only; 0.0552 with
    the encodings then left out: README, "The toy image prompts"). With zero gates the untrained fine stage is the
    coarse model exactly, so training can only add what the exemplar gives (as ControlNet's and IP-Adapter's
    zero-initialised branches do); gates of 1 are the paper's equations and encodings exactly."""

    def __init__(self):
        super().__init__()
        self.injection = torch.nn.Parameter(torch.zeros(()))
        self.position = torch.nn.Parameter(torch.zeros(()))


class ExemplarAttnProcessor:
    """A spatial self-attention layer of the fine stage: in the exemplar pass it records its input x_I and attends
    as usual; in the main pass it computes `exemplar_attention` per video with K_I = to_k(x_I), V_I = to_v(x_I)
    through its trained exemplar projections, with the position encodings when `state.position_encoding`, and
    blends it with the layer's own attention by its `ExemplarGates`."""

    def __init__(self, name: str, to_k: torch.nn.Linear, to_v: torch.nn.Linear, state: ImagePromptState,
                 gates: ExemplarGates | None = None):
        self.name, self.to_k, self.to_v, self.state = name, to_k, to_v, state
        self.gates = gates

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3 \
                or attn.group_norm is not None or attn.spatial_norm is not None:
            raise RuntimeError("ExemplarAttnProcessor serves the spatial self-attention of a transformer block only")
        state = self.state
        if state.recording:
            state.exemplars[self.name] = hidden_states
            out = F.scaled_dot_product_attention(*(_heads(attn, p(hidden_states)) for p in (attn.to_q, attn.to_k, attn.to_v)))
        else:
            out = self.main_pass(attn, hidden_states)
        out = out.transpose(1, 2).flatten(2).to(hidden_states.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    def main_pass(self, attn, hidden_states: torch.Tensor) -> torch.Tensor:
        state = self.state
        videos = len(state.conditioned)
        frames = hidden_states.shape[0] // videos
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        own = F.scaled_dot_product_attention(*(_heads(attn, t) for t in (query, key, value))) if self.gates is not None else None
        exemplar = state.exemplars.get(self.name)
        wanted = int(state.conditioned.sum())
        if wanted and (exemplar is None or exemplar.shape[0] != wanted):
            raise RuntimeError(f"image prompt: layer {self.name} has no exemplar features for {wanted} videos")
        exemplar_key = self.to_k(exemplar) if wanted else None
        exemplar_value = self.to_v(exemplar) if wanted else None
        if state.position_encoding:
            spatial = self.spatial_encoding(hidden_states.shape[1], query.shape[-1], hidden_states)
            encoding = spatial + temporal_position_encoding(query.shape[-1], frames).to(spatial)[:, None]
            encoding = encoding.repeat(videos, 1, 1)  # (rows, tokens, dim)
            if self.gates is not None:
                encoding = self.gates.position * encoding
            query, key, value = query + encoding, key + encoding, value + encoding
            if wanted:
                exemplar_spatial = self.spatial_encoding(exemplar.shape[1], query.shape[-1], exemplar)
                if self.gates is not None:
                    exemplar_spatial = self.gates.position * exemplar_spatial
                exemplar_key, exemplar_value = exemplar_key + exemplar_spatial, exemplar_value + exemplar_spatial
        query, key, value = (_heads(attn, t).unflatten(0, (videos, frames)) for t in (query, key, value))
        if wanted:
            exemplar_key, exemplar_value = _heads(attn, exemplar_key), _heads(attn, exemplar_value)
        outputs, used = [], 0
        for video in range(videos):
            if bool(state.conditioned[video]):
                injected = exemplar_attention(query[video], key[video], value[video],
                                              exemplar_key[used], exemplar_value[used])
                used += 1
                if self.gates is not None:
                    mine = own[video * frames:(video + 1) * frames]
                    injected = mine + self.gates.injection * (injected - mine)
                outputs.append(injected)
            elif self.gates is None:  # the paper's equations as they stand (tests)
                outputs.append(exemplar_attention(query[video], key[video], value[video]))
            else:
                # Only a video with its exemplar is injected: one without (the unconditional branch, a dropped
                # sample) keeps the frozen layer's own attention, so the gate learns from the videos it can help.
                outputs.append(own[video * frames:(video + 1) * frames])
        return torch.cat(outputs)

    def spatial_encoding(self, tokens: int, dim: int, like: torch.Tensor) -> torch.Tensor:
        top = self.state.latent_size
        height, width = feature_map_size(tokens, top)
        return spatial_position_encoding(dim, height, width, top).to(device=like.device, dtype=like.dtype)


# --- the trained parts -------------------------------------------------------------------------------------------------


def _key(layer: str) -> str:
    """A processor key as a ModuleDict key (no dots): down_blocks.0.attentions.0...attn2.processor -> down_blocks-0-..."""
    return layer.removesuffix(".processor").replace(".", "-")


def spatial_layers(unet, which: str) -> list[str]:
    """Processor keys of the image model's spatial self- (`attn1`) or cross-attention (`attn2`) layers, the motion
    modules' temporal attention left out."""
    return [name for name in unet.attn_processors
            if name.endswith(f"{which}.processor") and ".motion_modules." not in f".{name}"]


def _attention(unet, layer: str):
    return unet.get_submodule(layer.removesuffix(".processor"))


def _projection_copies(unet, layers: list[str], gates: bool = False) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({
        _key(layer): torch.nn.ModuleDict({"to_k": copy.deepcopy(_attention(unet, layer).to_k).float(),
                                          "to_v": copy.deepcopy(_attention(unet, layer).to_v).float(),
                                          **({"gates": ExemplarGates()} if gates else {})})
        for layer in layers})


class ImagePromptAdapter(torch.nn.Module):
    """Everything the image-prompt method trains: the mapper, the cross-attention K, V copies (coarse) and the
    exemplar projections (fine), the last two initialised from the UNet's own projections."""

    def __init__(self, mapper: ImagePromptMapper, unet, fine: bool = True):
        super().__init__()
        self.mapper = mapper
        self.cross_layers = spatial_layers(unet, "attn2")
        self.self_layers = spatial_layers(unet, "attn1") if fine else []
        self.kv = _projection_copies(unet, self.cross_layers)
        self.exemplar = _projection_copies(unet, self.self_layers, gates=True)

    @property
    def fine(self) -> bool:
        return bool(self.self_layers)

    def stage_parameters(self, stage: str) -> list[torch.nn.Parameter]:
        """Section 3.3: coarse trains the mapper and the K, V copies, fine the exemplar projections, joint all."""
        coarse = list(self.mapper.parameters()) + list(self.kv.parameters())
        return {"coarse": coarse, "fine": list(self.exemplar.parameters()), "joint": coarse + list(self.exemplar.parameters())}[stage]

    def processors(self, state: ImagePromptState) -> dict[str, object]:
        procs = {layer: ComposedTextAttnProcessor(self.kv[_key(layer)].to_k, self.kv[_key(layer)].to_v, state)
                 for layer in self.cross_layers}
        procs.update({layer: ExemplarAttnProcessor(layer, self.exemplar[_key(layer)].to_k, self.exemplar[_key(layer)].to_v,
                                                   state, self.exemplar[_key(layer)].gates)
                      for layer in self.self_layers})
        return procs

    def gates(self) -> list[ExemplarGates]:
        return [entry.gates for entry in self.exemplar.values()]

    def projection_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{k}": v for k, v in self.state_dict().items() if not k.startswith("mapper.")}


@contextmanager
def installed(unet, adapter: ImagePromptAdapter, state: ImagePromptState):
    """The adapter's processors on `unet` while inside (persistent: they hold trained weights), the originals after."""
    original = unet.attn_processors
    unet.set_attn_processor({**original, **adapter.processors(state)})
    try:
        yield
    finally:
        unet.set_attn_processor(original)


# --- the exemplar pass (Section 3.2) -----------------------------------------------------------------------------------


def motion_modules(unet) -> list[torch.nn.Module]:
    return [module for module in unet.modules() if isinstance(module, AnimateDiffTransformer3D)]


def run_exemplar_pass(unet, state: ImagePromptState, latents: torch.Tensor, timesteps: torch.Tensor,
                      context: torch.Tensor, composed: torch.Tensor | None = None) -> None:
    """x_I^t (n, C, h, w) through the UNet as n one-frame clips, motion modules off, each under the composed text
    `context` (n, tokens, D) of its video (`composed`, (n,) bool: which of them; None: all); every
    ExemplarAttnProcessor records its input. Gradients flow when the caller's grad mode is on (the joint stage trains
    the mapper and K, V copies the pass reads)."""
    from ..attention.reference import _temporal_layers_off  # the style reference pass's switch, shared

    saved = state.conditioned, state.composed
    state.exemplars, state.recording = {}, True
    state.conditioned, state.composed = torch.ones(latents.shape[0], dtype=torch.bool), composed
    try:
        with _temporal_layers_off(motion_modules(unet)):
            unet(latents.unsqueeze(2), timesteps, encoder_hidden_states=context, return_dict=False)
    finally:
        state.recording = False
        state.conditioned, state.composed = saved


# --- weights directory -------------------------------------------------------------------------------------------------


def save_image_prompt_weights(directory: str | Path, adapter: ImagePromptAdapter, image_encoder, feature_extractor,
                              manifest: dict, projections: dict[str, torch.Tensor] | None = None) -> Path:
    """Write mapper/, image_encoder/ (unless None), attention_processors.safetensors and manifest.json (module doc)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adapter.mapper.save_pretrained(str(directory / "mapper"), safe_serialization=True)
    if image_encoder is not None:  # None: a training checkpoint (the frozen tower is the run's, not saved each time)
        image_encoder.save_pretrained(str(directory / "image_encoder"), safe_serialization=True)
        feature_extractor.save_pretrained(str(directory / "image_encoder"))
    tensors = projections if projections is not None else adapter.projection_state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / PROCESSORS_FILE))
    record = {"format": FORMAT, "fine": adapter.fine, "clip_layers": list(adapter.mapper.config.clip_layers),
              "num_tokens": int(adapter.mapper.config.num_tokens), **manifest}
    (directory / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return directory


def read_manifest(root: Path, key: str = "method.weights") -> dict:
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise UserInputError(f"{key}={root} has no {MANIFEST} (not an image-prompt weights directory)") from None
    except ValueError:
        raise UserInputError(f"{key}={root}: {MANIFEST} is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserInputError(f"{key}={root}: {MANIFEST} is not an image-prompt manifest (format {FORMAT!r})")
    return data


def load_mapper(root: Path, key: str = "method.weights") -> ImagePromptMapper:
    if not (Path(root) / "mapper" / "config.json").is_file():
        raise UserInputError(f"{key}={root} has no mapper/ (looked for {Path(root) / 'mapper' / 'config.json'})")
    return load_component(Path(root) / "mapper", key=key, pretrained=ImagePromptMapper.from_pretrained,
                          what="an image-prompt mapper").eval()


def load_projections(root: Path, adapter: ImagePromptAdapter, key: str = "method.weights") -> None:
    """attention_processors.safetensors into `adapter` (the exemplar ones only when the adapter is fine: a coarse run
    has none, and a fine adapter loading coarse weights keeps its fresh exemplar projections)."""
    from safetensors.torch import load_file

    path = Path(root) / PROCESSORS_FILE
    if not path.is_file():
        raise UserInputError(f"{key}={root} has no {PROCESSORS_FILE}")
    tensors = load_file(str(path))
    own = adapter.projection_state_dict()
    wanted = {k for k in own if k.startswith("kv.")} | ({k for k in own if k.startswith("exemplar.")} & set(tensors))
    missing = sorted(k for k in own if k.startswith("kv.") and k not in tensors)
    if missing or any(tensors[k].shape != own[k].shape for k in wanted):
        raise UserInputError(f"{key}={root}: its attention projections do not fit this UNet "
                             f"({'missing ' + missing[0] if missing else 'other shapes'}); pair the weights with their base model")
    adapter.load_state_dict({k: tensors[k] for k in wanted}, strict=False)
