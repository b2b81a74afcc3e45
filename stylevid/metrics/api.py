"""The entry points the CLI calls: per-video metrics, set-level metrics, aggregation, provenance.

    compute_metrics(frames, prompt, style_image, ["clipsim"], config)  -> {"clipsim": 0.31}
    compute_set_metrics(videos, ["fvd", "is"], config, real_videos=...)  -> {"fvd", "fvd_num_generated", "fvd_num_real",
                                                                             "is", "is_std", "is_num_videos"}
    aggregate([per_video_dict, ...])                                     -> {"clipsim": {"mean", "std", "n"}}
    describe_metrics(names, config)                                      -> model ids, clamp policy, direction
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stylevid.errors import UserInputError
from stylevid.metrics import clip as clip_metrics
from stylevid.metrics import flow as flow_metrics
from stylevid.metrics import style as style_metrics
from stylevid.metrics.common import check_image, check_video
from stylevid.metrics.config import MetricsConfig

# name -> (higher is better, one-line definition). The definitions are what describe_metrics records.
PER_VIDEO_METRICS: dict[str, tuple[bool, str]] = {
    "clipsim": (True, "mean over frames of cos(CLIP image, CLIP text)"),
    "clip_score": (True, "100 x cos(CLIP image, CLIP text), clamped at 0 (torchmetrics CLIPScore)"),
    "prompt_consistency": (True, "Gen-1: mean over frames of cos(CLIP image, CLIP text of the edit prompt)"),
    "frame_consistency": (True, "Gen-1: mean cos of CLIP image embeddings of consecutive frames"),
    "style_fidelity": (True, "mean over frames of cos(CLIP image, CLIP image of the style image)"),
    "image_fidelity": (True, "image prompts: mean over frames of cos(CLIP image, CLIP image of the image prompt, "
                             "masked to its subject when a mask is given)"),
    "style_gram": (False, "mean over frames of sum over VGG-19 layers of ||Gram(frame) - Gram(style)||_F^2"),
    "style_csd": (True, "mean over frames of cos(CSD style embedding, CSD style embedding of the style image)"),
    "warp_error": (False, "masked MSE in [0,1] between frame t and DIS-flow-warped frame t+1, occlusions masked"),
    "temporal_flicker": (False, "mean |frame t+1 - frame t| in [0,1]"),
    "motion": (None, "mean DIS flow magnitude in pixels"),
}
SET_METRICS: dict[str, tuple[bool, str]] = {
    "fvd": (False, "Frechet distance of I3D features, generated vs real set"),
    "is": (True, "exp(E KL(p(y|x) || p(y))) of C3D UCF-101 predictions, mean over splits"),
}
_NEEDS_PROMPT = {"clipsim", "clip_score", "prompt_consistency"}
_NEEDS_STYLE = {"style_fidelity", "style_gram", "style_csd"}
_NEEDS_IMAGE_PROMPT = {"image_fidelity"}
_USES_CLIP = {"clipsim", "clip_score", "prompt_consistency", "frame_consistency", "style_fidelity", "image_fidelity"}
_USES_FLOW = {"warp_error", "motion"}


def _check_names(metrics: Sequence[str], allowed: Mapping[str, Any], kind: str) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    names = [str(m) for m in metrics]
    if not names:
        raise UserInputError(f"no {kind} metrics requested")
    for name in names:
        if name not in allowed:
            hint = ""
            if name in SET_METRICS and allowed is PER_VIDEO_METRICS:
                hint = " (a set-level metric, computed over a list of videos)"
            elif name in PER_VIDEO_METRICS and allowed is SET_METRICS:
                hint = " (a per-video metric)"
            raise UserInputError(f"unknown {kind} metric {name!r}{hint}; known: {', '.join(allowed)}")
    return names


def compute_metrics(
    frames: np.ndarray,
    prompt: str | None = None,
    style_image: np.ndarray | None = None,
    metrics: Sequence[str] = ("clipsim", "frame_consistency"),
    config: MetricsConfig | Mapping | None = None,
    image_prompt: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-video metrics of uint8 [T, H, W, 3] frames; CLIP embeddings and flows are computed once and shared.
    `image_prompt`: the image-prompt method's subject image (uint8 [H, W, 3], already masked), for image_fidelity."""
    config = MetricsConfig.from_dict(config)
    names = _check_names(metrics, PER_VIDEO_METRICS, "per-video")
    frames = check_video(frames)
    missing_prompt = sorted(_NEEDS_PROMPT.intersection(names)) if not (prompt and str(prompt).strip()) else []
    if missing_prompt:
        raise UserInputError(f"{', '.join(missing_prompt)} need a prompt; pass prompt=")
    if style_image is None and _NEEDS_STYLE.intersection(names):
        raise UserInputError(f"{', '.join(sorted(_NEEDS_STYLE.intersection(names)))} need a style image; pass style=")
    if style_image is not None:
        style_image = check_image(style_image)
    if image_prompt is None and _NEEDS_IMAGE_PROMPT.intersection(names):
        raise UserInputError("image_fidelity needs the image prompt (a method=image_prompt run records it)")
    if image_prompt is not None:
        image_prompt = check_image(image_prompt)

    frame_embeddings = text_embedding = style_embedding = None
    if _USES_CLIP.intersection(names):
        # Each tower runs once per video (frames, prompt, style image) and every CLIP metric reads the result:
        # the image tower over the frames is most of the time these metrics take.
        clip = clip_metrics.load_clip(config.clip.model, config.device, config.clip.batch_size)
        frame_embeddings = clip.embed_images(frames)
        if _NEEDS_PROMPT.intersection(names):
            text_embedding = clip.embed_texts([str(prompt)])
        if "style_fidelity" in names:
            style_embedding = clip.embed_images(style_image[None])
        if "image_fidelity" in names:
            image_prompt_embedding = clip.embed_images(image_prompt[None])
    flows = None
    if _USES_FLOW.intersection(names):
        flows = flow_metrics.pair_flows(frames, config.flow.preset) if len(frames) > 1 else None

    results: dict[str, float] = {}
    for name in names:
        if name in ("clipsim", "prompt_consistency"):
            results[name] = clip_metrics.clipsim_of(frame_embeddings, text_embedding)
        elif name == "clip_score":
            results[name] = clip_metrics.clip_score_of(frame_embeddings, text_embedding, config.clip.clamp)
        elif name == "frame_consistency":
            results[name] = clip_metrics.frame_consistency_of(frame_embeddings, config.frame_consistency.pairs)
        elif name == "style_fidelity":
            results[name] = clip_metrics.style_fidelity_of(frame_embeddings, style_embedding)
        elif name == "image_fidelity":  # the same image-image cosine, against the subject instead of a style
            results[name] = clip_metrics.style_fidelity_of(frame_embeddings, image_prompt_embedding)
        elif name == "style_gram":
            # Cached per (weights, layers, device) like CLIP: a set of videos loads VGG once.
            extractor = style_metrics.load_vgg_features(config.style.vgg_path, config.style.vgg_layers, config.device)
            results[name] = style_metrics.gram_distance(frames, style_image, extractor, config.device)
        elif name == "style_csd":
            encoder = style_metrics.load_csd(config.style.csd_path, config.device)
            results[name] = style_metrics.csd_similarity(
                frames, style_image, encoder, config.style.csd_resolution, config.style.csd_output_index,
                config.device,
            )
        elif name == "warp_error":
            results[name] = flow_metrics.warp_error(frames, flows, config.flow.preset)
        elif name == "temporal_flicker":
            results[name] = flow_metrics.temporal_flicker(frames)
        elif name == "motion":
            results[name] = flow_metrics.motion(frames, flows, config.flow.preset)
    return results


def compute_set_metrics(
    videos: Sequence[np.ndarray],
    metrics: Sequence[str] = ("fvd",),
    config: MetricsConfig | Mapping | None = None,
    real_videos: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Set-level metrics over a list of videos: "fvd" (against real_videos or cached statistics; with
    "fvd_num_generated" and "fvd_num_real", the sizes of the two sets, which FVD depends on) and "is" (reported
    as "is" = mean and "is_std" = std over splits, with "is_num_videos")."""
    from stylevid.metrics.fvd import fvd_with_counts
    from stylevid.metrics.inception import inception_score

    config = MetricsConfig.from_dict(config)
    names = _check_names(metrics, SET_METRICS, "set-level")
    videos = list(videos)
    if not videos:
        raise UserInputError("set-level metrics need at least one video")
    results: dict[str, float] = {}
    for name in names:
        if name == "fvd":
            results.update(fvd_with_counts(videos, real_videos, config.fvd, config.device))
        elif name == "is":
            results["is"], results["is_std"] = inception_score(videos, config.is_, config.device)
            results["is_num_videos"] = len(videos)  # IS depends on the set size: recorded beside it
    return results


def aggregate(results: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {mean, std, n}} over per-video results; NaN values (e.g. a fully occluded warp_error) are left
    out of mean and n. std is the sample standard deviation (ddof=1), 0.0 for a single value."""
    values: dict[str, list[float]] = {}
    for result in results:
        for name, value in result.items():
            values.setdefault(name, [])
            if value is not None and math.isfinite(float(value)):
                values[name].append(float(value))
    summary = {}
    for name, vals in values.items():
        array = np.asarray(vals, dtype=np.float64)
        summary[name] = {
            "mean": float(array.mean()) if len(array) else math.nan,
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "n": len(array),
        }
    return summary


def describe_metrics(metrics: Sequence[str], config: MetricsConfig | Mapping | None = None) -> dict[str, dict]:
    """What each metric value means, for result.json: definition, direction, model id / weights, clamp policy."""
    config = MetricsConfig.from_dict(config)
    described = {}
    for name in ([metrics] if isinstance(metrics, str) else list(metrics)):
        higher, definition = {**PER_VIDEO_METRICS, **SET_METRICS}.get(name, (None, "unknown"))
        entry: dict[str, Any] = {"definition": definition, "higher_is_better": higher}
        if name in _USES_CLIP:
            entry["model"] = config.clip.model
        if name == "clip_score":
            entry["clamp"] = config.clip.clamp
        if name == "frame_consistency":
            entry["pairs"] = config.frame_consistency.pairs
        if name == "style_gram":
            entry.update(weights=config.style.vgg_path, layers=list(config.style.vgg_layers))
        if name == "style_csd":
            entry["weights"] = config.style.csd_path
        if name in _USES_FLOW:
            entry["flow"] = f"OpenCV DIS ({config.flow.preset})"
        if name == "fvd":
            entry.update(weights=config.fvd.i3d_path, num_frames=config.fvd.num_frames,
                         resolution=config.fvd.resolution, stats_path=config.fvd.stats_path)
        if name == "is":
            entry.update(weights=config.is_.c3d_path, num_frames=config.is_.num_frames, splits=config.is_.splits)
        described[name] = entry
    return described
