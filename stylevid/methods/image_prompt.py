"""Image prompts (VideoBooth-style paper, Sections 3.1-3.4): a video of the subject of an image, from a text prompt.

On the AnimateDiff video model (any SD 1.x personalized model plus a motion module, loaded exactly as
`method=animatediff` loads it), the image prompt I (`image_prompt=`, optionally `image_prompt_mask=` keeping only
the subject) enters twice, coarse to fine (`stylevid.models.image_prompt` holds the model parts):

1. Coarse visual embeddings (Section 3.1): f_V = CLIP_I(I), the class tokens of several CLIP vision layers; f_I =
   F(f_V), the trained mapper. f_I replaces the embedding rows of the subject word (`subject=`, which must be a word
   of the prompt) before the CLIP text encoder runs (c_T), and the trained K, V copies of every spatial
   cross-attention read c_T.
2. Fine visual embeddings (Section 3.2, `method.fine`): at every UNet call the image prompt's VAE latent, noised to
   that timestep with one seeded ε, runs through the UNet in an exemplar pass (one frame, motion modules off);
   every spatial self-attention then computes V_0^new = softmax(Q_0 [K_I, K_0]ᵀ/√d)[V_I, V_0] and V_i^new =
   softmax(Q_i [K_0, K_{i-1}]ᵀ/√d)[V_0^new, V_{i-1}] with the trained exemplar projections.
3. Position encodings (Section 3.4, `method.position_encoding`): 2D sine-cosine spatial plus temporal encodings
   added to Q, K, V in those layers, scaled per resolution.
4. Sampling is AnimateDiff's (diffusers' AnimateDiffPipeline with the composed text as `prompt_embeds`); the
   unconditional guidance branch has the negative prompt, the original K, V and no exemplar.

`method.weights=` is a directory `stylevid train image_prompt` exports (mapper/, image_encoder/,
attention_processors.safetensors, manifest.json); `model=tiny` builds random tiny parts in memory; `model=toy` reads
the packaged toy weights (`stylevid/toy/weights/image_prompt/`) once they are built. With `method.fine=false` and a
mapper that returns the subject word's own embedding this is plain AnimateDiff, bit for bit (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import values
from ..errors import UserInputError
from ..models import image_prompt as model
from ..progress import StageReporter
from . import animatediff
from .base import VideoMethod, VideoOutput, load_image_pipeline, place, register

LAYOUT = "mapper/, image_encoder/, attention_processors.safetensors, manifest.json"
TINY_MAPPER_WIDTH = 64


@dataclass
class ImagePromptSettings(animatediff.AnimateDiffSettings):
    image_prompt: str = ""
    subject: str = ""
    image_prompt_mask: str | None = None
    fine: bool = True
    position_encoding: bool = True
    num_tokens: int = 1  # model=tiny's random mapper; trained weights carry their own
    root: Path | None = None  # the weights directory (None: model=tiny's random parts)
    manifest: dict | None = None
    token_positions: list[int] | None = None  # where f_I went in the prompt's tokens (set when the video is made)


def check_subject(prompt: str, subject: str) -> None:
    """The subject's words must appear, in order, among the prompt's words (the tokenizer checks again at load)."""
    words, wanted = model.prompt_words(prompt), model.prompt_words(subject)
    if not wanted or not any(words[k:k + len(wanted)] == wanted for k in range(len(words))):
        raise UserInputError(f"subject={subject!r} is not a word of the prompt; its words are: {', '.join(words) or '(none)'}")


def read_image_prompt(settings: ImagePromptSettings) -> np.ndarray:
    """The image prompt (masked to its subject when a mask is given) as uint8 (H, W, 3)."""
    from ..io.images import decode_image

    image = decode_image(settings.image_prompt, "image_prompt")
    mask = None
    if settings.image_prompt_mask:
        mask = decode_image(settings.image_prompt_mask, "image_prompt_mask").max(axis=-1) > 127
        mask = mask.astype(np.uint8)
    return model.prepare_image_prompt(image, mask)


def settings_from_config(cfg: DictConfig) -> ImagePromptSettings:
    from ..models.components import method_weights_root

    method = cfg.method
    if method.get("per_frame_prompts"):
        raise UserInputError("method=image_prompt takes one prompt (the subject word is replaced in it); "
                             "method.per_frame_prompts is for method=animatediff")
    image, subject = cfg.get("image_prompt"), cfg.get("subject")
    if not image:
        raise UserInputError("method=image_prompt needs image_prompt=<an image of the subject> and subject=<its word in the prompt>")
    if not subject:
        raise UserInputError("method=image_prompt needs subject=<the word of the prompt the image shows>, e.g. subject=dog")
    base = animatediff.settings_from_config(cfg)
    fine = bool(method.get("fine", True))
    if fine and base.free_noise:
        raise UserInputError("method.fine=true injects the image prompt into frame 0 of one window; "
                             "use it without method.free_noise (or pass method.fine=false)")
    check_subject(base.prompt, str(subject))
    root = method_weights_root(cfg, "image_prompt", model.MANIFEST, LAYOUT)
    manifest = model.read_manifest(root) if root is not None else None
    if manifest is not None and fine and not manifest.get("fine"):
        raise UserInputError(f"method.weights={root} has no fine stage ({', '.join(manifest.get('stages', []))} "
                             "trained); pass method.fine=false or train target.stage=fine")
    settings = ImagePromptSettings(
        **{f.name: getattr(base, f.name) for f in fields(base)},
        image_prompt=str(Path(str(image)).expanduser()), subject=str(subject),
        image_prompt_mask=str(Path(str(cfg.image_prompt_mask)).expanduser()) if cfg.get("image_prompt_mask") else None,
        fine=fine, position_encoding=bool(method.get("position_encoding", True)),
        num_tokens=values.integer(method.get("num_tokens", 1), "method.num_tokens", 1, 16),
        root=root, manifest=manifest,
    )
    read_image_prompt(settings)  # unreadable image or mask, or a mask of another size: one line now
    return settings


@dataclass
class ImagePromptModels:
    video_pipe: object  # the AnimateDiff pipeline
    adapter: model.ImagePromptAdapter
    image_encoder: object
    feature_extractor: object


def load_parts(settings: ImagePromptSettings, text_dim: int, seed: int):
    """(mapper, image encoder, processor): from the weights, or model=tiny's random ones."""
    from ..models.gen1 import load_image_encoder, tiny_image_encoder

    if settings.root is None:
        encoder, processor = tiny_image_encoder(seed)
        layers = model.default_clip_layers(encoder.config.num_hidden_layers)
        torch.manual_seed(seed)
        mapper = model.ImagePromptMapper(vision_dim=encoder.config.hidden_size, text_dim=text_dim, clip_layers=layers,
                                         num_tokens=settings.num_tokens, hidden_dim=TINY_MAPPER_WIDTH).eval()
        return mapper, encoder, processor
    if not (settings.root / "image_encoder" / "config.json").is_file():
        raise UserInputError(f"method.weights={settings.root} has no image_encoder/")
    encoder, processor = load_image_encoder(settings.root / "image_encoder", "method.weights")
    return model.load_mapper(settings.root), encoder, processor


def image_prompt_tokens(image_encoder, feature_extractor, mapper, image: np.ndarray, device, dtype) -> torch.Tensor:
    """f_I = F(CLIP_I(I)): (1, num_tokens, text_dim)."""
    pixels = feature_extractor(images=[image], return_tensors="pt").pixel_values.to(device=device, dtype=dtype)
    features = model.clip_layer_features(image_encoder, pixels, list(mapper.config.clip_layers))
    return mapper(features)


class InjectionHook:
    """Forward pre-hook of the video UNet: says which videos of the call carry the image prompt (the pipeline stacks
    [unconditional, conditional] under guidance) and, with the fine stage, runs the exemplar pass at the call's
    timestep: x_I^t = sqrt(ᾱ_t) x_I + sqrt(1 - ᾱ_t) ε, ε drawn once from the seed."""

    def __init__(self, state: model.ImagePromptState, guided: bool, scheduler, latent: torch.Tensor | None,
                 noise: torch.Tensor | None):
        self.state, self.guided, self.scheduler, self.latent, self.noise = state, guided, scheduler, latent, noise
        self.exemplar_passes = 0
        self._running = False

    def __call__(self, unet, args, kwargs):
        if self._running:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        context = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        videos, frames = sample.shape[0], sample.shape[2]
        conditioned = [False, True] if self.guided else [True]
        if videos != len(conditioned):
            raise RuntimeError(f"image prompt: the UNet got {videos} videos, expected {len(conditioned)}")
        state = self.state
        state.conditioned = torch.tensor(conditioned)
        state.latent_size = tuple(sample.shape[-2:])
        if self.latent is not None:
            t = torch.as_tensor(timestep).flatten()[:1].to(torch.long).cpu()
            noisy = self.scheduler.add_noise(self.latent, self.noise, t).to(device=sample.device, dtype=sample.dtype)
            video_context = context.unflatten(0, (videos, frames))[:, 0][state.conditioned.to(context.device)]
            self._running = True
            try:
                model.run_exemplar_pass(unet, state, noisy, t.to(sample.device), video_context)
            finally:
                self._running = False
            self.exemplar_passes += 1
        return None


@register
class ImagePrompt(VideoMethod):
    name = "image_prompt"
    description = "Image prompts (VideoBooth-style): the subject of image_prompt= in an AnimateDiff video, subject=<its word>"
    supports = frozenset({"cpu_offload", "vae_slicing"})
    example = 'image_prompt=my_dog.png subject=dog prompt="a dog running on the beach" method.weights=runs/ip/ motion.path=...'

    def settings(self, cfg: DictConfig) -> ImagePromptSettings:
        return settings_from_config(cfg)

    def load(self, cfg, settings: ImagePromptSettings, device, dtype, conditions) -> ImagePromptModels:
        pipe = load_image_pipeline(cfg, settings, dtype)
        animatediff.apply_image_lora(pipe, cfg)
        motion = animatediff.load_motion(cfg, dtype, unet=pipe.unet)
        settings.validate(max_seq_length=motion.config.motion_max_seq_length)
        video_pipe = animatediff.animatediff_pipeline(pipe, motion, settings.beta_schedule)
        mapper, encoder, processor = load_parts(settings, int(pipe.text_encoder.config.hidden_size), int(cfg.model.get("seed", 0)))
        model.compose_prompt(pipe.tokenizer, settings.prompt, settings.subject, mapper.config.num_tokens)  # tokens
        adapter = model.ImagePromptAdapter(mapper, video_pipe.unet, fine=settings.fine)
        if settings.root is not None:
            model.load_projections(settings.root, adapter)
        else:  # model=tiny's random parts run the paper's equations and encodings as written (gates of 1)
            with torch.no_grad():
                for gates in adapter.gates():
                    gates.injection.fill_(1.0)
                    gates.position.fill_(1.0)
        video_pipe = place(video_pipe, cfg, device)
        adapter.to(device=device, dtype=dtype).eval()
        encoder.to(device=device, dtype=dtype)
        return ImagePromptModels(video_pipe, adapter, encoder, processor)

    def generate(self, loaded: ImagePromptModels, settings: ImagePromptSettings, reporter: StageReporter) -> VideoOutput:
        from ..sampling.vae import encode_images

        pipe, adapter = loaded.video_pipe, loaded.adapter
        device, dtype = pipe._execution_device, pipe.unet.dtype
        image = read_image_prompt(settings)
        with reporter.stage("image prompt"), torch.no_grad():
            tokens = image_prompt_tokens(loaded.image_encoder, loaded.feature_extractor, adapter.mapper, image, device, dtype)
            composed = model.compose_prompt(pipe.tokenizer, settings.prompt, settings.subject, adapter.mapper.config.num_tokens)
            embeds = model.composed_text_embeddings(pipe.text_encoder, [composed], tokens).to(dtype)
            latent = noise = None
            if settings.fine:
                exemplar = model.prepare_image_prompt(image, None, settings.height, settings.width)
                latent = encode_images(pipe.vae, exemplar[None], device).float().cpu()
                # One ε for every step, from its own stream of the seed: the video's noise is unchanged.
                noise = torch.randn(latent.shape, generator=torch.Generator("cpu").manual_seed(settings.seed + 1))
        settings.token_positions = composed.positions
        state = model.ImagePromptState(position_encoding=settings.position_encoding)
        hook = InjectionHook(state, settings.guidance_scale > 1, pipe.scheduler, latent, noise)
        text = dict(prompt_embeds=embeds, negative_prompt=settings.negative_prompt or None)
        with model.installed(pipe.unet, adapter, state):
            handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
            try:
                output = animatediff.sample(pipe, settings, reporter, text_inputs=text)
            finally:
                handle.remove()
                state.exemplars = {}
        output.inputs = [model.prepare_image_prompt(image, None, settings.height, settings.width)]
        return output

    def record(self, cfg: DictConfig, settings: ImagePromptSettings) -> dict:
        manifest = settings.manifest or {}
        return {
            "image_prompt": settings.image_prompt,
            "image_prompt_mask": settings.image_prompt_mask,
            "subject": settings.subject,
            "subject_token_positions": settings.token_positions,
            "fine": settings.fine,
            "position_encoding": settings.position_encoding,
            "motion": OmegaConf.to_container(cfg.motion),
            "lora": OmegaConf.to_container(cfg.lora),
            "weights": {"path": str(settings.root) if settings.root else None,
                        **{k: manifest.get(k) for k in ("stages", "base_model", "clip_layers", "num_tokens", "trained_steps")}},
        }
