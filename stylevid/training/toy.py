"""The toy world's models, trained on a CPU by the targets toy_vae, toy_clip, toy_t2i (`stylevid train toy_*`; the
motion module is the motion_module target): their factories, tokenizer, data and losses.

Each has the standard loss of its model family:
  * VAE (diffusers `AutoencoderKL`): pixel MSE + a small KL term towards N(0, I) (no perceptual or GAN loss);
    afterwards `scaling_factor` is set to 1/std of the latents, as SD's 0.18215 was;
  * CLIP (transformers `CLIPModel`): the symmetric InfoNCE loss over a batch of (frame, caption) pairs;
  * UNet (diffusers `UNet2DConditionModel`): ε-prediction MSE under DDPM's forward process with the linear
    0.00085-0.012 betas (AnimateDiff's schedule B, which the toy pipeline also samples with), conditioned on the
    frozen CLIP text tower's last hidden states, captions dropped to "" 10% of the time (classifier-free guidance).
Training data are fresh frames from `stylevid.data.toy_world` (a new seeded batch per step, so no epochs).
The models are tiny on purpose: the whole family trains in minutes on 2 CPU cores.

This module holds the pieces (tokenizer, model factories, data, losses, export helpers); the training itself is
the one loop's (`stylevid train toy_vae | toy_clip | toy_t2i`, targets in `training.targets.toy_*`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import toy_world
from ..sampling.vae import pixels_from_uint8

log = logging.getLogger(__name__)

MAX_TOKENS = 16  # BOS + the longest caption (12 words) + EOS fits
TEXT_DIM = 64
BETAS = {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- tokenizer ------------------------------------------------------------------------------------------------


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word (characters, last one with '</w>'), merging the lowest-ranked pair first."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, index = min(pairs)
        if rank == math.inf:
            break
        parts[index : index + 2] = [parts[index] + parts[index + 1]]
    return parts


def word_tokenizer(words: list[str] | None = None):
    """A CLIPTokenizer for which every toy word is one token; other text falls back to single characters.

    CLIP's tokenizer is BPE: a whole-word token is only reached through merges, so merges are added
    greedily (each new one ranked last, which leaves earlier words' merge paths unchanged) until every
    word merges into itself.
    """
    from transformers import CLIPTokenizer

    words = words or toy_world.vocabulary()
    letters = sorted({c for w in words for c in "abcdefghijklmnopqrstuvwxyz" + w})
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(parts[0] + parts[1])
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


# --- model factories ------------------------------------------------------------------------------------------


def toy_vae():
    from ..models.tiny import sd_geometry_vae

    return sd_geometry_vae((32, 32, 64, 64), norm_num_groups=16)


def toy_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    vocab = tokenizer.get_vocab()
    tower = dict(hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_attention_heads=4, num_hidden_layers=3)
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(vocab),
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        # A wider, deeper vision tower than the text tower: telling a star from a circle at 9 px radius takes
        # more than telling red from blue (a 64-wide, 3-layer tower reached 42 % shape accuracy).
        vision_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4,
                           image_size=toy_world.SIZE, patch_size=8),
        projection_dim=64,
    )
    return CLIPModel(config)


def clip_processor(tokenizer):
    from transformers import CLIPImageProcessor, CLIPProcessor

    size = toy_world.SIZE
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def toy_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=toy_world.SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def toy_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1, **BETAS)


# --- data -----------------------------------------------------------------------------------------------------


def batch_key(seed: int, step: int, micro: int = 0, rank: int = 0, stream: int = 0) -> list[int]:
    """The numpy seed of one micro-batch's draws. Rank 0's first micro-batch keeps the key the toy world's weights
    were trained with ([seed, step], [seed, step, stream] for a second stream); every other (micro, rank) gets its
    own key, so that each rank and micro-batch draws a different shard."""
    if micro == 0 and rank == 0:
        return [seed, step, stream] if stream else [seed, step]
    return [seed, step, 1000 + stream, micro, rank]


def frame_batch(batch_size: int, seed: int, step: int, micro: int = 0, rank: int = 0
                ) -> tuple[torch.Tensor, list[str], list[toy_world.Scene]]:
    """Fresh frames for one step: pixels in [-1, 1] (B, 3, 64, 64), random captions, scenes."""
    rng = np.random.default_rng(batch_key(seed, step, micro, rank))
    scenes = [toy_world.random_scene(rng) for _ in range(batch_size)]
    images = np.stack([toy_world.render_frame(s, int(rng.integers(toy_world.FRAMES))).image for s in scenes])
    captions = [s.random_caption(rng) for s in scenes]
    return pixels_from_uint8(images), captions, scenes


def clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels -> CLIP-normalised (what CLIPImageProcessor gives at 64 px)."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((pixels + 1) / 2 - mean) / std


def tokenize(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


# --- losses (the toy targets in `training.targets.toy_*`) --------------------------------------------------


class VaeObjective(torch.nn.Module):
    """Pixel MSE + `kl_weight` x KL(posterior || N(0, I)) of an `AutoencoderKL`, as one module's forward (so that
    DDP sees the forward it synchronises). The latent sample draws from `generator` (None: torch's global RNG)."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        posterior = self.vae.encode(pixels).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(reconstruction, pixels) + self.kl_weight * posterior.kl().mean()


@torch.no_grad()
def calibrate_vae(vae, frames: int = 256, seed: int = 1, set_scale: bool = True) -> dict:
    """Set `scaling_factor` to 1/std of the latent means of `frames` fresh frames (as SD's 0.18215 was; not with
    `set_scale=False`); returns {reconstruction_mse, scaling_factor} on those frames."""
    vae.eval()
    pixels, _, _ = frame_batch(frames, seed, 0)
    latents = vae.encode(pixels).latent_dist.mean
    if set_scale:
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return {"reconstruction_mse": float(F.mse_loss(vae.decode(latents).sample, pixels)),
            "scaling_factor": vae.config.scaling_factor}


def short_captions() -> list[str]:
    """The shortest captions, "a red circle", "an orange star": every colour-shape pair, added to every CLIP batch
    so that each image is also contrasted against all 30 of them (CLIP's zero-shot prompts as extra texts)."""
    return [toy_world.phrase("a", c, s) for c in toy_world.COLOURS for s in toy_world.SHAPES]


def clip_texts(captions: list[str], scenes: list[toy_world.Scene], rng: np.random.Generator) -> tuple[list[str], torch.Tensor]:
    """The batch's texts and its positives (B, 3B + 30).

    Hard negatives (as NegCLIP): each caption again with another shape, and again with another motion. Without the
    shape ones and the short captions, the loss is dominated by colour and shape stayed near 50 % zero-shot
    accuracy; without the motion ones, the text tower mapped "left" and "right" to nearly the same features (the
    motion words are a small part of a caption), so the T2I model built on it could not tell directions apart
    however visible the motion trail. Positives: the image's own caption (and identical ones) and its short caption.
    """
    texts = captions + [swap_shape(c, rng) for c in captions] + [swap_motion(c, s.motion, rng) for c, s in zip(captions, scenes)]
    texts += short_captions()
    same = torch.tensor(
        [[t == c or t == toy_world.phrase("a", s.colour, s.shape) for t in texts] for c, s in zip(captions, scenes)], dtype=torch.float32
    )
    return texts, same


def clip_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss with several positives per image (`same`, (B, T)) and texts beyond the B captions."""
    batch_size = same.shape[0]
    image_to_text = F.cross_entropy(logits_per_image, same / same.sum(1, keepdim=True))
    real = same[:, :batch_size].T
    text_to_image = F.cross_entropy(logits_per_text[:batch_size], real / real.sum(1, keepdim=True))
    return 0.5 * (image_to_text + text_to_image)


def save_state(directory: Path, state_dict: dict[str, torch.Tensor], config: dict | None = None) -> None:
    """A checkpoint's trainable weights: `model.safetensors` (+ `config.json` when given)."""
    import json

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(directory / "model.safetensors"))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))


def load_state(module: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import load_file

    from ..errors import UserInputError

    path = directory / "model.safetensors"
    if not path.exists():
        raise UserInputError(f"trainer.resume: {path} is missing")
    module.load_state_dict(load_file(str(path)))


def swap_shape(caption: str, rng: np.random.Generator) -> str:
    """The caption with its shape word replaced by another shape: a hard negative."""
    words = caption.split()
    index = next(i for i, w in enumerate(words) if w in toy_world.SHAPES)
    words[index] = str(rng.choice([s for s in toy_world.SHAPES if s != words[index]]))
    return " ".join(words)


def swap_motion(caption: str, motion: str, rng: np.random.Generator) -> str:
    """The caption with its motion phrase replaced by another motion's: a hard negative for the trail."""
    other = str(rng.choice([m for m in toy_world.MOTIONS if m != motion]))
    return caption.replace(toy_world.MOTIONS[motion], toy_world.MOTIONS[other], 1)


def clip_probe(model, tokenizer, count: int = 200, seed: int = 99_999) -> dict:
    """Zero-shot colour/shape/direction accuracy during training, by the same judge as the finished model."""
    from ..metrics.clip import ClipEmbedder
    from ..toy import judge

    figures = judge.clip_zero_shot(ClipEmbedder(model, clip_processor(tokenizer), "toy (training)"), count, seed)
    return {"colour": figures["colour_accuracy"], "shape": figures["shape_accuracy"], "direction": figures["direction_accuracy"]}


def text_encoder_from_clip(clip_model):
    """The CLIP text tower as a standalone `CLIPTextModel`, the T2I pipeline's text encoder."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip_model.config.text_config)
    # transformers 5 nests a CLIPTextModel in CLIPModel.text_model; 4.x nests the inner transformer in both.
    target = text_encoder if isinstance(clip_model.text_model, CLIPTextModel) else text_encoder.text_model
    target.load_state_dict(clip_model.text_model.state_dict())
    return text_encoder.eval()


def save_pipeline(directory: str | Path, vae, text_encoder, tokenizer, unet) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=toy_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)

