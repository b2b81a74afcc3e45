"""Gram-matrix style distance on tiny feature extractors, VGG/CSD weight loading, CSD cosine."""

from typing import List

import numpy as np
import pytest
import torch
from torch import nn

from stylevid.errors import UserInputError
from stylevid.metrics.style import (
    VGGFeatures,
    csd_similarity,
    gram_distance,
    gram_matrix,
    load_csd,
    load_vgg_features,
)


class TinyFeatures(nn.Module):
    """Two conv layers standing in for VGG; returns both activations, like relu1_1 and relu2_1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        first = torch.relu(self.conv1(x))
        return [first, torch.relu(self.conv2(first))]


class TinyCSD(nn.Module):
    """Returns (features, content, style) like the CSD model; the style head is a pooled linear map."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.style = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor):
        if x.shape[-1] != 224 or x.shape[-2] != 224:
            raise ValueError("CSD expects 224 x 224 inputs")
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return features, features * 0, self.style(features)


def _images(seed, n, height=24, width=32):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_gram_matrix_matches_definition():
    features = torch.randn(2, 3, 4, 5)
    flat = features.reshape(2, 3, 20)
    expected = torch.einsum("bci,bdi->bcd", flat, flat) / (3 * 4 * 5)
    torch.testing.assert_close(gram_matrix(features), expected)
    assert gram_matrix(torch.ones(1, 2, 2, 2))[0, 0, 1] == pytest.approx(0.5)  # 4 products of 1 / (2*2*2)


def test_gram_distance_zero_for_the_style_itself_and_summed_over_layers():
    net = TinyFeatures().eval()
    style = _images(0, 1)[0]
    assert gram_distance(np.stack([style] * 3), style, net) == pytest.approx(0.0, abs=1e-12)

    frames = _images(1, 3)
    with torch.no_grad():
        def normalized(image):
            x = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            return (x - mean) / std

        style_grams = [gram_matrix(f) for f in net(normalized(style))]
        expected = np.mean([
            sum(float(((gram_matrix(f) - s) ** 2).sum()) for f, s in zip(net(normalized(frame)), style_grams))
            for frame in frames
        ])
    assert gram_distance(frames, style, net) == pytest.approx(expected, rel=1e-4)
    assert expected > 0


def test_gram_distance_orders_similar_before_different_styles():
    net = TinyFeatures().eval()
    style = _images(0, 1)[0]
    slightly_off = np.clip(style.astype(int) + np.random.default_rng(2).integers(-10, 11, style.shape), 0, 255)
    flat_gray = np.full_like(style, 128)
    near = gram_distance(slightly_off.astype(np.uint8)[None], style, net)
    far = gram_distance(flat_gray[None], style, net)
    assert 0 < near < far


def test_style_image_is_resized_to_the_frame_size():
    net = TinyFeatures().eval()
    color = np.array([200, 40, 90], np.uint8)
    frames = np.broadcast_to(color, (2, 16, 16, 3)).copy()
    big_style = np.broadcast_to(color, (48, 64, 3)).copy()
    assert gram_distance(frames, big_style, net) == pytest.approx(0.0, abs=1e-10)


def test_torchscript_feature_extractor_loads_and_agrees(tmp_path):
    net = TinyFeatures().eval()
    path = tmp_path / "tiny_vgg.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    loaded = load_vgg_features(str(path))
    frames, style = _images(3, 2), _images(4, 1)[0]
    assert gram_distance(frames, style, loaded) == pytest.approx(gram_distance(frames, style, net), rel=1e-6)


def test_vgg_weights_errors_name_the_key(tmp_path):
    with pytest.raises(UserInputError, match=r"metrics\.style\.vgg_path="):
        load_vgg_features(None)
    with pytest.raises(UserInputError, match=r"not found.*metrics\.style\.vgg_path="):
        load_vgg_features(str(tmp_path / "vgg19.safetensors"))
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(2, 3, 3, 3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(UserInputError, match="vgg19"):
        load_vgg_features(str(tmp_path / "wrong.safetensors"))


@pytest.mark.slow
def test_vgg19_safetensors_in_torchvision_layout_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = VGGFeatures().eval()
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # classifier keys of a full vgg19 state dict are ignored
    save_file(state, str(tmp_path / "vgg19.safetensors"))
    loaded = load_vgg_features(str(tmp_path / "vgg19.safetensors"))
    x = torch.randn(1, 3, 32, 32)
    outputs = loaded(x)
    assert [o.shape[1] for o in outputs] == [64, 128, 256, 512, 512]
    for a, b in zip(outputs, reference(x)):
        torch.testing.assert_close(a, b)


def test_csd_cosine_on_a_tiny_scripted_encoder(tmp_path):
    path = tmp_path / "csd.pt"
    torch.jit.save(torch.jit.script(TinyCSD().eval()), str(path))
    encoder = load_csd(str(path))
    style = _images(5, 1, 40, 30)[0]
    assert csd_similarity(np.stack([style] * 2), style, encoder) == pytest.approx(1.0, abs=1e-6)
    frames = _images(6, 3, 40, 30)
    score = csd_similarity(frames, style, encoder)
    per_frame = [csd_similarity(f[None], style, encoder) for f in frames]
    assert score == pytest.approx(float(np.mean(per_frame)), abs=1e-9)
    assert -1.0 <= score < 1.0


def test_csd_without_weights_names_the_key():
    with pytest.raises(UserInputError, match=r"metrics\.style\.csd_path="):
        load_csd(None)
