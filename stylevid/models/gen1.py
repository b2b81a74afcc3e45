"""Gen-1's model and its conditions (paper 002, Sections 3.2-3.3), shared by training and `method=gen1`.

The model is SD's UNet inflated into the spatio-temporal layout of `models.inflate.VideoUNet` (Section 3.2: a 1-D
temporal conv after each spatial conv, a temporal attention after each spatial attention, learnable frame-position
encodings; all start as the identity, so a fresh model is the image model frame by frame). Its two conditions:

  * content c, by cross-attention: a CLIP image embedding, one token (B, 1, D), the `image_embeds` of
    `CLIPVisionModelWithProjection`, exactly as diffusers' `StableDiffusionImageVariationPipeline` feeds it
    (`content_embeddings`); the unconditional content ∅ is a zero token, as there. D must equal the UNet's
    `cross_attention_dim` (SD 1.x's 768 is ViT-L/14's projection dim); a mismatch is refused in one line.
    Text reaches it through a prior (a diffusers `PriorTransformer`, text -> image embedding; method side);
  * structure s, by concatenation to z_t (`structure_condition`): depth maps blurred by t_s iterations of blur +
    downsampling (`blur_structure`), resampled to the frame size, VAE-encoded (4 channels), followed by 4 channels
    of a sinusoidal embedding of t_s constant over space (`ts_embedding`).

Input channel layout of a structure model: [z_t (4) | structure latent (4) | t_s embedding (4)] = 12 channels,
`extra_in_channels = EXTRA_CHANNELS = 8`; the 8 condition channels of conv_in start at zero (`build_gen1_unet(...,
structure=True)`, or `add_structure(unet)` on a trained content/temporal model), so adding them changes nothing
until trained. Tensors: structure_condition gives (F, 8, h, w) per frame; the VideoUNet takes it as
`extra_input=` in (B, 8, F, h, w) (`structure_condition(...).permute(1, 0, 2, 3)[None]`).

The training stages of Section 3.4 (`STAGES`): "content" (SD's UNet, CLIP text conditioning swapped for CLIP
image embeddings, images only: the inflated model trained with `image_mode=True`), "temporal" (temporal layers,
joint image/video), "structure" (structure channels added, t_s = 0) and "ts" (t_s uniform in [0, MAX_TS]).

A trained model on disk is a diffusers `save_pretrained` directory of its VideoUNet (config.json +
diffusion_pytorch_model.safetensors) plus `gen1.json`, e.g. {"format": "stylevid-gen1", "stage": "ts",
"max_ts": 7, "prediction": "v_prediction", "schedule": "A", "structure": true, ...}: what it was trained with, so
that sampling uses the same parameterisation and noise schedule (`gen1_scheduler(info)`). v-parameterisation is
the paper's choice (Section 3.1: "v-parameterization improves color consistency").
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from ..errors import UserInputError
from .inflate import VideoUNet, save_video_unet

MAX_TS = 7  # Section 3.4: "t_s sampled uniformly between 0 and 7"
LATENT_CHANNELS = 4
STRUCTURE_CHANNELS = 4  # the VAE latent of the blurred depth map
TS_CHANNELS = 4  # Section 3.3: "four channels containing a sinusoidal embedding of t_s"
EXTRA_CHANNELS = STRUCTURE_CHANNELS + TS_CHANNELS
# The slowest frequency of the t_s embedding: get_timestep_embedding's 4 channels are sin/cos at frequencies 1 and
# max_period^-1/2 = 0.1, so the slow pair turns by at most 0.7 rad over t_s = 0..7 (monotone, no wrap-around) while
# the fast pair separates neighbouring levels. (Its default 10000 would leave the slow pair at ~0.07 rad: flat.)
TS_MAX_PERIOD = 100.0
STAGES = ("content", "temporal", "structure", "ts")
PREDICTION = "v_prediction"
DEFAULT_SCHEDULE = "A"  # SD's own pre-training schedule (scaled linear 0.00085-0.012), as the initial weights
GEN1_FILE = "gen1.json"
FORMAT = "stylevid-gen1"


# --- the model -------------------------------------------------------------------------------------------------


def check_content_dim(unet, embed_dim: int, key: str = "image_encoder") -> None:
    """Refuse content embeddings whose width is not the UNet's cross-attention width (one line)."""
    cross = unet.config.cross_attention_dim
    if int(cross) != int(embed_dim):
        raise UserInputError(
            f"{key}: CLIP image embeddings are {embed_dim}-dimensional but the UNet's cross_attention_dim is {cross}; "
            "Gen-1's content token must match it (pair the UNet with the image encoder it was trained with)"
        )


def build_gen1_unet(unet2d: UNet2DConditionModel, *, structure: bool, frame_position_encoding: bool = True,
                    max_frames: int = 32, image_embed_dim: int | None = None) -> VideoUNet:
    """SD's image UNet inflated into Gen-1's video UNet: temporal layers (and frame-position encodings) that start as
    the identity; with `structure=True` the 8 zero-initialised structure + t_s input channels.

    The cross-attention is unchanged: it now reads one CLIP image-embedding token instead of 77 text tokens (the
    "content" stage fine-tunes it to). `image_embed_dim`, when given (the image encoder's `projection_dim`), must be
    the UNet's `cross_attention_dim`.
    """
    if image_embed_dim is not None:
        check_content_dim(unet2d, image_embed_dim)
    return VideoUNet.inflate(unet2d, frame_position_encoding=frame_position_encoding, max_frames=max_frames,
                             extra_in_channels=EXTRA_CHANNELS if structure else 0)


def has_structure(unet: VideoUNet) -> bool:
    extra = int(unet.config.get("extra_in_channels", 0))
    if extra not in (0, EXTRA_CHANNELS):
        raise UserInputError(f"this VideoUNet takes {extra} extra input channels; a Gen-1 model takes 0 or {EXTRA_CHANNELS}")
    return extra == EXTRA_CHANNELS


def add_structure(unet: VideoUNet) -> VideoUNet:
    """A trained content/temporal model with the structure channels added (Section 3.4: "We then add conditioning on
    structure s"): conv_in widened by 8 zero input channels, every other weight kept, so the copy computes what
    `unet` computes whatever the structure input is. A model that has them already is refused."""
    if has_structure(unet):
        raise UserInputError("this Gen-1 UNet already takes the structure channels")
    # extended() builds a fresh module (in training mode); keep the given model's mode, or the temporal convs'
    # dropout would make the copy differ from an eval-mode original.
    return unet.extended(extra_in_channels=EXTRA_CHANNELS).train(unet.training)


# --- structure ---------------------------------------------------------------------------------------------------


def check_ts(ts, key: str = "ts") -> int:
    if isinstance(ts, bool) or not isinstance(ts, (int, np.integer)) or not 0 <= int(ts) <= MAX_TS:
        raise UserInputError(f"{key} must be an integer in [0, {MAX_TS}], got {ts!r}")
    return int(ts)


def single_pixel_ts(height: int, width: int) -> int:
    """The smallest t_s whose blur leaves one pixel of a (height, width) depth map (`cv2.pyrDown` halves each side,
    rounding up); from there on every t_s gives the same constant map and only the t_s channels differ. 64 px: 6
    (the paper's 256-px frames keep 2 pixels at its T_s = 7)."""
    ts = 0
    while max(height, width) > 1:
        height, width, ts = (height + 1) // 2, (width + 1) // 2, ts + 1
    return ts


def blur_structure(depth: np.ndarray, ts: int) -> np.ndarray:
    """t_s iterations of blurring and downsampling of depth maps (F, H, W) in [0, 1], resampled back to (H, W)
    bilinearly (Section 3.3). `cv2.pyrDown` is one iteration: a 5x5 Gaussian blur, then every second pixel.
    t_s = 0 returns the maps unchanged (float32); a side that reaches one pixel stays one pixel."""
    ts = check_ts(ts)
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 3:
        raise UserInputError(f"depth maps must be (frames, height, width), got shape {depth.shape}")
    if ts == 0:
        return depth.copy()
    height, width = depth.shape[1:]
    out = np.empty_like(depth)
    for index, frame in enumerate(depth):
        for _ in range(ts):
            frame = cv2.pyrDown(frame)
        out[index] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
    return out


def ts_embedding(ts: int, frames: int, height: int, width: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The t_s channels (frames, 4, height, width): diffusers' sinusoidal timestep embedding of t_s (the UNet's own
    `get_timestep_embedding`, cos first as SD's time projection), constant over space and frames."""
    from diffusers.models.embeddings import get_timestep_embedding

    ts = check_ts(ts)
    embedding = get_timestep_embedding(torch.tensor([ts]), TS_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0,
                                       max_period=TS_MAX_PERIOD)[0]
    return embedding.to(device=device, dtype=dtype).view(1, TS_CHANNELS, 1, 1).expand(frames, -1, height, width).clone()


@torch.no_grad()
def encode_depth(vae, depth: np.ndarray, *, frames_per_encode: int = 8, device: torch.device | None = None) -> torch.Tensor:
    """Depth maps (F, H, W) in [0, 1] as the VAE sees an image: one grey map in 3 channels in [-1, 1], encoded
    (posterior mean x scaling_factor) `frames_per_encode` at a time so memory stays flat in the clip's length.
    Returns (F, 4, H/8, W/8)."""
    device = device or vae.device
    pixels = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)) * 2 - 1
    latents = []
    for begin in range(0, pixels.shape[0], frames_per_encode):
        chunk = pixels[begin:begin + frames_per_encode, None].expand(-1, 3, -1, -1).to(device=device, dtype=vae.dtype)
        latents.append(vae.encode(chunk).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(latents).float()


def structure_condition(vae, depth: np.ndarray, ts: int, *, frames_per_encode: int = 8,
                        device: torch.device | None = None) -> torch.Tensor:
    """Gen-1's structure input s (Section 3.3) for depth maps (F, H, W) in [0, 1]: (F, 8, H/8, W/8), channels
    [VAE latent of the t_s-blurred depth (4) | t_s embedding (4)]."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 3:
        raise UserInputError(f"depth maps must be (frames, height, width), got shape {depth.shape}")
    if depth.size and (depth.min() < 0 or depth.max() > 1):
        raise UserInputError(f"depth maps must be in [0, 1], got values in [{depth.min():.3g}, {depth.max():.3g}]")
    latent = encode_depth(vae, blur_structure(depth, ts), frames_per_encode=frames_per_encode, device=device)
    frames, _, height, width = latent.shape
    return torch.cat([latent, ts_embedding(ts, frames, height, width, device=latent.device)], dim=1)


def depth_from_maps(maps: np.ndarray) -> np.ndarray:
    """uint8 depth maps (F, H, W, 3) or (F, H, W), as the depth annotator writes them (normalised once per clip),
    to float (F, H, W) in [0, 1]."""
    maps = np.asarray(maps)
    if maps.ndim == 4:
        maps = maps[..., 0]
    return maps.astype(np.float32) / 255.0


# --- content ------------------------------------------------------------------------------------------------------


def default_feature_extractor(image_encoder):
    """CLIP's preprocessing at the encoder's own input size (resize the short side, centre crop, CLIP's mean/std),
    for an image encoder saved without its processor. The PIL implementation: transformers' default CLIP processor
    needs torchvision, which this project does not install (it falls back to this one with a warning)."""
    from transformers import CLIPImageProcessorPil

    size = int(image_encoder.config.image_size)
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@torch.no_grad()
def content_embeddings(image_encoder, feature_extractor, images: np.ndarray, *,
                       device: torch.device | None = None) -> torch.Tensor:
    """Content tokens c for uint8 images (N, H, W, 3): CLIP `image_embeds` as (N, 1, D), what
    `StableDiffusionImageVariationPipeline._encode_image` computes (its processor, then the vision tower's
    projection, one token per image). `feature_extractor=None`: CLIP's preprocessing at the encoder's size."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise UserInputError(f"content images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    processor = feature_extractor if feature_extractor is not None else default_feature_extractor(image_encoder)
    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    dtype = next(image_encoder.parameters()).dtype
    pixels = pixels.to(device=device or image_encoder.device, dtype=dtype)
    return image_encoder(pixels).image_embeds.unsqueeze(1)


# --- sampling schedule ----------------------------------------------------------------------------------------------


def gen1_scheduler(info: dict | None = None) -> DDIMScheduler:
    """DDIM (the paper's sampler, Section 3.3) on the schedule and parameterisation the weights trained with
    (`gen1.json`'s "schedule" and "prediction"; default SD's schedule A with v-prediction), as SD's own DDIM is
    configured (no clipping, steps_offset 1, ᾱ_final = ᾱ_0)."""
    from ..training.diffusion import PREDICTIONS, SCHEDULES

    info = info or {}
    schedule = str(info.get("schedule", DEFAULT_SCHEDULE))
    prediction = str(info.get("prediction", PREDICTION))
    if schedule not in SCHEDULES:
        raise UserInputError(f"{GEN1_FILE}: schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if prediction not in PREDICTIONS:
        raise UserInputError(f"{GEN1_FILE}: prediction {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    return DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction, **SCHEDULES[schedule])


# --- on disk --------------------------------------------------------------------------------------------------------


def gen1_info(stage: str, unet: VideoUNet, **extra) -> dict:
    """The `gen1.json` record of a model at `stage` (extra fields, e.g. the base model or steps, are kept)."""
    if stage not in STAGES:
        raise UserInputError(f"Gen-1 stage must be one of {', '.join(STAGES)}, got {stage!r}")
    info = {"format": FORMAT, "stage": stage, "max_ts": MAX_TS, "prediction": PREDICTION, "schedule": DEFAULT_SCHEDULE,
            "structure": has_structure(unet), "ts_channels": TS_CHANNELS, "ts_max_period": TS_MAX_PERIOD}
    info.update(extra)
    return info


def save_gen1(directory: str | Path, unet: VideoUNet, info: dict, state_dict: dict[str, torch.Tensor] | None = None
              ) -> Path:
    """Write a Gen-1 UNet: config.json and diffusion_pytorch_model.safetensors as diffusers' `save_pretrained` lays
    them out (from `state_dict`, default the module's own weights: a trainer's EMA or FSDP-gathered weights are a
    state dict, hence written here rather than by save_pretrained), and `gen1.json` (`info`, completed by
    `gen1_info`'s fields it lacks)."""
    info = {**gen1_info(str(info.get("stage")), unet), **info}
    directory = save_video_unet(directory, unet, state_dict)
    (directory / GEN1_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def resolve_gen1_dir(path: str | Path, key: str) -> Path:
    """The Gen-1 UNet directory `path` names: the directory itself, or a weights directory's `unet/`, or a training
    run's export `gen1_unet/` or checkpoint `weights/`."""
    path = Path(str(path)).expanduser()
    for candidate in (path, path / "unet", path / "gen1_unet", path / "weights"):
        if (candidate / GEN1_FILE).is_file():
            return candidate
    if not path.exists():
        raise UserInputError(f"{key}={path} does not exist")
    raise UserInputError(f"{key}={path} is not a Gen-1 UNet (no {GEN1_FILE} in it, its unet/, gen1_unet/ or weights/)")


def read_gen1_info(directory: Path, key: str) -> dict:
    try:
        info = json.loads((directory / GEN1_FILE).read_text())
    except ValueError:
        raise UserInputError(f"{key}={directory}: {GEN1_FILE} is not JSON") from None
    if not isinstance(info, dict) or info.get("format", FORMAT) != FORMAT or info.get("stage") not in STAGES:
        raise UserInputError(f"{key}={directory}: {GEN1_FILE} is not a Gen-1 record (format {FORMAT}, stage one of "
                             f"{', '.join(STAGES)})")
    return info


def load_gen1(path: str | Path, key: str = "method.weights") -> tuple[VideoUNet, dict]:
    """A Gen-1 UNet saved by `save_gen1`, exactly, and its `gen1.json`; every failure one line naming `key`."""
    from .components import load_component

    directory = resolve_gen1_dir(path, key)
    info = read_gen1_info(directory, key)
    unet = load_component(directory, key=key, pretrained=VideoUNet.from_pretrained, what="a Gen-1 UNet directory")
    if int(info.get("max_ts", MAX_TS)) != MAX_TS and has_structure(unet):
        raise UserInputError(f"{key}={directory}: trained with max_ts={info.get('max_ts')}, this code embeds t_s up to {MAX_TS}")
    if bool(info.get("structure", has_structure(unet))) != has_structure(unet):
        raise UserInputError(f"{key}={directory}: {GEN1_FILE} says structure={info.get('structure')} but the UNet "
                             f"takes {unet.config.extra_in_channels} extra channels")
    # safetensors hands back tensors inside one unaligned buffer; BLAS then takes other kernels (outputs ~1e-6
    # apart). A copy gives aligned storage, so the loaded model computes bit for bit what the saved one did.
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.data = parameter.data.clone()
    return unet.eval(), info


# --- tiny random parts (tests, model=tiny) --------------------------------------------------------------------------

TINY_IMAGE_SIZE = 32


def tiny_image_encoder(seed: int = 0, embed_dim: int | None = None):
    """A seeded random CLIPVisionModelWithProjection (32 px, 2 layers) and its CLIPImageProcessor."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .tiny import TINY_TEXT_DIM

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=TINY_IMAGE_SIZE, patch_size=8, projection_dim=embed_dim or TINY_TEXT_DIM)
    encoder = CLIPVisionModelWithProjection(config).eval()
    return encoder, default_feature_extractor(encoder)


def tiny_prior(seed: int = 0, embed_dim: int | None = None):
    """A seeded random text -> image-embedding prior: (PriorTransformer, CLIPTextModelWithProjection, tokenizer,
    UnCLIPScheduler), the parts of diffusers' `KandinskyPriorPipeline`.

    The prior's `clip_std` is set to ones: diffusers initialises it (and `clip_mean`) to zeros, which a trained prior
    overwrites with the image embeddings' statistics; left at zero every embedding it samples would be zero.
    """
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .tiny import TINY_TEXT_DIM, tiny_tokenizer

    dim = embed_dim or TINY_TEXT_DIM
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, projection_dim=dim,
        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1,
    )).eval()
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=dim // 2, num_layers=1, embedding_dim=dim,
                             num_embeddings=tokenizer.model_max_length, additional_embeddings=4).eval()
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                clip_sample=True, clip_sample_range=10.0)
    return prior, text_encoder, tokenizer, scheduler


def tiny_gen1_unet(seed: int = 0, *, structure: bool = True, max_frames: int = 64) -> VideoUNet:
    """The tiny image UNet inflated into a Gen-1 model (identity temporal layers, zero structure channels)."""
    from .tiny import tiny_unet

    return build_gen1_unet(tiny_unet(seed), structure=structure, max_frames=max_frames).eval()


# --- a weights directory (method=gen1's `method.weights=`) -----------------------------------------------------------

WEIGHTS_FORMAT = "stylevid-gen1-weights"
MANIFEST = "manifest.json"
PARTS = ("unet", "prior", "image_encoder")


def save_gen1_weights(directory: str | Path, *, unet: VideoUNet, info: dict, image_encoder, feature_extractor=None,
                      prior=None, prior_text_encoder=None, prior_tokenizer=None, prior_scheduler=None,
                      manifest: dict | None = None) -> Path:
    """Write the Gen-1 weights directory method=gen1 reads:

      unet/            the Gen-1 UNet (`save_gen1`: VideoUNet save_pretrained + gen1.json)
      image_encoder/   CLIPVisionModelWithProjection save_pretrained + its image processor (preprocessor_config.json)
      prior/           PriorTransformer save_pretrained, with text_encoder/ (CLIPTextModelWithProjection),
                       tokenizer/ and scheduler/ (UnCLIPScheduler) inside: the text -> image-embedding prior
                       (optional: without it, content comes from images only)
      manifest.json    {"format": "stylevid-gen1-weights", "parts": {...}, ...`manifest`}; `manifest` may name the
                       depth model the UNet was trained on, "depth_annotator": a directory inside the weights or a
                       hub id ("tiny": the random tiny DPT), which method=gen1 then uses when annotator.path is unset;
                       "vae": a VAE inside the weights (or a hub id) to decode with, whose encoder is the base model's
                       (a decoder fine-tuned on its latents; method.vae overrides); "guidance_scale": the scale the
                       weights recommend, used when method.guidance_scale is unset
    """
    directory = Path(directory)
    save_gen1(directory / "unet", unet, info)
    image_encoder.save_pretrained(str(directory / "image_encoder"), safe_serialization=True)
    (feature_extractor or default_feature_extractor(image_encoder)).save_pretrained(str(directory / "image_encoder"))
    parts = {"unet": "unet", "image_encoder": "image_encoder"}
    if prior is not None:
        if prior_text_encoder is None or prior_tokenizer is None or prior_scheduler is None:
            raise ValueError("a prior needs its text encoder, tokenizer and scheduler")
        prior.save_pretrained(str(directory / "prior"), safe_serialization=True)
        prior_text_encoder.save_pretrained(str(directory / "prior" / "text_encoder"), safe_serialization=True)
        prior_tokenizer.save_pretrained(str(directory / "prior" / "tokenizer"))
        prior_scheduler.save_pretrained(str(directory / "prior" / "scheduler"))
        parts["prior"] = "prior"
    record = {"format": WEIGHTS_FORMAT, "parts": parts, **(manifest or {})}
    (directory / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return directory


def read_manifest(root: Path, key: str = "method.weights") -> dict:
    if not (root / MANIFEST).is_file():
        return {}
    try:
        data = json.loads((root / MANIFEST).read_text())
    except ValueError:
        raise UserInputError(f"{key}={root}: {MANIFEST} is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise UserInputError(f"{key}={root}: {MANIFEST} is not a Gen-1 manifest (format {WEIGHTS_FORMAT!r})")
    return data


def part_dir(root: Path, part: str, key: str = "method.weights") -> Path:
    """`<root>/<part>` (or where the manifest says), refused in one line when it is not there."""
    folder = root / read_manifest(root, key).get("parts", {}).get(part, part)
    wanted = GEN1_FILE if part == "unet" else "config.json"
    if not (folder / wanted).is_file() and not (part == "unet" and folder.is_dir()):
        raise UserInputError(f"{key}={root} has no {part} (looked for {folder / wanted})")
    return folder


def load_image_encoder(source: str | Path, key: str):
    """(CLIPVisionModelWithProjection, its image processor) from a directory; the processor from its
    preprocessor_config.json there (PIL implementation: no torchvision here), else CLIP's default at its size."""
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    from .components import load_component

    encoder = load_component(source, key=key, pretrained=CLIPVisionModelWithProjection.from_pretrained,
                             what="a CLIP vision model directory").eval()
    config = Path(str(source)) / "preprocessor_config.json"
    processor = load_component(source, key=key, pretrained=CLIPImageProcessorPil.from_pretrained, required_file=config.name,
                               what="a CLIP image processor") if config.is_file() else default_feature_extractor(encoder)
    return encoder, processor


def load_prior(source: str | Path, key: str):
    """(PriorTransformer, CLIPTextModelWithProjection, tokenizer, UnCLIPScheduler) from a prior directory."""
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from .components import load_component

    source = Path(str(source))
    prior = load_component(source, key=key, pretrained=PriorTransformer.from_pretrained, what="a PriorTransformer directory")
    for sub in ("text_encoder", "tokenizer", "scheduler"):
        if not (source / sub).is_dir():
            raise UserInputError(f"{key}={source} has no {sub}/ (the prior's text tower, tokenizer and scheduler)")
    text_encoder = load_component(source / "text_encoder", key=key, pretrained=CLIPTextModelWithProjection.from_pretrained,
                                  what="a CLIP text model directory")
    tokenizer = load_component(source / "tokenizer", key=key, pretrained=CLIPTokenizer.from_pretrained,
                               required_file="tokenizer_config.json", what="a CLIP tokenizer directory")
    scheduler = load_component(source / "scheduler", key=key, pretrained=UnCLIPScheduler.from_pretrained,
                               required_file="scheduler_config.json", what="an UnCLIPScheduler directory")
    return prior.eval(), text_encoder.eval(), tokenizer, scheduler
