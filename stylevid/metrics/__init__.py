"""Video metrics computed the way the papers compute them, offline, on weights the user supplies.

Per video: clipsim, clip_score, prompt_consistency, frame_consistency, style_fidelity (CLIP), style_gram (VGG),
style_csd (CSD), warp_error, temporal_flicker, motion. Per set: fvd (I3D), is (C3D UCF-101).
See `api.py` for the entry points and `config.py` for the options (`metrics.*` config keys).
"""

from stylevid.metrics.api import (
    PER_VIDEO_METRICS,
    SET_METRICS,
    aggregate,
    compute_metrics,
    compute_set_metrics,
    describe_metrics,
)
from stylevid.metrics.config import MetricsConfig

__all__ = [
    "PER_VIDEO_METRICS",
    "SET_METRICS",
    "MetricsConfig",
    "aggregate",
    "compute_metrics",
    "compute_set_metrics",
    "describe_metrics",
]
