"""`toy_t2i`: the toy world's text-to-image UNet (diffusers `UNet2DConditionModel`) on a frozen VAE + CLIP text tower.

Loss: the shared diffusion objective of `conf/diffusion/animatediff.yaml` (ε-prediction MSE under DDPM's forward
process with schedule B, the linear 0.00085-0.012 betas the toy pipeline also samples with), conditioned on the frozen
CLIP text tower's last hidden states, captions dropped to "" with probability `diffusion.caption_dropout`
(classifier-free guidance). Two warm-restarted cycles
(`trainer.cycles=2`): after one, half of the samples had the prompt's colour (orange came out red, yellow orange).
Inputs: `toy.vae` (a diffusers AutoencoderKL directory) and `toy.clip` (a CLIPModel + tokenizer directory), by
default the packaged toy weights. Exported as a full Stable Diffusion pipeline, `<run>/pipeline`.

Rank 0's first micro-batch of step s draws `frame_batch(batch_size, seed, s)` and its latents, caption dropout,
noise and timesteps from `torch.Generator().manual_seed(seed * 1_000_003 + s)` (what the shipped UNet was trained
with); every other (micro-batch, rank) draws its own frames and the loop's generator.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserInputError
from ...toy import WEIGHTS
from .. import toy
from ..diffusion import DiffusionObjective
from . import Step, TrainingTarget, register


def input_dirs(cfg) -> tuple[Path, Path]:
    vae = Path(str(cfg.toy.vae)) if cfg.toy.get("vae") else WEIGHTS / "pipeline" / "vae"
    clip = Path(str(cfg.toy.clip)) if cfg.toy.get("clip") else WEIGHTS / "clip"
    return vae, clip


@register
class ToyT2i(TrainingTarget):
    name = "toy_t2i"
    description = "the toy world's text-to-image UNet on a frozen toy VAE and CLIP text tower; exports a full SD pipeline"
    example = "toy.vae=build/vae_run/vae toy.clip=build/clip_run/clip output_dir=build/toy/unet_run"

    @classmethod
    def check_config(cls, cfg) -> None:
        vae, clip = input_dirs(cfg)
        if not (vae / "config.json").exists():
            raise UserInputError(f"toy.vae={vae} is not a diffusers AutoencoderKL directory (no config.json)")
        if not (clip / "config.json").exists():
            raise UserInputError(f"toy.clip={clip} is not a CLIPModel directory (no config.json)")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        from diffusers import AutoencoderKL
        from transformers import CLIPModel, CLIPTokenizer

        from ...models.components import load_component

        vae_dir, clip_dir = input_dirs(cfg)
        self.vae_dir, self.clip_dir = vae_dir, clip_dir
        self.vae = load_component(vae_dir, key="toy.vae", pretrained=AutoencoderKL.from_pretrained, what="an AutoencoderKL")
        self.tokenizer = load_component(clip_dir, key="toy.clip", pretrained=CLIPTokenizer.from_pretrained,
                                        required_file="tokenizer_config.json", what="a CLIP tokenizer")
        clip = load_component(clip_dir, key="toy.clip", pretrained=CLIPModel.from_pretrained, what="a CLIPModel")
        self.text_encoder = toy.text_encoder_from_clip(clip)
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval().to(device, weight_dtype)
        self.unet = toy.toy_unet().train().to(device)  # seeded by the factory
        self.objective = DiffusionObjective.from_config(cfg.diffusion)
        self.empty = toy.tokenize(self.tokenizer, [""])[0]

    @property
    def model(self):
        return self.unet

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def batch(self, at: Step):
        pixels, captions, _ = toy.frame_batch(int(self.cfg.trainer.batch_size), int(self.cfg.seed), at.step, at.micro, at.rank)
        return {"pixels": pixels, "captions": captions}

    def generator(self, at: Step) -> torch.Generator:
        if at.micro == 0 and at.rank == 0:
            return torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + at.step)
        return at.generator

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        objective, generator, pixels = self.objective, self.generator(at), batch["pixels"]
        batch_size = pixels.shape[0]
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
            # drawn on the CPU generator: the same numbers on any device
            sample = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
            latents = sample.float() * self.vae.config.scaling_factor
            input_ids = toy.tokenize(self.tokenizer, list(batch["captions"]))[0]
            input_ids[objective.dropped(batch_size, generator)] = self.empty
            text = self.text_encoder(input_ids.to(self.device))[0].float()
            noise = objective.noise(latents, generator)
            timesteps = objective.timesteps(batch_size, generator)
            noisy = objective.add_noise(latents, noise, timesteps)
        prediction = model(noisy, timesteps.to(self.device), encoder_hidden_states=text).sample
        return objective.loss(prediction, latents, noise, timesteps)

    # --- weights ------------------------------------------------------------------------------------------

    def save_weights(self, directory: Path, state_dict) -> None:
        toy.save_state(directory, state_dict, dict(self.unet.config))

    def load_weights(self, directory: Path) -> None:
        toy.load_state(self.unet, directory)

    def export(self, run_dir: Path, state_dict) -> dict:
        self.unet.load_state_dict(state_dict)
        parts = [module.to("cpu", torch.float32).eval() for module in (self.vae, self.text_encoder, self.unet)]
        toy.save_pipeline(run_dir / "pipeline", parts[0], parts[1], self.tokenizer, parts[2])
        return {"diffusers": "pipeline/"}

    def record(self) -> dict:
        return {"vae": str(self.vae_dir.resolve()), "clip": str(self.clip_dir.resolve()),
                "caption_dropout": float(self.cfg.diffusion.caption_dropout)}

    def summary(self) -> dict:
        return {"inputs": {"vae": str(self.vae_dir), "clip": str(self.clip_dir)}}
