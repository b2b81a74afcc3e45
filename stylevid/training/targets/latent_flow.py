"""`latent_flow`: VideoGen's latent motion flow network (paper Section 3.5, "Flow-based temporal super-resolution").

Unlabelled high-frame-rate clips give triples (I_0, I_t, I_1): a clip of `data.frames=3` frames `data.stride`
source frames apart, so t = 1/2. The frozen SD VAE encodes them (posterior mean, scaled): z_0, z_t, z_1. The
`LatentFlowNet` (`stylevid.models.latent_flow`) predicts z_t from (z_0, z_1, t).

Teacher flow: VideoGen computes "the motion flow in the pixel space using the pretrained IFRNet and resize[s] the
motion flow to the spatial size of the latent representation space". With no IFRNet weights offline, the pixel-space
flow here is OpenCV's DIS (`stylevid.metrics.flow.dis_flow`), the backward flows I_t -> I_0 and I_t -> I_1 that the
warp needs, area-resized to the latent grid and divided by the VAE's downsampling factor (8 for SD). It is computed
in the data step (CPU, numpy, in the loader's workers), from pixels only, so it does not depend on the model.

Loss (IFRNet's reconstruction and flow distillation, in latent space):
    L = ρ(ẑ_t - z_t) + latent_flow.flow_weight x Σ_levels [ρ(F^l_t->0 - F̂_t->0) + ρ(F^l_t->1 - F̂_t->1)]
with ρ the Charbonnier penalty sqrt(x² + ε²) averaged over elements, F^l each decoder level's flows at latent size,
F̂ the teacher's. Left out, and why: IFRNet's census (ternary) term compares local intensity patterns, which is what
makes it robust to lighting in RGB; latent channels are not intensities, so the plain penalty on latents is kept.
Its feature-geometry term needs the in-between frame through the encoder at every step, a third encoding for a
regulariser of the intermediate features that the distilled flows already constrain at every level. IFRNet's
adaptive robust weight (less distillation where the teacher errs) is replaced by the plain Charbonnier penalty.

Weights are a diffusers `LatentFlowNet` directory (`save_pretrained`), in checkpoints and as <run>/latent_flow/.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ... import values
from ...data.sources import check_video_source, clip_dataset
from ...data.videos import collate_clips
from ...errors import UserInputError
from ...metrics.flow import dis_flow
from ...models.latent_flow import LatentFlowNet, load_latent_flow
from ...models.loading import load_pipeline
from ..checkpoint import base_model_record, check_same_base, plain
from . import Step, TrainingTarget, register

CHARBONNIER_EPSILON = 1e-3  # IFRNet's Charbonnier penalty: sqrt(x² + 1e-6)
TEACHER_PRESETS = ("ultrafast", "fast", "medium")  # OpenCV DIS presets (stylevid.metrics.flow)
TRIPLE = 3  # I_0, I_t, I_1


def charbonnier(difference: torch.Tensor) -> torch.Tensor:
    """Mean Charbonnier penalty (a smooth L1), written out: torch has no such loss."""
    return torch.sqrt(difference.float() ** 2 + CHARBONNIER_EPSILON**2).mean()


# --- the teacher flow ----------------------------------------------------------------------------------------------

def pixel_teacher_flows(frames: np.ndarray, preset: str = "medium") -> np.ndarray:
    """(3, H, W, 3) uint8 RGB frames I_0, I_t, I_1 -> (H, W, 4) float32 [F_t->0, F_t->1] in pixels, x first,
    backward: I_t(p) ~ I_0(p + F_t->0(p)) and I_t(p) ~ I_1(p + F_t->1(p))."""
    first, middle, last = frames
    return np.concatenate([dis_flow(middle, first, preset), dis_flow(middle, last, preset)], axis=-1)


def latent_teacher_flows(frames: np.ndarray, latent_height: int, latent_width: int, preset: str = "medium") -> torch.Tensor:
    """The pixel teacher flows on the latent grid, (4, h, w) in latent pixels: area-resized (the mean flow of
    each latent pixel's footprint) and scaled by latent size / pixel size (1/8 for SD's VAE)."""
    flows = pixel_teacher_flows(frames, preset)
    height, width = flows.shape[:2]
    resized = cv2.resize(flows, (latent_width, latent_height), interpolation=cv2.INTER_AREA)
    resized[..., 0::2] *= latent_width / width
    resized[..., 1::2] *= latent_height / height
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) pixels in [-1, 1] (the clip dataset's) back to the uint8 (F, H, W, 3) frames they came from."""
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --- data ------------------------------------------------------------------------------------------------------

class TripleDataset(Dataset):
    """The 3-frame clip dataset's items, plus the latent-size teacher flows (4, h, w) when `latent_size` is given."""

    def __init__(self, clips: Dataset, latent_size: int | None = None, preset: str = "medium"):
        self.clips, self.latent_size, self.preset = clips, latent_size, preset

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.clips[index]
        if self.latent_size is not None:
            item["teacher_flow"] = latent_teacher_flows(uint8_frames(item["pixel_values"]), self.latent_size,
                                                        self.latent_size, self.preset)
        return item


def collate_triples(items: list[dict]) -> dict:
    batch = collate_clips(items)
    if "teacher_flow" in items[0]:
        batch["teacher_flow"] = torch.stack([item["teacher_flow"] for item in items])
    return batch


def check_triples(cfg, target: str) -> None:
    check_video_source(cfg, target)
    if int(cfg.data.frames) != TRIPLE:
        raise UserInputError(f"data.frames must be 3 for target {target} (a sample is the triple I_0, I_t, I_1 at "
                             f"t = 1/2; data.stride sets their spacing), got {cfg.data.frames}")


def data_summary(cfg, items: int, vae_scale: int) -> dict:
    """For result.json; data=toy may give a list of strides."""
    from omegaconf import OmegaConf

    data = cfg.data
    return {"name": data.name, "videos": items, "frames": int(data.frames),
            "stride": OmegaConf.to_container(data.stride) if OmegaConf.is_list(data.stride) else int(data.stride),
            "size": int(data.size), "latent_size": int(data.size) // vae_scale}


@torch.no_grad()
def encode_triples(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, 3, H, W) pixels -> z_0, z_t, z_1, each (B, 4, h, w): the VAE posterior mean, scaled (Section 3.5:
    "feeding the frames of high FPS video into the image encoder")."""
    batch = pixels.shape[0]
    posterior = vae.encode(pixels.flatten(0, 1).to(vae.device, vae.dtype)).latent_dist
    latents = (posterior.mean.float() * vae.config.scaling_factor).unflatten(0, (batch, TRIPLE))
    return latents[:, 0], latents[:, 1], latents[:, 2]


# --- weights -----------------------------------------------------------------------------------------------

def save_from_state_dict(model_cls, config, state_dict: dict, directory: Path) -> None:
    """`save_pretrained` of a `model_cls` holding `state_dict` (the loop's gathered or EMA weights), without touching
    the live module: the copy is built on the meta device, so it costs no memory or initialisation time."""
    with torch.device("meta"):
        copy = model_cls.from_config(config)
    copy.load_state_dict(state_dict, assign=True)
    copy.save_pretrained(str(directory), safe_serialization=True)


@register
class LatentFlow(TrainingTarget):
    name = "latent_flow"
    description = "VideoGen's latent flow net (IFRNet on SD latents) on video triples, OpenCV DIS flow as teacher"
    example = "data=folder data.video_folder=clips_60fps/ data.stride=2 model.path=runwayml/stable-diffusion-v1-5"

    @classmethod
    def check_config(cls, cfg) -> None:
        check_triples(cfg, cls.name)
        settings = cfg.latent_flow
        values.number(settings.flow_weight, "latent_flow.flow_weight", minimum=0)
        if settings.teacher_preset not in TEACHER_PRESETS:
            raise UserInputError(f"latent_flow.teacher_preset must be one of {', '.join(TEACHER_PRESETS)} (OpenCV DIS), "
                                 f"got {settings.teacher_preset!r}")
        widths = settings.block_out_channels
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise UserInputError(f"latent_flow.block_out_channels must be a list of positive widths, one per level, e.g. "
                                 f"[48,72,96]; got {widths}")
        if settings.get("init_path") and not Path(str(settings.init_path)).expanduser().is_dir():
            raise UserInputError(f"latent_flow.init_path={settings.init_path} is not a LatentFlowNet directory")

    def __init__(self, cfg, device, weight_dtype, rank):
        super().__init__(cfg, device, weight_dtype, rank)
        settings = cfg.latent_flow
        self.flow_weight = float(settings.flow_weight)
        clips = clip_dataset(cfg, self.name, captions=False)  # 3-frame clips (check_triples), unlabeled
        init = load_latent_flow(settings.init_path, key="latent_flow.init_path") if settings.get("init_path") else None
        # The frozen SD image encoder (Section 3.5); only its VAE is kept.
        pipe = load_pipeline(cfg.model, torch.float32)
        self.base_model = base_model_record(cfg.model, pipe.unet)
        self.vae = pipe.vae.requires_grad_(False).to(device, weight_dtype).eval()
        self.vae_scale = pipe.vae_scale_factor
        del pipe
        latent_channels = int(self.vae.config.latent_channels)
        if init is not None and init.config.in_channels != latent_channels:
            raise UserInputError(f"latent_flow.init_path takes {init.config.in_channels}-channel latents, "
                                 f"the VAE of model={cfg.model.get('name')} makes {latent_channels}")
        self.net = init or LatentFlowNet(in_channels=latent_channels,
                                         block_out_channels=tuple(int(c) for c in settings.block_out_channels))
        self.triples = TripleDataset(clips, int(cfg.data.size) // self.vae_scale, str(settings.teacher_preset))
        self.net.to(device).train()

    @property
    def model(self):
        return self.net

    def dataset(self):
        return self.triples

    def collate(self, items):
        return collate_triples(items)

    def loss(self, model, batch, at: Step) -> torch.Tensor:
        z0, zt, z1 = encode_triples(self.vae, batch["pixel_values"])
        t = torch.full((z0.shape[0],), 0.5, device=z0.device)  # the middle of three evenly spaced frames
        output = model(z0, z1, t)
        teacher = batch["teacher_flow"].to(z0.device)
        distillation = sum(charbonnier(flows[:, :2] - teacher[:, :2]) + charbonnier(flows[:, 2:] - teacher[:, 2:])
                           for flows in output.level_flows)
        return charbonnier(output.frame - zt) + self.flow_weight * distillation

    # --- weights ----------------------------------------------------------------------------------------------

    def save_weights(self, directory: Path, state_dict) -> None:
        save_from_state_dict(LatentFlowNet, self.net.config, state_dict, directory)

    def load_weights(self, directory: Path) -> None:
        saved = load_latent_flow(directory, key="trainer.resume")
        self.net.load_state_dict(saved.state_dict())

    def export(self, run_dir: Path, state_dict) -> dict:
        save_from_state_dict(LatentFlowNet, self.net.config, state_dict, run_dir / "latent_flow")
        return {"diffusers": "latent_flow/"}

    # --- records ----------------------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"base_model": self.base_model,
                "latent_flow": {"in_channels": int(self.net.config.in_channels),
                                "block_out_channels": plain(list(self.net.config.block_out_channels))}}

    def check_resumable(self, path: str, recorded: dict, weights_dir: Path) -> None:
        check_same_base(path, recorded.get("base_model"), self.base_model, f"latent_flow.init_path={weights_dir}")
        here = self.record()["latent_flow"]
        for key, value in (recorded.get("latent_flow") or {}).items():
            if here.get(key) != value:
                raise UserInputError(f"trainer.resume={path} was trained with latent_flow.{key}={value}, this run has "
                                     f"{here.get(key)}; pass the checkpoint's settings to resume it")

    def summary(self) -> dict:
        return {"data": data_summary(self.cfg, len(self.triples), self.vae_scale),
                "teacher": f"opencv-dis-{self.cfg.latent_flow.teacher_preset}"}
