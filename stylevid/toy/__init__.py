"""The toy world's trained models, shipped with the package (built by `scripts/build_toy_world.py`).

They are for demonstrations and tests on a CPU: 64x64 pictures of coloured shapes, not general images.
Real work uses Stable-Diffusion-class weights (`model=sd15` or `model.path=`).

Layout of `weights/`:
  pipeline/       a diffusers `StableDiffusionPipeline` directory (VAE, CLIP text tower, tokenizer, UNet, DDIM)
  clip/           a transformers `CLIPModel` + `CLIPProcessor` (the judge for `stylevid evaluate metrics.clip=toy`)
  motion_module/  a diffusers `MotionAdapter` trained with `stylevid train motion_module` on toy videos
  image_prompt/   method=image_prompt's weights (`stylevid train image_prompt`, coarse then fine, on the two above);
                  image_prompt_joint/ the same trained in one joint stage (the paper's ablation)
  videogen/       method=videogen's and method=tsr's parts (base/, sr2/, latent_flow/, tsr_refiner/, video_decoder/,
                  manifest.json; the UNets stored in float16)
  gen1/           method=gen1's weights (unet/, image_encoder/, prior/, depth/: the toy depth annotator, manifest.json)
  manifest.json   per stage: steps, wall time on the build machine, final loss
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserInputError

WEIGHTS = Path(__file__).parent / "weights"
PARTS = {"pipeline": "model_index.json", "clip": "config.json", "motion_module": "config.json"}


def toy_path(part: str, root: Path | None = None) -> Path:
    """The packaged directory of one toy model, or a one-line error saying how to build it."""
    path = (root or WEIGHTS) / part
    if not (path / PARTS[part]).exists():
        raise UserInputError(f"the toy {part} is not built ({path}); run `python scripts/build_toy_world.py --stage all`")
    return path


def manifest(root: Path | None = None) -> dict:
    path = (root or WEIGHTS) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}
