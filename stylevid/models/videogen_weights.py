"""Where VideoGen's trained parts live and how they load (method=videogen, method=tsr).

A VideoGen weights directory (`method.weights=`) holds one diffusers `save_pretrained` directory per part and a
small `manifest.json`:

  base/           the base stage: a `VideoUNet` (stylevid train videogen_base)
  sr2/ (sr4/ ...) each x2 spatial super-resolution stage (stylevid train videogen_sr)
  latent_flow/    the latent flow network of temporal super-resolution (stylevid train latent_flow)
  tsr_refiner/    its refinement diffusion network (stylevid train tsr_refiner)
  video_decoder/  the video decoder (stylevid train video_decoder)
  manifest.json   {"format": "stylevid-videogen", "fps": <the cascade's training frame rate>, "frames": <its clip length>,
                   "schedule": <its noise schedule (A, B, C)>, "prediction": <epsilon | v_prediction>, "parts": {...}}

A part directory may also be a training run (its export sits one level down, e.g. `runs/base/videogen_stage/`), so
`method.weights=` can point at a folder of runs. Every part can be named on its own instead (`method.stages[i].path`,
`method.tsr.flow_path`, `method.tsr.refiner_path`, `method.decoder_path`), and only the parts a run uses are loaded.
With `model=toy` the packaged toy VideoGen is the default; with `model=tiny` the parts are random tiny models built
in memory (tests and offline smoke runs), seeded by `model.seed`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserInputError

MANIFEST = "manifest.json"
FORMAT = "stylevid-videogen"
DEFAULT_FPS = 8.0
DEFAULT_FRAMES = 8
# A part's export directory inside a training run (what each target's `export` writes).
RUN_EXPORTS = {"latent_flow": "latent_flow", "tsr_refiner": "tsr_refiner", "video_decoder": "video_decoder"}
STAGE_EXPORT = "videogen_stage"


def weights_root(cfg) -> Path | None:
    """The weights directory a run reads (None: tiny parts built in memory)."""
    from .components import method_weights_root

    return method_weights_root(cfg, "videogen", MANIFEST, "base/, sr2/, latent_flow/, tsr_refiner/, video_decoder/, "
                               "manifest.json: README, \"Training VideoGen\"")


def manifest(root: Path | None) -> dict:
    if root is None or not (root / MANIFEST).exists():
        return {}
    try:
        data = json.loads((root / MANIFEST).read_text())
    except ValueError:
        raise UserInputError(f"method.weights={root}: {MANIFEST} is not JSON") from None
    if data.get("format") != FORMAT:
        raise UserInputError(f"method.weights={root}: {MANIFEST} is not a VideoGen manifest (format {data.get('format')!r})")
    return data


def training_fps(root: Path | None) -> float:
    return float(manifest(root).get("fps", DEFAULT_FPS))


def part_source(root: Path | None, part: str, own: str | None, key: str) -> str | None:
    """What to load for `part`: the user's own setting `key` when given, else `<root>/<part>` (or the export inside
    a run directory there). None means: build the tiny part (model=tiny without weights)."""
    if own:
        return str(own)
    if root is None:
        return None
    listed = manifest(root).get("parts", {}).get(part, part)
    folder = root / listed
    for candidate in (folder, folder / RUN_EXPORTS.get(part, STAGE_EXPORT)):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise UserInputError(f"method.weights={root} has no {part} (looked for {folder}/config.json); train it or pass {key}=")


def load_stage(source: str | None, stage: str, key: str, seed: int = 0):
    """A cascade stage (`VideoUNet` + stage.json); None: a tiny random one inflated from the tiny image UNet."""
    from . import videogen

    if source is None:
        from .tiny import tiny_unet

        return videogen.build_stage(tiny_unet(seed), stage=stage, max_frames=64).eval()
    return videogen.load_stage(source, key).eval()


def load_flow_net(source: str | None, key: str, seed: int = 0):
    from .latent_flow import TINY_LATENT_FLOW, LatentFlowNet, load_latent_flow

    if source is None:
        torch.manual_seed(seed)
        return LatentFlowNet(**TINY_LATENT_FLOW).eval()
    return load_latent_flow(source, key).eval()


def load_refiner(source: str | None, key: str, seed: int = 0):
    """(refiner UNet, the DDIM sampler of the schedule it trained with); None: a tiny random one on SD's schedule."""
    from .tsr_refiner import TINY_REFINER, load_tsr_refiner, refiner_scheduler, tsr_refiner_unet

    if source is None:
        from ..training.diffusion import noise_schedule

        torch.manual_seed(seed)
        return tsr_refiner_unet(**TINY_REFINER).eval(), refiner_scheduler(noise_schedule("A"))
    unet, scheduler = load_tsr_refiner(source, key)
    return unet.eval(), scheduler


def load_video_decoder(source: str | None, vae, key: str):
    """The video decoder; None: one inflated from `vae` (identity temporal layers: exactly the image decoder)."""
    from .video_decoder import VideoDecoder

    if source is None:
        return VideoDecoder.from_vae(vae).eval()
    from .components import load_component

    return load_component(source, key=key, pretrained=VideoDecoder.from_pretrained, what="a VideoDecoder directory").eval()

