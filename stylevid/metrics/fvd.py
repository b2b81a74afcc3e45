"""Fréchet Video Distance (Unterthiner et al. 2019) on an I3D TorchScript the user supplies.

FVD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussians fitted to I3D features of the real
and generated sets. The Fréchet distance follows the reference implementations (pytorch-fid, StyleGAN-V):
scipy's sqrtm, an eps * I offset on both covariances when the product is singular, and the imaginary part
dropped when it is numerical noise.

Video preparation follows the common i3d_torchscript.pt convention (e.g. common_metrics_on_video_quality):
the first `num_frames` (16) frames, shortest side resized to `resolution` (224) and center-cropped, values in
[-1, 1], layout [B, C, T, H, W], called as `model(videos, rescale=False, resize=False, return_features=True)`.
All of it is configurable (`FVDConfig`) for exports with another convention (StyleGAN-V: uint8, rescale and
resize inside the model).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import scipy.linalg
import torch

from stylevid.errors import UserInputError
from stylevid.metrics.common import check_video, load_torchscript
from stylevid.metrics.config import FVDConfig

logger = logging.getLogger(__name__)

I3D_KEY = "metrics.fvd.i3d_path"


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's calculate_frechet_distance)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserInputError(f"feature statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product (fewer videos than feature dimensions): regularise both covariances, as pytorch-fid.
        logger.warning("fvd: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"fvd: imaginary component {np.max(np.abs(covmean.imag)):.3g} in the matrix sqrt")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def prepare_videos(
    videos: Sequence[np.ndarray], num_frames: int, resolution: int | None, value_range: str
) -> torch.Tensor:
    """uint8 [T, H, W, 3] videos -> float [B, 3, num_frames, R, R] in `value_range` ("-1,1", "0,1", "uint8")."""
    prepared = []
    for index, video in enumerate(videos):
        video = check_video(video, f"video {index}")
        if len(video) < num_frames:
            raise UserInputError(
                f"video {index} has {len(video)} frames; these metrics use clips of {num_frames} "
                f"(set metrics.fvd.num_frames / metrics.is.num_frames)"
            )
        clip = video[:num_frames]  # the first clip, as StyleGAN-V's load_n_consecutive without random offset
        if resolution is not None:
            clip = np.stack([_resize_center_crop(frame, resolution) for frame in clip])
        prepared.append(clip)
    shapes = {clip.shape for clip in prepared}
    if len(shapes) > 1:
        raise UserInputError(f"videos differ in size {sorted(shapes)}; set a resolution to resize them")
    batch = torch.from_numpy(np.stack(prepared)).permute(0, 4, 1, 2, 3)  # B, C, T, H, W
    if value_range == "uint8":
        return batch
    batch = batch.float() / 255.0
    return batch * 2.0 - 1.0 if value_range == "-1,1" else batch


def _resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


@torch.inference_mode()
def video_features(
    videos: Sequence[np.ndarray],
    model: Callable,
    num_frames: int = 16,
    resolution: int | None = 224,
    value_range: str = "-1,1",
    call_kwargs: dict | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run `model(batch, **call_kwargs)` over the videos in batches; float64 [N, D] features."""
    call_kwargs = dict(call_kwargs or {})
    features = []
    for start in range(0, len(videos), batch_size):
        batch = prepare_videos(videos[start : start + batch_size], num_frames, resolution, value_range)
        output = model(batch.to(device), **call_kwargs)
        output = output[0] if isinstance(output, (tuple, list)) else output
        features.append(output.reshape(output.shape[0], -1).double().cpu().numpy())
    return np.concatenate(features)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features; needs N >= 2."""
    if len(features) < 2:
        raise UserInputError(f"fvd needs at least 2 videos per set, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def load_i3d(config: FVDConfig, device="cpu"):
    return load_torchscript(config.i3d_path, I3D_KEY, "fvd (I3D TorchScript)", device)


def _stats_metadata(config: FVDConfig) -> dict:
    return {"num_frames": config.num_frames, "resolution": -1 if config.resolution is None else config.resolution,
            "value_range": config.value_range, "i3d": Path(str(config.i3d_path)).name}


def read_statistics(path: str | Path) -> dict[str, np.ndarray]:
    """A real-set statistics cache (.npz with mu, sigma, num_videos); anything else is a one-line error."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserInputError(f"metrics.fvd.stats_path {path} is a directory, not an .npz file")
    try:
        with np.load(path, allow_pickle=False) as cached:
            stats = {key: cached[key] for key in cached.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserInputError(f"metrics.fvd.stats_path {path} is not an .npz of statistics ({type(err).__name__})") from None
    missing = [key for key in ("mu", "sigma", "num_videos") if key not in stats]
    if missing:
        raise UserInputError(f"metrics.fvd.stats_path {path} has no {', '.join(missing)}: not an fvd statistics cache")
    return stats


def real_statistics(
    real_videos: Sequence[np.ndarray] | None, config: FVDConfig, model=None, device="cpu"
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, num_videos) of the real set, from `config.stats_path` when it matches, else computed
    (and written there when a stats_path is set). The cache records the number of videos and the
    preprocessing, and is recomputed when either differs."""
    stats_path = Path(config.stats_path).expanduser() if config.stats_path else None
    wanted = _stats_metadata(config)
    if stats_path is not None and stats_path.is_file():
        cached = read_statistics(stats_path)
        meta = {k: cached[k].item() for k in wanted if k in cached}
        num_videos = int(cached["num_videos"])
        if meta == wanted and (real_videos is None or len(real_videos) == num_videos):
            return cached["mu"], cached["sigma"], num_videos
        if real_videos is None:
            raise UserInputError(
                f"{stats_path} was computed with {meta}, not {wanted}; pass the real videos to recompute it"
            )
        logger.info("fvd: %s does not match this set or preprocessing; recomputing", stats_path)
    if real_videos is None:
        raise UserInputError("fvd needs the real videos or cached statistics: pass metrics.fvd.stats_path=<.npz>")
    model = load_i3d(config, device) if model is None else model
    features = video_features(real_videos, model, config.num_frames, config.resolution, config.value_range,
                              config.call_kwargs, config.batch_size, device)
    mu, sigma = feature_statistics(features)
    if stats_path is not None:
        stats_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stats_path, mu=mu, sigma=sigma, num_videos=len(features), **wanted)
    return mu, sigma, len(features)


def fvd_with_counts(
    generated_videos: Sequence[np.ndarray],
    real_videos: Sequence[np.ndarray] | None = None,
    config: FVDConfig | None = None,
    device: str | torch.device = "cpu",
    model=None,
) -> dict[str, float | int]:
    """{"fvd", "fvd_num_generated", "fvd_num_real"}: FVD between generated videos and real videos (or the real
    statistics cached at config.stats_path), with the size of each set. FVD is biased by the sample sizes, so
    a value is only comparable with others from as many videos."""
    config = config or FVDConfig()
    model = load_i3d(config, device) if model is None else model
    mu_real, sigma_real, num_real = real_statistics(real_videos, config, model, device)
    features = video_features(generated_videos, model, config.num_frames, config.resolution, config.value_range,
                              config.call_kwargs, config.batch_size, device)
    mu_gen, sigma_gen = feature_statistics(features)
    return {"fvd": frechet_distance(mu_gen, sigma_gen, mu_real, sigma_real), "fvd_num_generated": len(features),
            "fvd_num_real": int(num_real)}


def fvd(
    generated_videos: Sequence[np.ndarray],
    real_videos: Sequence[np.ndarray] | None = None,
    config: FVDConfig | None = None,
    device: str | torch.device = "cpu",
    model=None,
) -> float:
    """FVD between generated videos and real videos (or the real statistics cached at config.stats_path)."""
    return float(fvd_with_counts(generated_videos, real_videos, config, device, model)["fvd"])
