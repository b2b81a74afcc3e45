"""Video Inception Score (Salimans et al. 2016; Saito et al. TGAN 2017) with a C3D UCF-101 TorchScript.

IS = exp(E_x KL(p(y|x) || p(y))), computed per split and reported as mean (and std) over `splits` splits,
p(y) being the mean prediction of the split -- the formula of openai/improved-gan and StyleGAN-V
(video_inception_score.py, which also shuffles predictions with RandomState(42) first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from stylevid.errors import UserInputError
from stylevid.metrics.common import load_torchscript
from stylevid.metrics.config import ISConfig
from stylevid.metrics.fvd import video_features

C3D_KEY = "metrics.is.c3d_path"


def inception_score_from_probs(
    probs: np.ndarray, splits: int = 10, shuffle_seed: int | None = 42
) -> tuple[float, float]:
    """(mean, std) over splits of exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y)))."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise UserInputError(f"inception score needs [N, classes] predictions, got shape {probs.shape}")
    if splits > len(probs):
        raise UserInputError(f"metrics.is.splits={splits} is more than the {len(probs)} videos")
    if shuffle_seed is not None:
        probs = probs.copy()
        np.random.RandomState(shuffle_seed).shuffle(probs)
    scores = []
    for i in range(splits):
        part = probs[i * len(probs) // splits : (i + 1) * len(probs) // splits]
        marginal = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: where p(y|x) = 0 the term vanishes (the clip only keeps the log finite).
        log_ratio = np.log(np.clip(part, 1e-300, None)) - np.log(np.clip(marginal, 1e-300, None))
        kl = np.where(part > 0, part * log_ratio, 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def to_probabilities(outputs: np.ndarray, softmax: str | bool = "auto") -> np.ndarray:
    """Classifier outputs -> probabilities. "auto": softmax unless rows are already non-negative and sum to 1
    (StyleGAN-V's c3d_ucf101.pt returns probabilities; other exports return logits)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    mode = str(softmax).lower()
    if mode == "auto":
        is_probs = (outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-4)
        mode = "false" if is_probs else "true"
    if mode == "false":
        return outputs
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def load_c3d(config: ISConfig, device="cpu"):
    return load_torchscript(config.c3d_path, C3D_KEY, "is (C3D UCF-101 TorchScript)", device)


def inception_score(
    videos: Sequence[np.ndarray],
    config: ISConfig | None = None,
    device: str | torch.device = "cpu",
    model: Callable | None = None,
) -> tuple[float, float]:
    """(IS mean, IS std over splits) of a set of uint8 [T, H, W, 3] videos."""
    config = config or ISConfig()
    model = load_c3d(config, device) if model is None else model
    outputs = video_features(videos, model, config.num_frames, config.resolution, config.value_range,
                             config.call_kwargs, config.batch_size, device)
    probs = to_probabilities(outputs, config.softmax)
    return inception_score_from_probs(probs, int(config.splits), config.shuffle_seed)
