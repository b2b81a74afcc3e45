"""`videogen_base`, `videogen_sr`: VideoGen's reference-guided cascaded latent video diffusion stages (paper Section
3.2, training Section 3.5).

Every stage trains on text-video clips (`data=webvid | folder | toy`) at its own resolution (`data.size` pixels:
the paper's stages are 16x16, 32x32 and 64x64 latents, 128, 256 and 512 px). The frozen SD VAE encodes every frame
(the denoising target z^0_{1:F}); the frozen CLIP text encoder the caption (dropped to "" with probability
`diffusion.caption_dropout`, for classifier-free guidance). The conditions, as the sampler (`sampling.cascade`)
gives them:

  * the reference: "we simply pick the first frame in the video as the reference image for training", its VAE
    latent (posterior mean, as a reference image is encoded at sampling time) on frame 0's input, zeros on the
    other frames; dropped to zeros with probability `videogen.reference_dropout`, so that sampling with
    `reference_mode=none` is a real ablation on the same weights;
  * the clip's FPS (source fps / data.stride, from the dataset), embedded into the time embedding;
  * super-resolution only: the clip resized to half size (2x2 area mean, as the dataset's own resizing), encoded,
    upsampled x2 and noise-augmented at a level drawn uniformly in [0, `videogen.max_noise_level`), that level
    embedded too (cascaded diffusion's noise conditioning augmentation).

L = E ||ε - ε_θ(z^t, c, [reference | upsampled], fps, level, t)||² (or the v-loss, `conf/diffusion/`).

Initialisation (Section 3.5): the base stage's 2D convolutions and spatial attentions are the SD UNet of `model`,
its temporal layers the identity (`models.videogen.build_stage`); a super-resolution stage (`videogen.stage` 2 or
3) starts as the trained stage below it (`videogen.init`: its stage directory, training run or checkpoint), its
conv_in widened with zero channels for the upsampled input and a zero noise-level embedding added
(`models.videogen.super_resolution_from`). A base stage given `videogen.init` (a trained base stage) starts as that
stage instead: a fine-tune, e.g. on other clips. The whole video UNet trains (`videogen.trainable=all`), or only what
inflation added plus conv_in (`temporal`: temporal layers, FPS / noise-level embeddings and the input layer that
reads the concatenated conditions).

Weights: checkpoints hold the stage under `checkpoints/step_N/weights/`, the finished run under
`<run>/videogen_stage/`, both `VideoUNet.save_pretrained` layouts (config.json + diffusion_pytorch_model.safetensors)
plus `stage.json` (which stage, its latent size, frames and base model), what `videogen.init=<run>` of the next
stage and `method=videogen` load.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ... import values
from ...data.sources import clip_dataset
from ...data.videos import collate_clips
from ...errors import UserInputError
from ...models.inflate import VideoUNet
from ...models.loading import load_pipeline
from ...models.videogen import (
    StageInfo,
    build_stage,
    load_stage,
    read_stage_info,
    reference_condition,
    resolve_stage_dir,
    save_stage,
    stage_record,
    super_resolution_from,
    upsample_condition,
)
from ..checkpoint import base_model_record, check_same_base, describe_model
from ..diffusion import DiffusionObjective, caption_ids
from . import Step, TrainingTarget, register

STAGE_EXPORT = "videogen_stage"
TRAINABLE = ("all", "temporal")
# record()["videogen"] key -> the setting a user changes it with
RECORD_KEYS = {"index": "videogen.stage", "latent_size": "data.size/8", "trainable": "videogen.trainable",
               "init": "videogen.init"}


class _VideoGenStage(TrainingTarget):
    """What the base and the super-resolution stages share; `kind` is "base" or "sr"."""

    kind = ""

    # --- before anything loads -----------------------------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg) -> None:
        videogen, data = cfg.videogen, cfg.data
        stage = values.integer(videogen.stage, "videogen.stage", 1, None)
        if cls.kind == "base" and stage != 1:
            raise UserInputError(f"videogen.stage={stage}: videogen_base trains stage 1; train stages 2, 3 with videogen_sr")
        if cls.kind == "sr" and stage < 2:
            raise UserInputError("videogen.stage=1 is the base stage (videogen_base); videogen_sr trains stage 2 or 3")
        values.number(videogen.reference_dropout, "videogen.reference_dropout", 0, 1)
        if videogen.trainable not in TRAINABLE:
            raise UserInputError(f"videogen.trainable must be one of {', '.join(TRAINABLE)}, got {videogen.trainable!r}")
        if cls.kind == "base":
            if videogen.get("init"):
                resolve_stage_dir(videogen.init, "videogen.init")  # before anything slow loads
            if not isinstance(videogen.frame_position_encoding, bool):
                raise UserInputError(f"videogen.frame_position_encoding must be true or false, got {videogen.frame_position_encoding!r}")
            max_frames = values.integer(videogen.max_frames, "videogen.max_frames", 1, None)
            if videogen.frame_position_encoding and int(data.frames) > max_frames:
                raise UserInputError(f"data.frames={data.frames} exceeds videogen.max_frames={max_frames}")
        else:
            if not videogen.get("init"):
                raise UserInputError(f"videogen_sr needs videogen.init=<the trained stage {stage - 1}: its run directory, "
                                     "videogen_stage/ or a checkpoint>")
            values.integer(videogen.max_noise_level, "videogen.max_noise_level", 1, 1000)
            if int(data.size) % 16:
                raise UserInputError(f"data.size={data.size}: a super-resolution stage needs a multiple of 16 "
                                     "(its low-resolution input is half of it, a multiple of 8)")
            resolve_stage_dir(videogen.init, "videogen.init")  # before anything slow loads

    # --- construction --------------------------------------------------------------------------------------------

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        videogen = cfg.videogen
        self.objective = DiffusionObjective.from_config(cfg.diffusion)  # checked before anything slow loads
        self.videos = clip_dataset(cfg, self.name)
        self.index, self.size, self.frames = int(videogen.stage), int(cfg.data.size), int(cfg.data.frames)
        self.reference_dropout = float(videogen.reference_dropout)
        # The stage to start from (required below an SR stage, optional for the base): a wrong directory is refused
        # before the base model loads.
        self.init_dir = resolve_stage_dir(videogen.init, "videogen.init") if videogen.get("init") else None
        below = read_stage_info(self.init_dir, "videogen.init") if self.init_dir is not None else None
        if self.kind == "base" and below is not None and below.index != 1:
            raise UserInputError(f"videogen.init={self.init_dir} is stage {below.index}; videogen_base continues from a "
                                 "trained base stage (stage 1)")
        if self.kind == "sr":
            if below.index != self.index - 1 or below.latent_size * 2 != self.size // 8:
                raise UserInputError(
                    f"videogen.init={self.init_dir} is stage {below.index} at {below.latent_size}x{below.latent_size} latents; "
                    f"stage {self.index} at data.size={self.size} ({self.size // 8}x{self.size // 8} latents) starts from "
                    f"stage {self.index - 1} at {self.size // 16}x{self.size // 16}"
                )
            self.max_noise_level = int(videogen.max_noise_level)
        lower = load_stage(self.init_dir, "videogen.init") if self.init_dir is not None else None
        # Frozen parts (Section 3.5): the SD VAE (image encoder) and the CLIP text encoder.
        pipe = load_pipeline(cfg.model, torch.float32)
        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.base_model = base_model_record(cfg.model, pipe.unet)
        if below is not None and below.base_model and (describe_model(below.base_model) != describe_model(self.base_model)
                                                       or below.base_model.get("unet") != self.base_model["unet"]):
            raise UserInputError(
                f"videogen.init={self.init_dir} was trained on base model {describe_model(below.base_model)}, this run's "
                f"model is {describe_model(self.base_model)}: its latents and text embeddings come from that model's "
                "VAE and text encoder; pass that model"
            )
        if self.kind == "sr":
            self.unet = super_resolution_from(lower)
        elif lower is not None:  # a base stage fine-tuned: the trained stage as it is (its frame encodings included)
            self.unet = lower
        else:
            self.unet = build_stage(pipe.unet, stage="base", frame_position_encoding=bool(videogen.frame_position_encoding),
                                    max_frames=int(videogen.max_frames))
        del lower
        if self.frames > self.unet.config.max_frames and self.unet.config.frame_position_encoding:
            raise UserInputError(f"data.frames={self.frames} exceeds the stage's max_frames={self.unet.config.max_frames}")
        del pipe
        self.trainable_names = self._trainable_names(str(videogen.trainable))
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.to(device, weight_dtype)
        self.unet.to(device)
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(name in self.trainable_names)
            if not parameter.requires_grad:  # frozen spatial weights at the low precision, trained ones stay fp32
                parameter.data = parameter.data.to(weight_dtype)

    def _trainable_names(self, trainable: str) -> set[str]:
        if trainable == "all":  # Section 3.5: the stages are trained as a whole (spatial and temporal)
            return {name for name, _ in self.unet.named_parameters()}
        # temporal: what inflation added, and conv_in, which must learn to read the concatenated conditions
        return {name for name, _ in self.unet.new_parameters()} | {"conv_in.weight", "conv_in.bias"}

    @property
    def model(self) -> VideoUNet:
        return self.unet

    def enable_gradient_checkpointing(self) -> None:
        # VideoUNet's own: UNet3DConditionModel has none (every resnet, temporal conv and spatial / temporal
        # transformer checkpointed).
        self.unet.enable_gradient_checkpointing()

    # --- data and loss -------------------------------------------------------------------------------------------

    def dataset(self):
        return self.videos

    def collate(self, items):
        return collate_clips(items)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, 3, H, W) pixels -> (sampled, mean) scaled latents, each (B, 4, F, H/8, W/8)."""
        batch, frames = pixels.shape[:2]
        posterior = self.vae.encode(pixels.flatten(0, 1).to(self.vae.dtype)).latent_dist
        scale = self.vae.config.scaling_factor
        video = lambda x: (x.float() * scale).unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)  # noqa: E731
        return video(posterior.sample(generator=generator)), video(posterior.mean)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        objective, generator = self.objective, at.generator
        pixels = batch["pixel_values"].to(self.device)  # (B, F, 3, H, W) at the stage's resolution
        fps = batch["fps"]
        if not bool(torch.isfinite(fps).all()):
            raise UserInputError("a training clip has no frame timing, so its FPS (a condition of every stage) is unknown; "
                                 "use videos with timestamps (mp4, webm...)")
        batch_size = pixels.shape[0]
        with torch.no_grad():
            latents, means = self.encode(pixels, generator)
            # The first frame is the reference (Section 3.5), dropped to zeros for some clips.
            keep = (torch.rand(batch_size, generator=generator) >= self.reference_dropout).to(self.device)
            reference = means[:, :, 0] * keep.view(-1, 1, 1, 1)
            conditions = [reference_condition(reference, latents.shape[2])]
            levels = None
            if self.kind == "sr":
                # The lower stage's view of the clip: half size, encoded, then x2 and noise-augmented as at sampling.
                half = F.interpolate(pixels.flatten(0, 1).float(), scale_factor=0.5, mode="area")
                low, _ = self.encode(half.unflatten(0, pixels.shape[:2]), generator)
                levels = torch.randint(0, self.max_noise_level, (batch_size,), generator=generator)
                conditions.append(upsample_condition(low, levels, objective.scheduler, generator))
                levels = levels.to(self.device)
            noise = objective.noise(latents, generator)
            timesteps = objective.timesteps(batch_size, generator)
            captions = objective.drop_captions(list(batch["captions"]), generator)
            text = self.text_encoder(caption_ids(self.tokenizer, captions).to(self.device))[0]
            noisy = objective.add_noise(latents, noise, timesteps)
            # The temporal convs' dropout (diffusers' TemporalConvLayer, p=0.1) draws from torch's global generator:
            # seeded from this micro-batch's generator, its masks too are a function of (seed, step, micro, rank),
            # so a resumed run repeats them. (Checkpointed recomputation restores the same RNG state itself.)
            dropout_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(dropout_seed)
            prediction = model(noisy, timesteps.to(self.device), encoder_hidden_states=text,
                               extra_input=torch.cat(conditions, dim=1), fps=fps.to(self.device), noise_level=levels).sample
        return objective.loss(prediction, latents, noise, timesteps)

    # --- weights -------------------------------------------------------------------------------------------------

    def stage_info(self) -> StageInfo:
        return StageInfo(index=self.index, latent_size=self.size // 8, frames=self.frames, base_model=self.base_model)

    def save_weights(self, directory: Path, state_dict) -> None:
        save_stage(directory, self.unet, self.stage_info(), state_dict)

    def load_weights(self, directory: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(resolve_stage_dir(directory, "trainer.resume") / "diffusion_pytorch_model.safetensors"))
        self.unet.load_state_dict(state, strict=True)

    def export(self, run_dir: Path, state_dict) -> dict:
        save_stage(run_dir / STAGE_EXPORT, self.unet, self.stage_info(), state_dict)
        return {"diffusers": f"{STAGE_EXPORT}/"}

    # --- records -------------------------------------------------------------------------------------------------

    def record(self) -> dict:
        return {
            "base_model": self.base_model,
            "stage": stage_record(self.unet),
            "videogen": {"index": self.index, "latent_size": self.size // 8, "trainable": str(self.cfg.videogen.trainable),
                         "init": str(self.init_dir.resolve()) if self.init_dir else None},
        }

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        """One line naming the setting when the checkpoint is of another base model, stage, resolution, init or
        trainable set (the last changes the optimizer's parameter list, which then could not load)."""
        start_anew = f"videogen.init={weights_dir}" if self.kind == "sr" else "a new run"
        check_same_base(path, recorded.get("base_model"), self.base_model, start_anew)
        here = self.record()
        for section, names in (("videogen", RECORD_KEYS), ("stage", {})):
            for key, value in (recorded.get(section) or {}).items():
                if here[section].get(key) != value:
                    setting = names.get(key, f"the stage's {key}")
                    raise UserInputError(f"trainer.resume={path} was trained with {setting}={value}, this run has "
                                         f"{here[section].get(key)}; pass the checkpoint's settings to resume it")

    def summary(self) -> dict:
        data = self.cfg.data
        return {"data": {"name": data.name, "videos": len(self.videos), "frames": self.frames,
                         "stride": data.get("stride"), "size": self.size},
                "stage": {"index": self.index, "kind": self.kind, "latent_size": self.size // 8,
                          "init": str(self.init_dir) if self.init_dir else None}}


@register
class VideoGenBase(_VideoGenStage):
    name = "videogen_base"
    kind = "base"
    description = ("VideoGen's base stage: reference-guided latent video diffusion (16x16 latents), SD's 2D weights inflated "
                   "(or a trained base stage fine-tuned: videogen.init)")
    example = "data=webvid data.csv=results_2M_train.csv data.video_folder=videos/"


@register
class VideoGenSR(_VideoGenStage):
    name = "videogen_sr"
    kind = "sr"
    description = "VideoGen's super-resolution stage (x2 spatially), initialised from the trained stage below (videogen.init)"
    example = "videogen.init=outputs/train/<date>/<time>_videogen_base data.csv=results_2M_train.csv data.video_folder=videos/"
