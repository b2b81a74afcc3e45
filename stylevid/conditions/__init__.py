"""Structure conditions for ControlNet: canny edges, depth and OpenPose skeletons.

  canny.py  OpenCV Canny maps
  depth.py  depth maps from a transformers depth-estimation model, normalised once per clip
  pose.py   OpenPose-style skeleton rendering and keypoint detectors
  maps.py   loading precomputed maps, saving annotator outputs, the `annotate(kind, frames)` dispatcher

Modules are imported on use, so `import stylevid.conditions` stays cheap (no transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Loaded = TypeVar("Loaded")


def load_annotator_weights(
    load: Callable[..., Loaded], path: str, *, what: str, option: str, required_file: str | None = "config.json", **kwargs
) -> Loaded:
    """`load(path, **kwargs)` (a transformers `from_pretrained`) through the shared component loader
    (`stylevid.models.components.load_component`): a local folder, or a hub id, with one-line errors naming
    `option`. `what` names the annotator ("depth annotator"); `required_file` must be in a local folder
    (`preprocessor_config.json` for an image processor)."""
    from stylevid.models.components import load_component

    return load_component(
        path, key=option, what=f"a {what}", pretrained=load, required_file=required_file,
        hint="<local model folder>", **kwargs,
    )
