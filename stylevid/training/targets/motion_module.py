"""`motion_module`: AnimateDiff's motion module (paper Section 3.3.3, setup of Section 4.1.1).

Video clips z^0_{1:N} are encoded frame by frame by the frozen VAE, noised by the forward process of
`conf/diffusion/` (schedule B by default), and the image UNet inflated with the motion module predicts ε from z^t,
the caption embedding (the empty caption with probability `diffusion.caption_dropout`) and t:
L = E ||ε - ε_θ(z^t, c, t)||². The VAE, text encoder and image UNet stay frozen; only motion parameters train.
Weights are saved as a diffusers `MotionAdapter` directory and exported also as an original AnimateDiff file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import MotionAdapter

from ...data.sources import clip_dataset
from ...data.videos import collate_clips
from ...errors import UserInputError
from ...models.loading import load_pipeline
from ...models.motion_module import (
    adapter_from_unet,
    check_fits,
    export_original,
    inflate,
    load_motion_adapter,
    motion_adapter_for_unet,
    motion_parameters,
    save_motion_adapter,
)
from ...progress import StageReporter
from ..checkpoint import base_model_record, check_same_base, plain
from ..diffusion import SCHEDULES, DiffusionObjective, caption_ids
from . import Step, TrainingTarget, register

# MotionAdapter config key -> the train key that sets it (heads and window change what the same-shaped weights compute)
MOTION_ESSENTIALS = {
    "motion_num_attention_heads": "motion.num_attention_heads",
    "motion_max_seq_length": "motion.max_seq_length",
    "motion_transformer_layers_per_block": "motion.transformer_layers_per_block",
    "motion_transformer_layers_per_mid_block": "motion.transformer_layers_per_block",
    "motion_layers_per_block": "the base model's layers_per_block",
    "motion_norm_num_groups": "the base model's norm_num_groups",
    "block_out_channels": "the base model's block_out_channels",
    "use_motion_mid_block": "the motion module's mid block",
}


def motion_record(adapter_config) -> dict:
    return {key: plain(adapter_config.get(key)) for key in MOTION_ESSENTIALS}


class _StateDict:
    """A state dict posing as a module for `adapter_from_unet` (the gathered weights under FSDP)."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


@register
class MotionModule(TrainingTarget):
    name = "motion_module"
    description = "AnimateDiff's motion module on text-video clips (webvid CSV or a folder), image model frozen"
    example = "data=webvid data.csv=results_2M_train.csv data.video_folder=videos/"

    @classmethod
    def check_config(cls, cfg) -> None:
        if not cfg.motion.get("init_path") and int(cfg.data.frames) > int(cfg.motion.max_seq_length):
            raise UserInputError(f"data.frames={cfg.data.frames} exceeds motion.max_seq_length={cfg.motion.max_seq_length}")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        self.objective = DiffusionObjective.from_config(cfg.diffusion)  # checked before anything slow loads
        self.videos = clip_dataset(cfg, self.name)
        motion = cfg.motion
        if motion.get("init_path"):  # before the base model: a bad file is refused without waiting for it
            self.adapter_template = load_motion_adapter(
                str(motion.init_path), allow_pickle=bool(motion.get("allow_pickle", False)),
                num_attention_heads=int(motion.num_attention_heads), key="motion.init_path",
            )
        # Frozen parts (Section 3.3.3): VAE, text encoder, image UNet.
        self.pipe = pipe = load_pipeline(cfg.model, torch.float32)
        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.base_model = base_model_record(cfg.model, pipe.unet)
        if not motion.get("init_path"):
            self.adapter_template = motion_adapter_for_unet(
                pipe.unet, num_attention_heads=int(motion.num_attention_heads), max_seq_length=int(motion.max_seq_length),
                transformer_layers_per_block=int(motion.transformer_layers_per_block), seed=int(cfg.seed),
            )
        if int(cfg.data.frames) > self.adapter_template.config.motion_max_seq_length:
            raise UserInputError(f"data.frames={self.videos.spec.frames} exceeds motion.max_seq_length")
        self.unet = inflate(pipe.unet, self.adapter_template)
        self.unet.freeze_unet2d_params()
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.to(device, weight_dtype)
        self.unet.to(device)
        for parameter in self.unet.parameters():
            if not parameter.requires_grad:  # frozen image weights at the low precision, motion weights stay fp32
                parameter.data = parameter.data.to(weight_dtype)

    @property
    def model(self):
        return self.unet

    def trainable_parameters(self):
        return [p for _, p in motion_parameters(self.unet)]

    def enable_gradient_checkpointing(self) -> None:
        # stylevid's: it reaches the motion modules (what trains) and whole spatial transformers, which diffusers'
        # own switch leaves out (benchmark: 61-65 % lower peak on a 16-frame 256-px clip against diffusers' 21 %)
        from ...models.checkpointing import enable_gradient_checkpointing

        enable_gradient_checkpointing(self.unet)

    # --- data and loss ----------------------------------------------------------------------------------------

    def dataset(self):
        return self.videos

    def collate(self, items):
        return collate_clips(items)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return caption_ids(self.tokenizer, captions)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        objective, generator = self.objective, at.generator
        pixels = batch["pixel_values"].to(self.device)  # (B, F, 3, H, W)
        batch_size, frames = pixels.shape[:2]
        with torch.no_grad():
            posterior = self.vae.encode(pixels.flatten(0, 1).to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float() * self.vae.config.scaling_factor
            latents = latents.unflatten(0, (batch_size, frames)).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
            noise = objective.noise(latents, generator)
            timesteps = objective.timesteps(batch_size, generator)
            captions = objective.drop_captions(list(batch["captions"]), generator)
            text = self.text_encoder(self.tokenize(captions).to(self.device))[0]
            text = text.repeat_interleave(frames, dim=0)  # one caption embedding per frame (image layers)
            noisy = objective.add_noise(latents, noise, timesteps)
        prediction = model(noisy, timesteps.to(self.device), encoder_hidden_states=text).sample
        return objective.loss(prediction, latents, noise, timesteps)

    # --- weights ----------------------------------------------------------------------------------------------

    def adapter(self, state_dict) -> MotionAdapter:
        return adapter_from_unet(_StateDict(state_dict), self.adapter_template)

    def save_weights(self, directory: Path, state_dict) -> None:
        self.adapter(state_dict).save_pretrained(str(directory), safe_serialization=True)

    def load_weights(self, directory: Path) -> None:
        adapter = load_motion_adapter(str(directory), key="trainer.resume")
        check_fits(self.pipe.unet, adapter)  # a checkpoint from before the base-model record
        self.unet.load_motion_modules(adapter.to(self.device))

    def export(self, run_dir: Path, state_dict) -> dict:
        adapter = self.adapter(state_dict)
        save_motion_adapter(adapter, run_dir / "motion_module")
        export_original(adapter, run_dir / "motion_module.safetensors")
        return {"diffusers": "motion_module/", "original": "motion_module.safetensors"}

    # --- records ----------------------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"base_model": self.base_model, "motion": motion_record(self.adapter_template.config)}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        """One line when the checkpoint was trained on another base model or with other motion settings."""
        check_same_base(path, recorded.get("base_model"), self.base_model, f"motion.init_path={weights_dir}")
        motion = recorded.get("motion")
        if motion is None:  # a checkpoint from before the record: its module's own config says the same
            try:
                motion = motion_record(json.loads((weights_dir / "config.json").read_text()))
            except (OSError, ValueError):
                raise UserInputError(f"trainer.resume={path}: {weights_dir / 'config.json'} is missing or not JSON") from None
        wanted = motion_record(self.adapter_template.config)
        for key, setting in MOTION_ESSENTIALS.items():
            if motion.get(key) != wanted[key]:
                raise UserInputError(
                    f"trainer.resume={path} was trained with {setting}={motion.get(key)} ({key}), this run has {wanted[key]}; "
                    "pass the checkpoint's settings to resume it"
                )

    def summary(self) -> dict:
        data = self.cfg.data
        return {"data": {"name": data.name, "videos": len(self.videos), "frames": int(data.frames),
                         "stride": int(data.stride), "size": int(data.size)}}

    # --- validation -------------------------------------------------------------------------------------------

    def validate(self, run_dir: Path, step: int) -> None:
        """Validation videos sampled with the trainer's own inflated UNet (EMA weights when on), on its device.

        Not a fresh inflation of `pipe.unet`: that image UNet never leaves the CPU, and a second UNet would
        cost memory. The loop runs this under autocast: frozen weights may be bf16/fp16 beside fp32 motion weights.
        """
        from ...io.video import write_video
        from ...methods import animatediff

        validation, size = self.cfg.validation, int(self.cfg.data.size)
        folder = run_dir / "validation"
        folder.mkdir(exist_ok=True)
        for index, prompt in enumerate(validation.prompts):
            settings = animatediff.AnimateDiffSettings(
                prompt=str(prompt), frames=int(self.cfg.data.frames), height=size, width=size,
                steps=int(validation.steps), guidance_scale=float(validation.guidance_scale), seed=int(self.cfg.seed),
                beta_schedule=SCHEDULES[str(self.cfg.diffusion.schedule)]["beta_schedule"],
            )
            output = animatediff.generate(self.pipe, None, settings, StageReporter(), video_unet=self.unet)
            write_video(folder / f"step_{step:07d}_{index}.mp4", output.frames, fps=float(validation.fps))
