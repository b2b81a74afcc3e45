"""`tsr_refiner`: VideoGen's refinement diffusion network for temporal super-resolution (paper Sections 3.3, 3.5).

The same triples as `latent_flow` (a clip of `data.frames=3`, t = 1/2), encoded by the frozen SD VAE (posterior
mean, scaled) to z_0, z_t, z_1. The condition is the coarse in-between latent
    c = LatentFlowNet(z_0, z_1, 1/2).frame        (a frozen trained net, `tsr_refiner.flow_path`)
    c = (z_0 + z_1) / 2                           (`tsr_refiner.flow_path=null`: linear interpolation)
("the input representations ... are directly computed from low temporal-resolution video"), and the target is the
true middle latent z_t ("constructed by feeding the frames of high FPS video into the image encoder"). The objective
is the shared one of `conf/diffusion/` (`training.diffusion.DiffusionObjective`):
    L = || target(z_t, ε, τ) - UNet(concat(x_τ, c), τ) ||²,  x_τ = sqrt(ᾱ_τ) z_t + sqrt(1 - ᾱ_τ) ε,
target = ε or v. There is no text (the paper gives the refiner none), so `diffusion.caption_dropout` has no effect.

Weights: a diffusers `UNet2DModel` directory with the DDIM `scheduler_config.json` of the training schedule
(`stylevid.models.tsr_refiner`), in checkpoints and as <run>/tsr_refiner/.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel

from ...data.sources import clip_dataset
from ...errors import UserInputError
from ...models.latent_flow import load_latent_flow
from ...models.loading import load_pipeline
from ...models.tsr_refiner import check_refiner_sizes, load_tsr_refiner, refiner_scheduler, save_tsr_refiner, tsr_refiner_unet
from ...sampling.tsr import in_between
from ..checkpoint import base_model_record, check_same_base, plain
from ..diffusion import DiffusionObjective
from . import Step, TrainingTarget, register
from .latent_flow import TripleDataset, check_triples, collate_triples, data_summary, encode_triples

# UNet2DModel config keys whose values change what the same-named weights compute or whether they load
REFINER_ESSENTIALS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "norm_num_groups",
                      "attention_head_dim", "down_block_types", "up_block_types", "add_attention")


def refiner_record(config) -> dict:
    return {key: plain(config.get(key)) for key in REFINER_ESSENTIALS}


def coarse_source(cfg) -> str:
    """What makes the condition: the flow net's resolved directory, or `linear`."""
    path = cfg.tsr_refiner.get("flow_path")
    if not path:
        return "linear"
    local = Path(str(path)).expanduser()
    return str(local.resolve()) if local.exists() else str(path)


@register
class TsrRefiner(TrainingTarget):
    name = "tsr_refiner"
    description = "VideoGen's temporal-SR refiner: a UNet2DModel denoising the middle latent of a triple given the coarse one"
    example = "data.video_folder=clips_60fps/ tsr_refiner.flow_path=outputs/train/.../latent_flow"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_triples(cfg, cls.name)
        settings = cfg.tsr_refiner
        for key in ("flow_path", "init_path"):
            path = settings.get(key)
            if path and not Path(str(path)).expanduser().is_dir():
                raise UserInputError(f"tsr_refiner.{key}={path} is not a directory "
                                     f"({'a LatentFlowNet, e.g. <run>/latent_flow' if key == 'flow_path' else 'a tsr_refiner, e.g. <run>/tsr_refiner'})")
        widths = settings.block_out_channels
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise UserInputError(f"tsr_refiner.block_out_channels must be a list of positive widths, got {widths}")
        attention = settings.attention
        if attention is not None and not all(isinstance(a, bool) for a in attention):
            raise UserInputError(f"tsr_refiner.attention must be a list of true/false, one per level, got {attention}")
        for key in ("layers_per_block", "norm_num_groups", "attention_head_dim"):
            value = settings.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"tsr_refiner.{key} must be a positive integer, got {value!r}")
        if not settings.get("init_path"):  # what the UNet will be built with, before the base model loads
            check_refiner_sizes(widths, settings.norm_num_groups, settings.attention_head_dim, attention)

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        settings = cfg.tsr_refiner
        self.objective = DiffusionObjective.from_config(cfg.diffusion)  # checked before anything slow loads
        clips = clip_dataset(cfg, self.name, captions=False)  # 3-frame clips (check_triples), unlabeled
        self.flow_net = None
        if settings.get("flow_path"):
            self.flow_net = load_latent_flow(settings.flow_path, key="tsr_refiner.flow_path")
            self.flow_net.requires_grad_(False).eval().to(device)
        pipe = load_pipeline(cfg.model, torch.float32)
        self.base_model = base_model_record(cfg.model, pipe.unet)
        self.vae = pipe.vae.requires_grad_(False).to(device, weight_dtype).eval()
        self.vae_scale = pipe.vae_scale_factor
        latent_channels = int(self.vae.config.latent_channels)
        del pipe
        if settings.get("init_path"):
            self.unet, _ = load_tsr_refiner(settings.init_path, key="tsr_refiner.init_path")
        else:
            self.unet = tsr_refiner_unet(
                tuple(int(c) for c in settings.block_out_channels), layers_per_block=int(settings.layers_per_block),
                norm_num_groups=int(settings.norm_num_groups), attention_head_dim=int(settings.attention_head_dim),
                attention=None if settings.attention is None else tuple(bool(a) for a in settings.attention),
                latent_channels=latent_channels, sample_size=int(cfg.data.size) // self.vae_scale,
            )
        if self.unet.config.out_channels != latent_channels:
            raise UserInputError(f"tsr_refiner.init_path makes {self.unet.config.out_channels}-channel latents, the VAE of "
                                 f"model={cfg.model.get('name')} {latent_channels}")
        if self.flow_net is not None and self.flow_net.config.in_channels != latent_channels:
            raise UserInputError(f"tsr_refiner.flow_path takes {self.flow_net.config.in_channels}-channel latents, the VAE "
                                 f"of model={cfg.model.get('name')} makes {latent_channels}")
        self.unet.to(device).train()
        self.triples = TripleDataset(clips)  # no teacher flows: the condition comes from the frozen net

    @property
    def model(self):
        return self.unet

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def dataset(self):
        return self.triples

    def collate(self, items):
        return collate_triples(items)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        objective, generator = self.objective, at.generator
        z0, zt, z1 = encode_triples(self.vae, batch["pixel_values"])
        with torch.no_grad():
            coarse = in_between(z0, z1, mode="flow" if self.flow_net is not None else "linear", flow_net=self.flow_net, t=0.5)
            noise = objective.noise(zt, generator)
            timesteps = objective.timesteps(zt.shape[0], generator)
            noisy = objective.add_noise(zt, noise, timesteps)
        prediction = model(torch.cat([noisy, coarse], dim=1), timesteps.to(zt.device)).sample
        return objective.loss(prediction, zt, noise, timesteps)

    # --- weights ----------------------------------------------------------------------------------------------

    def write(self, directory: Path, state_dict) -> None:
        """The UNet holding `state_dict` (built on the meta device: the live module is not touched) and the DDIM
        sampler of the training schedule, in one directory."""
        with torch.device("meta"):
            copy = UNet2DModel.from_config(self.unet.config)
        copy.load_state_dict(state_dict, assign=True)
        save_tsr_refiner(directory, copy, refiner_scheduler(self.objective.scheduler))

    def save_weights(self, directory: Path, state_dict) -> None:
        self.write(directory, state_dict)

    def load_weights(self, directory: Path) -> None:
        saved, _ = load_tsr_refiner(directory, key="trainer.resume")
        self.unet.load_state_dict(saved.state_dict())

    def export(self, run_dir: Path, state_dict) -> dict:
        self.write(run_dir / "tsr_refiner", state_dict)
        return {"diffusers": "tsr_refiner/"}

    # --- records ----------------------------------------------------------------------------------------------

    def record(self) -> dict:
        scheduler = self.objective.scheduler.config
        return {"base_model": self.base_model, "refiner": refiner_record(self.unet.config),
                "coarse": coarse_source(self.cfg),
                "diffusion": {"beta_schedule": scheduler.beta_schedule, "beta_start": scheduler.beta_start,
                              "beta_end": scheduler.beta_end, "prediction": scheduler.prediction_type}}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        check_same_base(path, recorded.get("base_model"), self.base_model, f"tsr_refiner.init_path={weights_dir}")
        here = self.record()
        for key, value in (recorded.get("refiner") or {}).items():
            if here["refiner"].get(key) != value:
                raise UserInputError(f"trainer.resume={path} was trained with a refiner of {key}={value}, this run's has "
                                     f"{here['refiner'].get(key)}; pass the checkpoint's tsr_refiner.* settings to resume it")
        if recorded.get("coarse") is not None and recorded["coarse"] != here["coarse"]:
            raise UserInputError(f"trainer.resume={path} was trained on coarse latents from {recorded['coarse']}, this run "
                                 f"uses {here['coarse']}; pass tsr_refiner.flow_path= as it was")
        if recorded.get("diffusion") is not None and recorded["diffusion"] != here["diffusion"]:
            raise UserInputError(f"trainer.resume={path} was trained with the noise schedule {recorded['diffusion']}, this "
                                 f"run has {here['diffusion']}; pass diffusion= as it was")

    def summary(self) -> dict:
        return {"data": data_summary(self.cfg, len(self.triples), self.vae_scale), "coarse": coarse_source(self.cfg)}
