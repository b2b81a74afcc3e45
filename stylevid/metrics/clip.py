"""CLIP-based metrics: CLIPSIM / CLIP score, Gen-1 frame and prompt consistency, CLIP style fidelity.

Definitions (all cosines are between L2-normalised CLIP projections):

- clipsim (Wu et al., GODIVA/NUWA; VideoGen Tab. 2): mean over frames of cos(image_t, text).
- clip_score: torchmetrics' CLIPScore, max(100 * cos, 0); torchmetrics clamps the mean over frames
  (`clamp="mean"`, default), see `ClipConfig.clamp` for the alternatives.
- prompt_consistency (Gen-1 Sec. 5): "average cosine similarity between text and image embedding over all
  frames" -- numerically the same quantity as clipsim; both names are kept because papers report both.
- frame_consistency (Gen-1 Sec. 5): "average cosine similarity between all pairs of consecutive frames" of the
  CLIP image embeddings; `pairs="all"` averages over every pair i < j instead.
- style_fidelity: mean over frames of cos(image_t, style image).

Preprocessing is the model's own `CLIPProcessor` (resize, center crop, normalise), exactly what torchmetrics and
transformers use, so the numbers agree with torchmetrics on the same weights.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from stylevid.errors import UserInputError
from stylevid.metrics.common import check_image, check_video

logger = logging.getLogger(__name__)

CLIP_MODEL_KEY = "metrics.clip.model"


def _as_embedding(output) -> torch.Tensor:
    """transformers < 5 returns the projected tensor; 5.x returns a ModelOutput whose pooler_output is it."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class ClipEmbedder:
    """A CLIP model and its processor, embedding frames and prompts in batches on one device."""

    def __init__(self, model, processor, model_id: str, device: str | torch.device = "cpu", batch_size: int = 32):
        self.model = model.to(device).eval()
        self.processor = processor
        self.model_id = model_id
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> L2-normalised float32 [N, D] on the CPU."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start : start + self.batch_size])
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            features = _as_embedding(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            chunks.append(features.float().cpu())
        return _normalize(torch.cat(chunks))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> L2-normalised float32 [N, D]; prompts longer than the context are truncated (keeping EOS)."""
        max_length = self.model.config.text_config.max_position_embeddings
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor(
                text=texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            features = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
            chunks.append(_as_embedding(features).float().cpu())
        return _normalize(torch.cat(chunks))


def _normalize(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(p=2, dim=-1, keepdim=True)


def load_clip(model: str = "openai/clip-vit-base-patch32", device: str = "cpu", batch_size: int = 32) -> ClipEmbedder:
    """Load CLIP from a hub id or a local directory; offline (HF_HUB_OFFLINE=1) only the local cache is used.

    Loaded models are cached per (model, device), so evaluating many videos loads the weights once.
    `toy` is the toy world's CLIP shipped with the package (stylevid/toy/weights/clip).
    """
    if str(model) == "toy":
        from ..toy import toy_path

        model = toy_path("clip")
    model_obj, processor = _load_clip_cached(str(model), str(device))
    return ClipEmbedder(model_obj, processor, str(model), device=device, batch_size=batch_size)


@functools.lru_cache(maxsize=2)
def _load_clip_cached(model: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    from stylevid.models.components import load_component

    # The model first: its config.json decides whether a directory is a CLIP at all; the processor then loads
    # from the same place (a failure there is still one line naming the key).
    options = dict(key=CLIP_MODEL_KEY, what="a CLIP model", hint="<local CLIP directory>")
    clip_model = load_component(model, pretrained=CLIPModel.from_pretrained, required_file="config.json", **options)
    processor = load_component(model, pretrained=CLIPProcessor.from_pretrained, required_file=None, **options)
    return clip_model.to(device).eval(), processor


# --- metrics on embeddings -------------------------------------------------------------------------------------
# Each metric has two forms: `<name>_of(embeddings...)` on L2-normalised embeddings, which compute_metrics uses
# so that a video's frames go through the image tower once for all CLIP metrics, and `<name>(embedder, frames,
# ...)`, which embeds first (for calling one metric alone).


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of row-wise cosines of normalised embeddings (b may be a single row, broadcast)."""
    return float((a.double() * b.double()).sum(-1).mean())


def clipsim_of(frame_embeddings: torch.Tensor, text_embedding: torch.Tensor) -> float:
    """Mean over frames of cos(CLIP image, CLIP text) (CLIPSIM; Gen-1's prompt consistency)."""
    return _mean_cosine(frame_embeddings, text_embedding)


def clip_score_of(frame_embeddings: torch.Tensor, text_embedding: torch.Tensor, clamp: str = "mean") -> float:
    """100 x cosine with torchmetrics' clamp at 0; `clamp` says where the clamp applies (see ClipConfig)."""
    scores = 100.0 * (frame_embeddings.double() * text_embedding.double()).sum(-1)
    if clamp == "mean":
        return float(max(scores.mean().item(), 0.0))
    if clamp == "per_frame":
        return float(scores.clamp(min=0).mean())
    if clamp == "none":
        return float(scores.mean())
    raise UserInputError(f"metrics.clip.clamp={clamp} is not one of mean, per_frame, none")


def frame_consistency_of(frame_embeddings: torch.Tensor, pairs: str = "consecutive") -> float:
    """Gen-1: mean cosine of consecutive frames' CLIP image embeddings (`pairs="all"`: every i < j)."""
    if len(frame_embeddings) < 2:
        raise UserInputError("frame_consistency needs a video with at least 2 frames")
    embeddings = frame_embeddings.double()
    if pairs == "consecutive":
        return float((embeddings[:-1] * embeddings[1:]).sum(-1).mean())
    if pairs == "all":
        similarity = embeddings @ embeddings.T
        upper = torch.triu_indices(len(embeddings), len(embeddings), offset=1)
        return float(similarity[upper[0], upper[1]].mean())
    raise UserInputError(f"metrics.frame_consistency.pairs={pairs} is not consecutive or all")


def style_fidelity_of(frame_embeddings: torch.Tensor, style_embedding: torch.Tensor) -> float:
    """Mean over frames of the CLIP image-image cosine with the style image."""
    return _mean_cosine(frame_embeddings, style_embedding)


def clipsim(embedder: ClipEmbedder, frames: np.ndarray, prompt: str) -> float:
    """clipsim_of on the frames' and the prompt's embeddings."""
    frames = check_video(frames)
    _check_prompt(prompt)
    return clipsim_of(embedder.embed_images(frames), embedder.embed_texts([prompt]))


def clip_score(embedder: ClipEmbedder, frames: np.ndarray, prompt: str, clamp: str = "mean") -> float:
    """clip_score_of on the frames' and the prompt's embeddings."""
    frames = check_video(frames)
    _check_prompt(prompt)
    return clip_score_of(embedder.embed_images(frames), embedder.embed_texts([prompt]), clamp)


def frame_consistency(embedder: ClipEmbedder, frames: np.ndarray, pairs: str = "consecutive") -> float:
    """frame_consistency_of on the frames' embeddings."""
    frames = check_video(frames)
    if len(frames) < 2:  # before embedding: no work for a video that cannot have the metric
        raise UserInputError("frame_consistency needs a video with at least 2 frames")
    return frame_consistency_of(embedder.embed_images(frames), pairs)


def style_fidelity(embedder: ClipEmbedder, frames: np.ndarray, style_image: np.ndarray) -> float:
    """style_fidelity_of on the frames' and the style image's embeddings."""
    frames = check_video(frames)
    style_image = check_image(style_image)
    return style_fidelity_of(embedder.embed_images(frames), embedder.embed_images(style_image[None]))


def _check_prompt(prompt) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserInputError("this metric needs the prompt: pass a non-empty prompt (the run's `prompt=`)")


# --- tiny CLIP for tests ---------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table (the base alphabet of CLIP's BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def build_tiny_clip(directory: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random CLIP (model, tokenizer, image processor) to `directory`, offline; return the path.

    The tokenizer is byte level (256 byte characters, their '</w>' variants, BOS/EOS) with no merges, so any
    text tokenizes without downloading a vocabulary. Loadable with `load_clip(str(directory))` and with
    transformers' `CLIPModel/CLIPProcessor.from_pretrained`, like a real checkpoint.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    alphabet = list(_bytes_to_unicode().values())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({char + "</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])

    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(tower, image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
