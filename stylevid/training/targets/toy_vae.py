"""`toy_vae`: the toy world's VAE (diffusers `AutoencoderKL`, SD geometry) on fresh toy frames.

Loss: pixel MSE + `toy.kl_weight` x KL towards N(0, I) (no perceptual or GAN loss). Exported in diffusers format
with `scaling_factor` set to 1/std of the latents of `toy.calibration_frames` fresh frames, as SD's 0.18215 was.

`toy.trainable=decoder` with `toy.init_path=<a VAE directory>` fine-tunes only the decoder (and post_quant_conv) of
a trained VAE, the encoder frozen: every latent stays what it was, so the models trained on those latents stay
valid and only their pictures change (as SD's fine-tuned decoders, ft-MSE/EMA, keep SD's encoder). The init's
scaling_factor is kept. The toy Gen-1 decodes with such a decoder (scripts/build_toy_world.py, stage gen1_vae).

Batches: rank 0's first micro-batch of step s is `frame_batch(batch_size, seed, s)`, the latent sample draws from
one stream that continues from the VAE's seeded initialisation (torch's global RNG after it, what the toy world's
shipped weights were trained with; its state travels with every checkpoint, so a resume repeats it); every other
(micro-batch, rank) draws its own frames and the loop's generator.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import UserInputError
from .. import toy
from ..checkpoint import plain
from . import Step, TrainingTarget, register

STREAM_FILE = "latent_rng_state.pt"
TRAINABLE = ("all", "decoder")


@register
class ToyVae(TrainingTarget):
    name = "toy_vae"
    description = "the toy world's VAE (AutoencoderKL) on fresh toy frames: pixel MSE + a small KL term"
    example = "trainer.max_steps=2000 output_dir=build/toy/vae_run"

    @classmethod
    def check_config(cls, cfg) -> None:
        if float(cfg.toy.kl_weight) < 0:
            raise UserInputError(f"toy.kl_weight must be >= 0, got {cfg.toy.kl_weight}")
        if int(cfg.toy.calibration_frames) < 2:
            raise UserInputError(f"toy.calibration_frames must be at least 2, got {cfg.toy.calibration_frames}")
        trainable, init = cfg.toy.get("trainable", "all"), cfg.toy.get("init_path")
        if trainable not in TRAINABLE:
            raise UserInputError(f"toy.trainable must be one of {', '.join(TRAINABLE)}; got {trainable!r}")
        if trainable == "decoder" and not init:
            raise UserInputError("toy.trainable=decoder fine-tunes a trained VAE's decoder: pass toy.init_path=<a VAE directory>")
        if init and not (Path(str(init)).expanduser() / "config.json").is_file():
            raise UserInputError(f"toy.init_path={init} is not a diffusers VAE directory (no config.json)")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        self.vae = toy.toy_vae().train()  # seeded by the factory
        self.stream = torch.Generator()
        self.stream.set_state(torch.get_rng_state())
        self.trainable, self.init_path = cfg.toy.get("trainable", "all"), cfg.toy.get("init_path")
        if self.init_path:  # the fresh VAE above is still built: the latent stream starts from its seeded RNG state
            from diffusers import AutoencoderKL

            from ...models.components import load_component

            trained = load_component(str(Path(str(self.init_path)).expanduser()), key="toy.init_path",
                                     pretrained=AutoencoderKL.from_pretrained, what="a diffusers VAE")
            if plain(trained.config.block_out_channels) != plain(self.vae.config.block_out_channels):
                raise UserInputError(f"toy.init_path={self.init_path} is not a toy-geometry VAE "
                                     f"(block_out_channels {list(trained.config.block_out_channels)})")
            self.vae = trained.train()
        if self.trainable == "decoder":  # the latents stay the init's: only the way back to pixels trains
            for module in (self.vae.encoder, self.vae.quant_conv):
                module.requires_grad_(False)
        self.objective = toy.VaeObjective(self.vae, float(cfg.toy.kl_weight)).to(device)
        self.calibration: dict = {}

    @property
    def model(self):
        return self.objective

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def batch(self, at: Step):
        pixels, _, _ = toy.frame_batch(int(self.cfg.trainer.batch_size), int(self.cfg.seed), at.step, at.micro, at.rank)
        return pixels

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        generator = self.stream if at.micro == 0 and at.rank == 0 else at.generator
        return model(batch.to(self.device), generator)

    # --- weights ------------------------------------------------------------------------------------------

    @staticmethod
    def vae_weights(state_dict) -> dict:
        return {key.removeprefix("vae."): value for key, value in state_dict.items()}

    def save_weights(self, directory: Path, state_dict) -> None:
        toy.save_state(directory, self.vae_weights(state_dict), dict(self.vae.config))
        torch.save(self.stream.get_state(), directory / STREAM_FILE)

    def load_weights(self, directory: Path) -> None:
        toy.load_state(self.vae, directory)
        if (directory / STREAM_FILE).exists():
            self.stream.set_state(torch.load(directory / STREAM_FILE, weights_only=True))

    def export(self, run_dir: Path, state_dict) -> dict:
        self.vae.load_state_dict(self.vae_weights(state_dict))
        self.vae.to("cpu")
        # A fine-tuned decoder keeps the init's scaling_factor: its latents are the init's.
        self.calibration = toy.calibrate_vae(self.vae, int(self.cfg.toy.calibration_frames), int(self.cfg.seed) + 1,
                                             set_scale=self.trainable == "all")
        self.vae.save_pretrained(str(run_dir / "vae"), safe_serialization=True)
        return {"diffusers": "vae/"}

    def record(self) -> dict:
        return {"kl_weight": float(self.cfg.toy.kl_weight), "trainable": self.trainable,
                "init_path": str(self.init_path) if self.init_path else None}

    def summary(self) -> dict:
        return dict(self.calibration)
