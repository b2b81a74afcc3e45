"""Style fidelity beyond CLIP: VGG Gram-matrix distance and a CSD style-descriptor cosine, on local weights only.

- style_gram (lower is better): Gram matrices of feature maps, G = F F^T / (C H W) (the size-normalised Gram
  of Johnson et al. 2016, "Perceptual losses", eq. 3), compared with the style image's by the squared
  Frobenius norm and summed over the chosen layers (relu1_1 ... relu5_1 of VGG-19, Gatys et al. 2016); mean
  over frames. The style image is resized to the frame size first, so both see textures at the same scale.
  `gram_distance` takes any feature extractor callable, so it is testable with a tiny network.
- style_csd (higher is better): cosine between style embeddings of a CSD model (Somepalli et al. 2024,
  "Measuring style similarity in diffusion models"), mean over frames. Only a TorchScript export is accepted
  (input: CLIP-normalised [B, 3, 224, 224]; output: the style embedding, or a tuple whose `output_index`
  entry is it); without weights it raises a one-line error naming `metrics.style.csd_path=`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from stylevid.errors import UserInputError
from stylevid.metrics.common import check_image, check_video, load_torchscript, resolve_weights_file

VGG_KEY = "metrics.style.vgg_path"
CSD_KEY = "metrics.style.csd_path"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FeatureExtractor = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C], normalised by C*H*W so layers and resolutions are comparable."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def _normalized_batch(images: np.ndarray, mean, std, device) -> torch.Tensor:
    tensor = torch.from_numpy(images).to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (tensor - mean) / std


def _as_feature_list(output) -> list[torch.Tensor]:
    return [output] if isinstance(output, torch.Tensor) else list(output)


@torch.inference_mode()
def gram_distance(
    frames: np.ndarray,
    style_image: np.ndarray,
    feature_extractor: FeatureExtractor,
    device: str | torch.device = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> float:
    """Mean over frames of sum over layers of ||G(frame) - G(style)||_F^2 (lower is closer in style).

    `feature_extractor` maps a normalised [B, 3, H, W] batch to one feature map or a list of them.
    """
    frames = check_video(frames)
    style_image = check_image(style_image)
    height, width = frames.shape[1:3]
    if style_image.shape[:2] != (height, width):
        style_image = cv2.resize(style_image, (width, height), interpolation=cv2.INTER_AREA)
    style_grams = [gram_matrix(f) for f in _as_feature_list(
        feature_extractor(_normalized_batch(style_image[None], mean, std, device)))]
    distances = []
    for frame in frames:  # one frame at a time: VGG feature maps of a whole video do not fit in memory
        frame_grams = [gram_matrix(f) for f in _as_feature_list(
            feature_extractor(_normalized_batch(frame[None], mean, std, device)))]
        if len(frame_grams) != len(style_grams):
            raise RuntimeError("the feature extractor returned a different number of layers for frame and style")
        distances.append(sum(float(((g - s) ** 2).sum()) for g, s in zip(frame_grams, style_grams)))
    return float(np.mean(distances))


# --- VGG-19 ----------------------------------------------------------------------------------------------------

# torchvision's vgg19 "E" configuration; numbers are conv widths, "M" a 2x2 max pool.
_VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGGFeatures(nn.Module):
    """torchvision's `vgg19().features` (same module indices, so its state dict loads), returning the
    activations after the layers whose indices are in `layers` (default relu1_1 ... relu5_1)."""

    def __init__(self, layers: Sequence[int] = (1, 6, 11, 20, 29)):
        super().__init__()
        modules: list[nn.Module] = []
        channels = 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                modules += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        self.features = nn.Sequential(*modules)
        self.layers = tuple(sorted(int(i) for i in layers))
        if not self.layers or self.layers[-1] >= len(self.features):
            raise UserInputError(f"metrics.style.vgg_layers={list(layers)} must be indices below {len(self.features)}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.layers:
                outputs.append(x)
            if index == self.layers[-1]:
                break
        return outputs


def load_vgg_features(path, layers: Sequence[int] = (1, 6, 11, 20, 29), device="cpu") -> FeatureExtractor:
    """VGG features from a local file: TorchScript (used as is) or safetensors with torchvision's vgg19 keys
    ("features.0.weight", ...; classifier keys are ignored).

    Cached per (path, layers, device), as CLIP is: compute_metrics asks for it once per video, and reading
    VGG-19's 80 MB for each video would cost more than the metric."""
    return _load_vgg_cached(None if path is None else str(path), tuple(int(i) for i in layers), str(device))


@functools.lru_cache(maxsize=2)
def _load_vgg_cached(path: str | None, layers: tuple[int, ...], device: str) -> FeatureExtractor:
    resolved = resolve_weights_file(path, VGG_KEY, "style_gram (VGG-19)")
    if resolved.suffix != ".safetensors":
        return load_torchscript(resolved, VGG_KEY, "style_gram (VGG-19)", device)
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(str(resolved)).items() if k.startswith("features.")}
    model = VGGFeatures(layers)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()
        raise UserInputError(f"{resolved} is not a torchvision vgg19 state dict ({detail}); check {VGG_KEY}=") from None
    return model.to(device).eval()


# --- CSD -------------------------------------------------------------------------------------------------------


def _clip_style_preprocess(images: np.ndarray, resolution: int, device) -> torch.Tensor:
    """Shortest side to `resolution` (bicubic), center crop, CLIP normalisation -- CSD's ViT-L/CLIP transform."""
    out = []
    for image in images:
        height, width = image.shape[:2]
        scale = resolution / min(height, width)
        resized = cv2.resize(image, (max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                             interpolation=cv2.INTER_CUBIC)
        top = (resized.shape[0] - resolution) // 2
        left = (resized.shape[1] - resolution) // 2
        out.append(resized[top : top + resolution, left : left + resolution])
    return _normalized_batch(np.stack(out), CLIP_MEAN, CLIP_STD, device)


@torch.inference_mode()
def csd_similarity(
    frames: np.ndarray,
    style_image: np.ndarray,
    encoder: Callable[[torch.Tensor], object],
    resolution: int = 224,
    output_index: int = -1,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> float:
    """Mean over frames of cos(CSD style embedding of the frame, of the style image)."""
    frames = check_video(frames)
    style_image = check_image(style_image)

    def embed(images: np.ndarray) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), batch_size):
            output = encoder(_clip_style_preprocess(images[start : start + batch_size], resolution, device))
            embedding = output if isinstance(output, torch.Tensor) else output[output_index]
            chunks.append(embedding.float().reshape(embedding.shape[0], -1).cpu())
        features = torch.cat(chunks).double()
        return features / features.norm(dim=-1, keepdim=True)

    return float((embed(frames) * embed(style_image[None])).sum(-1).mean())


def load_csd(path, device="cpu"):
    """The CSD style encoder from a TorchScript file; no weights -> a one-line error naming the key.
    Cached per (path, device), like load_vgg_features."""
    return _load_csd_cached(None if path is None else str(path), str(device))


@functools.lru_cache(maxsize=2)
def _load_csd_cached(path: str | None, device: str):
    return load_torchscript(path, CSD_KEY, "style_csd (CSD style encoder)", device)
