"""Gen-1 (paper 002): structure- and content-guided video editing with a latent video diffusion model.

An input video y is edited to x ~ p(z | s(y), c), x = D(z) (eq. 7), top to bottom as Figure 2 (right) draws it:

1. Structure s (Section 3.3): depth maps of every input frame (the depth annotator, `annotator.path=`, MiDaS
   DPT-Hybrid by default; or ready maps, `method.depth_maps=`), normalised once over the clip to [0, 1], blurred
   and downsampled `method.ts` = t_s times and resampled to the frame size, encoded by the VAE, followed by four
   channels of a sinusoidal embedding of t_s (`models.gen1.structure_condition`); concatenated to z_t. Larger t_s
   keeps less of the input's shape (Fig. 10).
2. Content c (Section 3.3): a CLIP image embedding, one cross-attention token. From an image (`content_image=`)
   through the CLIP vision tower directly; from text (`prompt=`) through the prior, a diffusers `PriorTransformer`
   sampling an image embedding from the CLIP text embedding (run by diffusers' `KandinskyPriorPipeline`); both
   given: their weighted sum ((1 - method.content_mix) text + content_mix image, as that pipeline's `interpolate`
   weighs its conditions).
3. Sampling (Section 3.3, `stylevid.sampling.gen1`): DDIM with eq. 8, classifier-free guidance ω
   (`method.guidance_scale`) on the content and temporal guidance ω_t (`method.temporal_guidance`) between the video
   model and the image model (temporal layers bypassed) on the same weights; ω_t = 1 is plain classifier-free
   guidance. Long inputs run in overlapping temporal windows (`method.window`, `method.window_overlap`) on one
   noise tensor, blended at every step.
4. Masked editing (Fig. 8, `mask=`, `method.edit_region=foreground|background`): outside the edited region the
   latents are replaced at every step by the input's latents noised to that step (the inpainting recipe of a
   4-channel UNet), so that region comes back as the input's VAE round trip; after decoding, the input's own pixels
   are put back outside the resampled latent cells (`method.keep_outside=pixels`, blended over `method.feather`
   pixels), since the decoder spreads the edit into kept cells (`keep_outside=latents`: the round trip as decoded).
5. Decoding: SD's VAE decoder frame by frame, in chunks.

Weights (`method.weights=`, `models.gen1.save_gen1_weights` writes them): unet/ (a Gen-1 VideoUNet + gen1.json),
image_encoder/ (CLIPVisionModelWithProjection + its processor), prior/ (PriorTransformer + text_encoder/ tokenizer/
scheduler/; needed for text content), manifest.json (it may name the depth model the weights were trained on,
used when annotator.path is unset). The VAE is the loaded `model`'s. `model=toy`: the packaged
toy Gen-1 (`stylevid/toy/weights/gen1/`); `model=tiny`: random tiny parts built in memory (tests, smoke runs).

The output plays at the input's frame rate. result.json records t_s, ω, ω_t, the content source, the mask, the
windows and the weights' training record; structure.png is frame 0's blurred depth as the model saw it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from .. import values
from ..conditions.depth import DEFAULT_DEPTH_MODEL
from ..errors import UserInputError
from ..models import gen1 as model
from ..progress import StageReporter
from ..sampling.vae import decode_to_uint8, encode_images
from .base import (DEFAULT_GUIDANCE_SCALE, VideoMethod, VideoOutput, VideoSettings, check_steps_fit, load_image_pipeline,
                   register)
from .tsr import input_geometry

log = logging.getLogger(__name__)


EDIT_REGIONS = ("foreground", "background")
KEEP_OUTSIDE = ("pixels", "latents")  # with a mask: what stands outside the edit (see paste_outside)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
STRUCTURE_FILE = "structure.png"
FRAMES_PER_VAE_CALL = 8  # encode and decode in chunks, so VAE memory stays flat in the clip's length


# --- settings ------------------------------------------------------------------------------------------------


@dataclass
class Gen1Settings(VideoSettings):
    input: str = ""
    input_fps: float = 8.0
    input_size: tuple[int, int] = (0, 0)  # the input's stored height, width
    max_frames: int | None = None
    ts: int = 3
    temporal_guidance: float = 1.0
    content_image: str | None = None
    content_mix: float = 0.5
    prior_steps: int = 25
    prior_guidance_scale: float = 4.0
    mask: str | None = None
    edit_region: str = "foreground"
    keep_outside: str = "pixels"  # with a mask: the input's own pixels outside the edit (pixels) or its VAE round trip (latents)
    feather: int = 2  # pixels over which the edit blends into the kept input (keep_outside=pixels)
    depth_maps: str | None = None
    annotator: str | None = None  # annotator.path (None: the default depth model; "tiny": a random tiny one)
    vae: str | None = None  # a VAE to encode and decode with instead of model's (its encoder must be model's)
    guidance_from: str = "default"  # which setting gave guidance_scale: method.guidance_scale, guidance_scale, weights or default
    window: int | None = 8
    window_overlap: int = 4
    spans: list = field(default_factory=list)
    root: Path | None = None  # the weights directory (None: model=tiny's parts in memory)
    weights_info: dict = field(default_factory=dict)  # unet/gen1.json

    @property
    def content_source(self) -> str:
        return "+".join(name for name, given in (("prompt", self.prompt), ("image", self.content_image)) if given)


def weights_root(cfg: DictConfig) -> Path | None:
    from ..models.components import method_weights_root

    return method_weights_root(cfg, "gen1", model.MANIFEST, "unet/, image_encoder/, prior/, manifest.json")


def stored_size(path: str, key: str) -> tuple[int, int]:
    """(height, width) of an image file, or of the first frame of a video / frame folder."""
    from ..io.images import image_size
    from ..io.video_input import iter_frames

    if Path(path).is_file() and Path(path).suffix.lower() in IMAGE_SUFFIXES:
        width, height = image_size(path, key)
        return height, width
    first = next(iter(iter_frames(path, label=key)), None)
    if first is None:
        raise UserInputError(f"{key}={path} holds no frame")
    return first.shape[:2]


def check_companion(path, key: str, settings_input: str, input_size: tuple[int, int], input_frames: int,
                    single_image: bool) -> str:
    """A video (or, with `single_image`, one image) that goes frame by frame with the input: it must exist, decode,
    and have the input's stored size and number of frames."""
    from ..io.video_input import frame_count

    path = str(Path(str(path)).expanduser())
    if not Path(path).exists():
        raise UserInputError(f"{key}={path} does not exist")
    size = stored_size(path, key)
    if tuple(size) != tuple(input_size):
        raise UserInputError(f"{key}={path} is {size[0]}x{size[1]} but input={settings_input} is "
                             f"{input_size[0]}x{input_size[1]}; it must have the input's size")
    one_image = Path(path).is_file() and Path(path).suffix.lower() in IMAGE_SUFFIXES
    if one_image and not single_image:
        raise UserInputError(f"{key}={path} is one image; it needs one map per input frame (a video or a folder)")
    if not one_image:
        count = frame_count(path, key)
        if count != input_frames:
            raise UserInputError(f"{key}={path} has {count} frames but input={settings_input} has {input_frames}; "
                                 f"give one per input frame" + (" or one image for all" if single_image else ""))
    return path


def manifest_model(root: Path, key: str) -> str | None:
    """The model the weights' manifest names under `key`: a directory inside the weights, or else a hub id (None:
    the manifest names none)."""
    named = model.read_manifest(root).get(key)
    if not named:
        return None
    return str(root / named) if (root / named).is_dir() else str(named)


def depth_annotator_path(cfg: DictConfig, root: Path | None) -> str | None:
    """annotator.path; else the depth model the weights' manifest names ("depth_annotator": a directory inside the
    weights, or a hub id: the one the model was trained on); else with model=tiny "tiny" (a random tiny DPT, as every
    part of model=tiny is); else None, the depth annotator's default (MiDaS DPT-Hybrid)."""
    path = cfg.annotator.get("path") if cfg.get("annotator") else None
    if path:
        return str(path)
    if root is not None:
        return manifest_model(root, "depth_annotator")
    return "tiny" if cfg.model.get("name") == "tiny" and not cfg.model.get("path") else None


def weights_vae(cfg: DictConfig, root: Path | None) -> str | None:
    """method.vae; else the VAE the weights' manifest names ("vae": a directory inside the weights or a hub id, one
    whose decoder was fine-tuned for these weights on model's latents); else None, model's own VAE."""
    path = cfg.method.get("vae")
    if path:
        return str(Path(str(path)).expanduser()) if Path(str(path)).expanduser().exists() else str(path)
    return manifest_model(root, "vae") if root is not None else None


def guidance_scale(cfg: DictConfig, root: Path | None) -> tuple[float, str]:
    """(ω, where it came from): method.guidance_scale; else a top-level guidance_scale that was given; else the scale
    the weights' manifest recommends ("guidance_scale", chosen for those weights as a model card's recommended setting
    is); else the default (7.5)."""
    if cfg.method.get("guidance_scale") is not None:
        return values.number(cfg.method.guidance_scale, "method.guidance_scale", 0), "method.guidance_scale"
    if cfg.get("guidance_scale") is not None:
        return values.number(cfg.guidance_scale, "guidance_scale", 0), "guidance_scale"
    recommended = model.read_manifest(root).get("guidance_scale") if root is not None else None
    if recommended is not None:
        return values.number(recommended, f"method.weights={root}: manifest guidance_scale", 0), "weights"
    return DEFAULT_GUIDANCE_SCALE, "default"


def settings_from_config(cfg: DictConfig) -> Gen1Settings:
    from ..io.images import decode_image
    from ..io.video_input import frame_count, source_frame_rate
    from ..sampling.gen1 import windows

    method = cfg.method
    path = cfg.get("input")
    if not path:
        raise UserInputError("method=gen1 needs input=<a video file or a folder of frames> to edit")
    path = str(Path(str(path)).expanduser())
    if not Path(path).exists():
        raise UserInputError(f"input={path} does not exist")
    input_size = stored_size(path, "input")  # decodes the first frame: an undecodable input fails here
    height, width = input_geometry(cfg, path)
    total = frame_count(path, "input")
    max_frames = values.integer(method.max_frames, "method.max_frames", 1) if method.get("max_frames") is not None else None
    frames = min(total, max_frames) if max_frames else total
    if frames < 1:
        raise UserInputError(f"input={path} holds no frame")

    prompt = str(cfg.get("prompt") or "")
    content_image = cfg.get("content_image")
    if not prompt and not content_image:
        raise UserInputError('method=gen1 needs content: prompt="..." (through the prior) and/or content_image=IMAGE')
    if content_image:
        content_image = str(Path(str(content_image)).expanduser())
        decode_image(content_image, "content_image")  # unreadable: one line now, before any model loads

    edit_region = str(method.edit_region)
    if edit_region not in EDIT_REGIONS:
        raise UserInputError(f"method.edit_region must be foreground or background, got {edit_region!r}")
    mask = cfg.get("mask")
    mask = check_companion(mask, "mask", path, input_size, total, single_image=True) if mask else None
    keep_outside = str(method.keep_outside)
    if keep_outside not in KEEP_OUTSIDE:
        raise UserInputError(f"method.keep_outside must be pixels or latents, got {keep_outside!r}")
    depth_maps = method.get("depth_maps")
    depth_maps = check_companion(depth_maps, "method.depth_maps", path, input_size, total, single_image=False) if depth_maps else None

    window = values.integer(method.window, "method.window", 1) if method.get("window") is not None else None
    overlap = values.integer(method.window_overlap, "method.window_overlap", 0)
    if window is not None and overlap >= window:
        raise UserInputError(f"method.window_overlap={overlap} must be smaller than method.window={window}")

    root = weights_root(cfg)
    info = {}
    if root is not None:
        info = model.read_gen1_info(model.resolve_gen1_dir(model.part_dir(root, "unet"), "method.weights"), "method.weights")
        model.part_dir(root, "image_encoder")
        if prompt:
            model.part_dir(root, "prior")  # text content needs the prior: say so before anything loads

    steps = method.get("steps") if method.get("steps") is not None else cfg.steps
    guidance, guidance_from = guidance_scale(cfg, root)
    return Gen1Settings(
        prompt=prompt, negative_prompt=str(cfg.get("negative_prompt") or ""), frames=frames, height=height, width=width,
        steps=values.integer(steps, "method.steps", 1, 1000), guidance_scale=guidance, guidance_from=guidance_from,
        seed=values.seed(cfg.seed), input=path,
        input_fps=source_frame_rate(path, "input") or values.number(method.input_fps, "method.input_fps", above=0),
        input_size=tuple(input_size), max_frames=max_frames,
        ts=values.integer(method.ts, "method.ts", 0, model.MAX_TS),
        temporal_guidance=values.number(method.temporal_guidance, "method.temporal_guidance", 0),
        content_image=content_image, content_mix=values.number(method.content_mix, "method.content_mix", 0, 1),
        prior_steps=values.integer(method.prior_steps, "method.prior_steps", 1, 1000),
        prior_guidance_scale=values.number(method.prior_guidance_scale, "method.prior_guidance_scale", 0),
        mask=mask, edit_region=edit_region, depth_maps=depth_maps, keep_outside=keep_outside,
        feather=values.integer(method.feather, "method.feather", 0, 64),
        annotator=depth_annotator_path(cfg, root), vae=weights_vae(cfg, root),
        window=window, window_overlap=overlap, spans=[list(span) for span in windows(frames, window, overlap)],
        root=root, weights_info=info,
    )


# --- loading -------------------------------------------------------------------------------------------------


@dataclass
class Gen1Models:
    vae: object  # the loaded model's VAE
    unet: object  # the Gen-1 VideoUNet
    scheduler: object
    image_encoder: object
    feature_extractor: object
    prior: object | None  # a KandinskyPriorPipeline (text -> CLIP image embedding), when the content has text
    annotator: object | None  # the depth annotator, when no depth maps are given
    device: torch.device


def load_parts(settings: Gen1Settings, seed: int):
    """(unet, info, image encoder, processor, prior parts or None) from the weights, or model=tiny's in memory."""
    needs_prior = bool(settings.prompt)
    if settings.root is None:
        encoder, processor = model.tiny_image_encoder(seed)
        prior = model.tiny_prior(seed) if needs_prior else None
        unet = model.tiny_gen1_unet(seed)
        return unet, model.gen1_info("ts", unet), encoder, processor, prior
    root = settings.root
    unet, info = model.load_gen1(model.part_dir(root, "unet"), "method.weights")
    encoder, processor = model.load_image_encoder(model.part_dir(root, "image_encoder"), "method.weights")
    prior = model.load_prior(model.part_dir(root, "prior"), "method.weights") if needs_prior else None
    return unet, info, encoder, processor, prior


def load_depth_annotator(settings: Gen1Settings, cfg: DictConfig, device: torch.device):
    from ..conditions.depth import DepthAnnotator, tiny_depth_annotator

    path = settings.annotator
    if path == "tiny":
        return tiny_depth_annotator(device=device)
    return DepthAnnotator.from_pretrained(path or DEFAULT_DEPTH_MODEL, device=device)


def load_vae(source: str, model_vae):
    """The VAE `source` names (method.vae or the weights' own), refused in one line unless it encodes as model's
    VAE does: the UNet denoises, and the structure is, model's latents, so only the decoder may differ."""
    from diffusers import AutoencoderKL

    from ..models.components import load_component

    vae = load_component(source, key="method.vae", pretrained=AutoencoderKL.from_pretrained, what="a diffusers VAE")
    vae.to(model_vae.dtype)
    for name in ("encoder", "quant_conv"):
        ours, theirs = getattr(model_vae, name).state_dict(), getattr(vae, name).state_dict()
        # within storage precision (a float16 copy of the same encoder passes; another encoder does not)
        if ours.keys() != theirs.keys() or any(not torch.allclose(ours[k].float(), theirs[k].float(), rtol=1e-3, atol=1e-4)
                                               for k in ours):
            raise UserInputError(f"method.vae={source}: its {name} is not model's VAE's, so its latents are not the ones "
                                 "the Gen-1 UNet was trained on (only a decoder fine-tuned on them can replace model's)")
    if vae.config.scaling_factor != model_vae.config.scaling_factor:
        raise UserInputError(f"method.vae={source}: scaling_factor {vae.config.scaling_factor} is not model's "
                             f"{model_vae.config.scaling_factor}")
    return vae


def load(cfg: DictConfig, settings: Gen1Settings, device: torch.device, dtype: torch.dtype) -> Gen1Models:
    from diffusers import KandinskyPriorPipeline

    pipe = load_image_pipeline(cfg, settings, dtype)
    vae = (load_vae(settings.vae, pipe.vae) if settings.vae else pipe.vae).to(device)
    unet, info, encoder, processor, prior_parts = load_parts(settings, int(cfg.model.get("seed", 0)))
    if not model.has_structure(unet):
        raise UserInputError(f"method.weights: the UNet (stage {info.get('stage')}) takes no structure channels; "
                             "method=gen1 needs a structure-conditioned model (stage structure or ts)")
    model.check_content_dim(unet, encoder.config.projection_dim, "method.weights")
    if vae.config.latent_channels != unet.config.in_channels - model.EXTRA_CHANNELS:
        raise UserInputError(f"model: its VAE has {vae.config.latent_channels} latent channels, the Gen-1 UNet "
                             f"denoises {unet.config.in_channels - model.EXTRA_CHANNELS}")
    window = min(settings.window or settings.frames, settings.frames)
    if unet.config.frame_position_encoding and window > unet.config.max_frames:
        raise UserInputError(f"temporal windows of {window} frames are more than the UNet's frame-position encoding "
                             f"covers ({unet.config.max_frames}); pass method.window<={unet.config.max_frames}")
    trained_ts = int(info.get("trained_max_ts", 0 if info.get("stage") == "structure" else model.MAX_TS))
    if settings.ts > trained_ts:  # allowed (the t_s embedding is defined), but the model never saw such blur
        log.warning("the weights were trained with t_s <= %d (stage %s); method.ts=%d is outside it",
                    trained_ts, info.get("stage"), settings.ts)
    scheduler = model.gen1_scheduler(info)
    check_steps_fit(settings.steps, scheduler)
    prior = None
    if prior_parts is not None:
        prior_model, text_encoder, tokenizer, prior_scheduler = prior_parts
        prior = KandinskyPriorPipeline(prior=prior_model, image_encoder=encoder, text_encoder=text_encoder,
                                       tokenizer=tokenizer, scheduler=prior_scheduler, image_processor=processor)
        prior.set_progress_bar_config(disable=True)
        prior.to(device, dtype)
    annotator = None if settings.depth_maps else load_depth_annotator(settings, cfg, device)
    return Gen1Models(vae=vae, unet=unet.to(device, dtype), scheduler=scheduler, image_encoder=encoder.to(device, dtype),
                      feature_extractor=processor, prior=prior, annotator=annotator, device=device)


# --- running ---------------------------------------------------------------------------------------------------


def read_depth(models: Gen1Models, settings: Gen1Settings, frames: np.ndarray) -> np.ndarray:
    """Depth (F, H, W) in [0, 1]: the annotator's maps (normalised once over the clip) or the given ones."""
    from ..io.video_input import read_frames

    if settings.depth_maps:
        maps = read_frames(settings.depth_maps, settings.frames, height=settings.height, width=settings.width,
                           label="method.depth_maps")
    else:
        maps = models.annotator(list(frames))
    return model.depth_from_maps(maps)


def content_token(models: Gen1Models, settings: Gen1Settings, generator: torch.Generator) -> torch.Tensor:
    """c: (1, 1, D). From text by the prior, from an image by the vision tower, from both their weighted sum."""
    from ..io.video_input import read_image

    embeddings = []
    if settings.prompt:
        text = models.prior(settings.prompt, negative_prompt=settings.negative_prompt or None,
                            num_inference_steps=settings.prior_steps, guidance_scale=settings.prior_guidance_scale,
                            generator=generator).image_embeds[:, None]
        embeddings.append((1 - settings.content_mix if settings.content_image else 1.0, text))
    if settings.content_image:
        image = read_image(settings.content_image, label="content_image")
        embedding = model.content_embeddings(models.image_encoder, models.feature_extractor, image[None], device=models.device)
        embeddings.append((settings.content_mix if settings.prompt else 1.0, embedding))
    return sum(weight * embedding for weight, embedding in embeddings)


def paste_outside(decoded: np.ndarray, frames: np.ndarray, mask: torch.Tensor, feather: int) -> np.ndarray:
    """uint8 (F, H, W, 3): the decoded edit inside the resampled latent cells (`mask`, (1, 1, F, h, w)), the input's
    own frames outside them, blended over `feather` pixels on the kept side. Why: the sampler keeps the outside
    latents exactly, but decoding is not local (the VAE decoder's convolutions and mid-block attention carry the edit
    into kept cells) and the round trip itself blurs the input; inpainting pipelines put the original image back the
    same way (diffusers' `VaeImageProcessor.apply_overlay`), with `method.keep_outside=latents` for the bare recipe."""
    import cv2

    scale = frames.shape[1] // mask.shape[-2]
    cells = mask[0, 0].float().cpu().numpy()  # (F, h, w)
    alpha = np.repeat(np.repeat(cells, scale, axis=1), scale, axis=2)  # (F, H, W), 1 in every resampled pixel
    if feather:
        size = 2 * feather + 1  # the blur reaches `feather` pixels past an edited cell, never into it (max below)
        alpha = np.maximum(alpha, np.stack([cv2.blur(a, (size, size), borderType=cv2.BORDER_REPLICATE) for a in alpha]))
    blended = alpha[..., None] * decoded.astype(np.float32) + (1 - alpha[..., None]) * frames.astype(np.float32)
    return np.clip(blended.round(), 0, 255).astype(np.uint8)


def edit_mask(settings: Gen1Settings, device: torch.device) -> torch.Tensor:
    """(1, 1, F, h, w): 1 where latents are resampled. White in the mask is the foreground; a latent cell is edited
    when any of its 8x8 pixels is in the edited region (max pooling), so the edit covers every marked pixel."""
    from ..io.video_input import read_frames, read_image

    if Path(settings.mask).is_file() and Path(settings.mask).suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(settings.mask, settings.height, settings.width, label="mask")
        maps = np.repeat(image[None], settings.frames, axis=0)
    else:
        maps = read_frames(settings.mask, settings.frames, height=settings.height, width=settings.width, label="mask")
    foreground = torch.from_numpy(maps.mean(axis=-1) > 127.5).float()  # (F, H, W)
    edited = foreground if settings.edit_region == "foreground" else 1 - foreground
    latent = torch.nn.functional.max_pool2d(edited[:, None], kernel_size=8)  # (F, 1, h, w)
    return latent.permute(1, 0, 2, 3)[None].to(device)


def encode_frames(vae, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> scaled latents (1, 4, F, h, w), FRAMES_PER_VAE_CALL at a time."""
    latents = torch.cat([encode_images(vae, frames[start:start + FRAMES_PER_VAE_CALL], device)
                         for start in range(0, len(frames), FRAMES_PER_VAE_CALL)])
    return latents.permute(1, 0, 2, 3)[None].float()


def generate(models: Gen1Models, settings: Gen1Settings, reporter: StageReporter | None = None) -> VideoOutput:
    from ..io.video_input import read_frames
    from ..sampling.gen1 import sample_gen1

    reporter = reporter or StageReporter()
    device = models.device
    with reporter.stage("reading input"):
        frames = read_frames(settings.input, settings.frames, height=settings.height, width=settings.width,
                             max_frames=settings.max_frames, label="input")
    with reporter.stage("structure"):  # s: depth, blurred t_s times, encoded, with the t_s embedding
        depth = read_depth(models, settings, frames)
        flat = model.single_pixel_ts(*depth.shape[1:])
        if settings.ts > flat:  # a sweep over t_s should know its last levels are one structure
            log.warning("method.ts=%d blurs %dx%d depth to one pixel, as t_s=%d does: beyond t_s=%d only the t_s "
                        "channels differ", settings.ts, depth.shape[2], depth.shape[1], flat, flat)
        structure = model.structure_condition(models.vae, depth, settings.ts, frames_per_encode=FRAMES_PER_VAE_CALL,
                                              device=device)
        structure = structure.permute(1, 0, 2, 3)[None]  # (1, 8, F, h, w)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    with reporter.stage("content", total=settings.prior_steps if settings.prompt else None):
        content = content_token(models, settings, generator)
    known, mask = None, None
    if settings.mask:
        with reporter.stage("mask"):
            known, mask = encode_frames(models.vae, frames, device), edit_mask(settings, device)
    h, w = settings.height // 8, settings.width // 8
    with reporter.stage("sampling", total=settings.steps):
        latents = sample_gen1(
            models.unet, models.scheduler, content=content, structure=structure, steps=settings.steps,
            guidance_scale=settings.guidance_scale, temporal_guidance=settings.temporal_guidance,
            shape=(1, models.vae.config.latent_channels, settings.frames, h, w), generator=generator,
            window=settings.window, window_overlap=settings.window_overlap, known_latents=known, mask=mask,
            callback=lambda *_: reporter.advance(),
        )
    with reporter.stage("decoding"):
        per_frame = latents[0].permute(1, 0, 2, 3)
        video = decode_to_uint8(models.vae, per_frame, FRAMES_PER_VAE_CALL, device)
        if mask is not None and settings.keep_outside == "pixels":
            video = paste_outside(video, frames, mask, settings.feather)
    blurred = model.blur_structure(depth[:1], settings.ts)[0]
    structure_image = np.repeat((np.clip(blurred, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    shown = [frames[0]]
    if settings.content_image:
        from ..io.video_input import read_image

        shown.append(read_image(settings.content_image, settings.height, settings.width, label="content_image"))
    return VideoOutput(frames=video, latents=per_frame.cpu(), timings=dict(reporter.timings), inputs=shown,
                       files={STRUCTURE_FILE: structure_image})


@register
class Gen1(VideoMethod):
    name = "gen1"
    description = "Gen-1: edit a video's content (text via a prior, or an image) keeping its depth structure (t_s), temporal guidance ω_t"
    example = 'model=toy input=clip.mp4 prompt="a blue square" method.ts=3 method.temporal_guidance=1.2'
    needs_prompt = False  # content may come from content_image= alone

    def settings(self, cfg: DictConfig) -> Gen1Settings:
        return settings_from_config(cfg)

    def output_fps(self, cfg: DictConfig, settings: Gen1Settings) -> float:
        return settings.input_fps

    def load(self, cfg, settings: Gen1Settings, device, dtype, conditions) -> Gen1Models:
        return load(cfg, settings, device, dtype)

    def generate(self, loaded: Gen1Models, settings: Gen1Settings, reporter: StageReporter) -> VideoOutput:
        return generate(loaded, settings, reporter)

    def record(self, cfg: DictConfig, settings: Gen1Settings) -> dict:
        info = settings.weights_info
        return {
            "input": settings.input, "input_fps": settings.input_fps, "input_frames": settings.frames,
            "gen1": {
                "ts": settings.ts,
                "guidance_scale": settings.guidance_scale, "guidance_scale_from": settings.guidance_from,
                "vae": settings.vae or "model",
                "temporal_guidance": settings.temporal_guidance,
                "content": {"source": settings.content_source, "prompt": settings.prompt or None,
                            "image": settings.content_image,
                            "mix": settings.content_mix if settings.prompt and settings.content_image else None,
                            "prior_steps": settings.prior_steps if settings.prompt else None,
                            "prior_guidance_scale": settings.prior_guidance_scale if settings.prompt else None},
                "structure": {"depth": "maps" if settings.depth_maps else "annotator", "maps": settings.depth_maps,
                              "annotator": None if settings.depth_maps else (settings.annotator or DEFAULT_DEPTH_MODEL),
                              "file": STRUCTURE_FILE},
                "mask": {"path": settings.mask, "edit_region": settings.edit_region, "keep_outside": settings.keep_outside,
                         "feather": settings.feather if settings.keep_outside == "pixels" else None} if settings.mask else None,
                "windows": {"window": settings.window, "overlap": settings.window_overlap, "spans": settings.spans},
                "weights": {"path": str(settings.root) if settings.root else None,
                            "stage": info.get("stage", "ts" if settings.root is None else None),
                            "prediction": info.get("prediction", model.PREDICTION),
                            "schedule": info.get("schedule", model.DEFAULT_SCHEDULE)},
            },
        }
