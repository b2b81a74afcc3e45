"""BSRGAN-style degradations of video clips, for training VideoGen's video decoder (paper Section 3.5).

"We apply degradations (adding noise, blurring, and compression), which are introduced in BSRGAN, to the video, and
extract the latent representations. The target video is still the original video." BSRGAN (Zhang et al., 2021)
degrades by Gaussian blur (isotropic or anisotropic), downsampling with a randomly chosen interpolation, Gaussian
noise and JPEG compression, in a shuffled order; Poisson (shot) noise is Real-ESRGAN's addition to that model.

One draw of parameters per clip (`draw_degradation`), so that every frame of a clip is blurred, resized and
compressed alike, as a camera and codec degrade a whole video; only the noise is sampled anew for every frame
(`degrade_clip`). Strength 0 is the identity; strength 1 spans the ranges below, and every parameter moves
linearly from its identity value to its drawn value as the strength rises, with the same random draws: for one
seed a higher strength degrades more.

Written with OpenCV and numpy: no installable package works here (`bsrgan` needs torchvision and a SciPy function
that is gone, `basicsr` imports a removed torchvision module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

# Ranges at strength 1 (BSRGAN's, Poisson's from Real-ESRGAN); sigmas in pixels, noise in [0, 1] pixel units.
ISOTROPIC_SIGMA = (0.1, 2.8)
ANISOTROPIC_SIGMA = (0.5, 4.0)  # along and across the kernel's angle
MAX_KERNEL = 21  # BSRGAN's largest blur kernel
RESIZE_SCALE = (1.0, 4.0)  # down by this factor, then back up to the clip's size
DOWN_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)
UP_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC)
NOISE_SIGMA = (1 / 255, 25 / 255)
POISSON_SCALE = (0.05, 3.0)
POISSON_PEAK = 255.0  # photon count of a white pixel: one count per 8-bit level
JPEG_QUALITY = (30, 95)
# How often each operation is drawn into a clip's degradation (the others are left out of its order).
PROBABILITY = {"blur": 0.9, "resize": 0.8, "gaussian_noise": 0.8, "poisson_noise": 0.3, "jpeg": 0.9}
SHUFFLED = ("blur", "resize", "gaussian_noise", "poisson_noise")  # JPEG always last: a video is compressed when saved


@dataclass(frozen=True)
class Degradation:
    """The parameters drawn for one clip; the default is the identity."""

    order: tuple[str, ...] = ()  # operations in the order applied, from SHUFFLED then "jpeg"
    blur_sigmas: tuple[float, float] = (0.0, 0.0)  # along, across `blur_angle`; equal: isotropic
    blur_angle: float = 0.0  # radians
    resize_scale: float = 1.0
    resize_down: int = cv2.INTER_AREA
    resize_up: int = cv2.INTER_LINEAR
    noise_sigma: float = 0.0
    noise_gray: bool = False  # one noise value for the three channels of a pixel (luminance noise)
    poisson_scale: float = 0.0
    jpeg_quality: int | None = None

    @property
    def is_identity(self) -> bool:
        return not self.order

    def without_noise(self) -> "Degradation":
        """The same blur, resize and compression without the per-frame noise (what every frame shares)."""
        return replace(self, order=tuple(op for op in self.order if not op.endswith("_noise")),
                       noise_sigma=0.0, poisson_scale=0.0)


def _between(low: float, high: float, u: float) -> float:
    return low + u * (high - low)


def draw_degradation(rng: np.random.Generator, strength: float = 1.0) -> Degradation:
    """One clip's degradation. The same draws are made at every strength (only their mapping scales), so a seed
    gives the same operations in the same order at any strength, each milder at a lower one."""
    if not 0.0 <= strength <= 1.0 or math.isnan(strength):
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    shuffled = [SHUFFLED[i] for i in rng.permutation(len(SHUFFLED))]
    drawn = {op: bool(rng.random() < PROBABILITY[op]) for op in (*SHUFFLED, "jpeg")}
    isotropic = bool(rng.random() < 0.5)
    u_sigma, u_across, u_angle, u_scale, u_noise, u_poisson, u_quality = rng.random(7)
    down = DOWN_INTERPOLATIONS[int(rng.integers(len(DOWN_INTERPOLATIONS)))]
    up = UP_INTERPOLATIONS[int(rng.integers(len(UP_INTERPOLATIONS)))]
    gray = bool(rng.random() < 0.4)

    if isotropic:
        sigma = _between(*ISOTROPIC_SIGMA, u_sigma)
        sigmas = (sigma, sigma)
    else:
        sigmas = (_between(*ANISOTROPIC_SIGMA, u_sigma), _between(*ANISOTROPIC_SIGMA, u_across))
    values = {
        "blur_sigmas": (strength * sigmas[0], strength * sigmas[1]),
        "blur_angle": float(u_angle * math.pi),
        "resize_scale": 1.0 + strength * (_between(*RESIZE_SCALE, u_scale) - 1.0),
        "noise_sigma": strength * _between(*NOISE_SIGMA, u_noise),
        "poisson_scale": strength * _between(*POISSON_SCALE, u_poisson),
        "jpeg_quality": round(100 - strength * (100 - _between(*JPEG_QUALITY, u_quality))),
    }
    active = {
        "blur": values["blur_sigmas"][0] > 0,
        "resize": values["resize_scale"] > 1.0,
        "gaussian_noise": values["noise_sigma"] > 0,
        "poisson_noise": values["poisson_scale"] > 0,
        "jpeg": strength > 0,  # JPEG at quality 100 is still lossy: only strength 0 leaves it out
    }
    order = tuple(op for op in (*shuffled, "jpeg") if drawn[op] and active[op])
    if not order:
        return Degradation()
    return Degradation(
        order=order,
        blur_sigmas=values["blur_sigmas"] if "blur" in order else (0.0, 0.0),
        blur_angle=values["blur_angle"] if "blur" in order else 0.0,
        resize_scale=values["resize_scale"] if "resize" in order else 1.0,
        resize_down=down,
        resize_up=up,
        noise_sigma=values["noise_sigma"] if "gaussian_noise" in order else 0.0,
        noise_gray=gray,
        poisson_scale=values["poisson_scale"] if "poisson_noise" in order else 0.0,
        jpeg_quality=int(values["jpeg_quality"]) if "jpeg" in order else None,
    )


# --- the operations, each on a float32 clip (F, H, W, 3) in [0, 1] -----------------------------------------------


def blur_kernel(sigmas: tuple[float, float], angle: float) -> np.ndarray:
    """A normalised 2-D Gaussian with standard deviations `sigmas` along and across `angle`.

    By hand: OpenCV builds only axis-aligned separable Gaussians (`getGaussianKernel`), not rotated anisotropic
    ones; the covariance is R diag(s0², s1²) Rᵀ on a grid of 2·⌈3·max σ⌉+1 taps (at most MAX_KERNEL)."""
    radius = min(MAX_KERNEL // 2, max(1, math.ceil(3 * max(sigmas))))
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    covariance = rotation @ np.diag([sigmas[0] ** 2, sigmas[1] ** 2]) @ rotation.T
    grid = np.stack(np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1)), -1).astype(np.float64)
    exponent = np.einsum("...i,ij,...j->...", grid, np.linalg.inv(covariance), grid)
    kernel = np.exp(-0.5 * exponent)
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(clip: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    kernel = blur_kernel(degradation.blur_sigmas, degradation.blur_angle)
    return np.stack([cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REFLECT_101) for frame in clip])


def _resize(clip: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    height, width = clip.shape[1:3]
    small = (max(1, round(width / degradation.resize_scale)), max(1, round(height / degradation.resize_scale)))
    frames = []
    for frame in clip:
        down = cv2.resize(frame, small, interpolation=degradation.resize_down)
        frames.append(cv2.resize(down, (width, height), interpolation=degradation.resize_up))
    return np.stack(frames)


def _gaussian_noise(clip: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    shape = (*clip.shape[:3], 1) if degradation.noise_gray else clip.shape
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(degradation.noise_sigma)
    return clip + noise


def _poisson_noise(clip: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(np.clip(clip, 0.0, 1.0) * POISSON_PEAK).astype(np.float32)
    return clip + np.float32(degradation.poisson_scale) * (counts / np.float32(POISSON_PEAK) - clip)


def _jpeg(clip: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    frames = []
    for frame in _to_uint8(clip):
        # OpenCV's JPEG codec takes BGR: in RGB order the chroma subsampling would fall on the wrong channels
        ok, encoded = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(degradation.jpeg_quality)])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a frame")
        frames.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
    return np.stack(frames).astype(np.float32) / 255.0


OPERATIONS = {"blur": _blur, "resize": _resize, "gaussian_noise": _gaussian_noise, "poisson_noise": _poisson_noise,
              "jpeg": _jpeg}


def _to_uint8(clip: np.ndarray) -> np.ndarray:
    return (np.clip(clip, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def degrade_clip(frames: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    """uint8 (F, H, W, 3) -> the degraded clip, uint8 of the same shape; noise drawn from `rng` for every frame."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if degradation.is_identity:
        return frames.copy()
    clip = frames.astype(np.float32) / 255.0
    for operation in degradation.order:
        clip = OPERATIONS[operation](clip, degradation, rng)
    return _to_uint8(clip)
