"""FVD (Fréchet distance, I3D call convention, statistics cache) and Inception Score, with tiny scripted nets."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from stylevid.errors import UserInputError
from stylevid.metrics.config import FVDConfig, ISConfig
from stylevid.metrics.fvd import frechet_distance, fvd, prepare_videos, real_statistics
from stylevid.metrics.inception import inception_score, inception_score_from_probs, to_probabilities


class TinyI3D(nn.Module):
    """Follows i3d_torchscript.pt's call: model(videos, rescale=False, resize=False, return_features=True),
    videos in [-1, 1] shaped [B, C, T, H, W]; returns [B, 6] pooled features. With `expected_size`, it also
    insists on [B, 3, 16, size, size]."""

    def __init__(self, expected_size: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(3, 6, kernel_size=(3, 4, 4), stride=(2, 4, 4))
        self.expected_size = expected_size

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("expected rescale=False, resize=False, return_features=True")
        if videos.min() < -1.0 or videos.max() > 1.0:
            raise RuntimeError("expected videos in [-1, 1]")
        if self.expected_size > 0:
            size = self.expected_size
            if videos.shape[1] != 3 or videos.shape[2] != 16 or videos.shape[3] != size or videos.shape[4] != size:
                raise RuntimeError("unexpected video shape")
        return torch.tanh(self.conv(videos)).mean(dim=(2, 3, 4))


class FixedLogitsC3D(nn.Module):
    """Class i <=> a video of constant intensity i * 255 / (k - 1); logits -scale * distance^2."""

    def __init__(self, num_classes: int, scale: float = 50.0, softmax: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.scale = scale
        self.softmax = softmax

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        level = videos.float().mean(dim=(1, 2, 3, 4)) / 255.0 * (self.num_classes - 1)
        centers = torch.arange(self.num_classes, dtype=torch.float32)
        logits = -self.scale * (level[:, None] - centers[None, :]) ** 2
        return torch.softmax(logits, dim=1) if self.softmax else logits


class UniformC3D(nn.Module):
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return torch.zeros(videos.shape[0], 101)


def _save_script(module, path):
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


def _videos(seed, n, frames=16, size=32, brightness=0):
    rng = np.random.default_rng(seed)
    videos = rng.integers(0, 200, (n, frames, size, size, 3)).astype(np.int64) + brightness
    return [np.clip(v, 0, 255).astype(np.uint8) for v in videos]


# --- Fréchet distance -----------------------------------------------------------------------------------------


def test_frechet_distance_equals_direct_scipy_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    b = rng.normal(loc=0.3, scale=1.5, size=(150, 5)) @ rng.normal(size=(5, 5))
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # 5 + 2
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_handles_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))  # 3 samples in 8 dims: rank-2 covariances
    value = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert np.isfinite(value) and value > 0
    s = np.cov(a, rowvar=False)
    assert frechet_distance(a.mean(0), s, a.mean(0), s) == pytest.approx(0.0, abs=1e-4)


# --- FVD ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def i3d_path(tmp_path):
    return _save_script(TinyI3D(), tmp_path / "i3d_torchscript.pt")


def _fvd_config(i3d_path, **overrides):
    return FVDConfig(i3d_path=i3d_path, resolution=32, batch_size=5, **overrides)


def test_fvd_of_a_set_against_itself_is_zero_and_grows_with_a_shift(i3d_path):
    real = _videos(0, 12)
    config = _fvd_config(i3d_path)
    assert fvd(real, real, config) == pytest.approx(0.0, abs=1e-6)
    shifted_a = fvd(_videos(0, 12, brightness=20), real, config)
    shifted_b = fvd(_videos(0, 12, brightness=55), real, config)
    assert 0 < shifted_a < shifted_b


def test_fvd_default_convention_16_frames_224px(tmp_path):
    path = _save_script(TinyI3D(expected_size=224), tmp_path / "i3d_torchscript.pt")
    real, fake = _videos(0, 3, frames=20, size=40), _videos(1, 3, frames=18, size=40)
    value = fvd(fake, real, FVDConfig(i3d_path=path))
    assert np.isfinite(value) and value > 0


def test_prepare_videos_range_layout_and_crop():
    video = np.zeros((17, 30, 60, 3), np.uint8)
    video[:, :, 15:45] = 255  # a white band in the middle: the center crop keeps exactly it
    batch = prepare_videos([video], num_frames=16, resolution=30, value_range="-1,1")
    assert batch.shape == (1, 3, 16, 30, 30)
    assert batch.min() == 1.0 and batch.max() == 1.0
    assert prepare_videos([video], 16, 30, "uint8").dtype == torch.uint8


def test_real_statistics_are_cached_with_the_number_of_videos(i3d_path, tmp_path):
    real, fake = _videos(0, 12), _videos(1, 12)
    stats = tmp_path / "real_stats.npz"
    config = _fvd_config(i3d_path, stats_path=str(stats))
    first = fvd(fake, real, config)
    cached = np.load(stats)
    assert int(cached["num_videos"]) == 12
    assert cached["mu"].shape == (6,) and cached["sigma"].shape == (6, 6)
    # without the real videos, the cache is used and gives the same value
    assert fvd(fake, None, config) == pytest.approx(first, rel=1e-12)
    mu, _, n = real_statistics(None, config)
    np.testing.assert_array_equal(mu, cached["mu"])
    assert n == 12
    # a cache made with another preprocessing is not silently reused
    with pytest.raises(UserInputError, match="computed with"):
        real_statistics(None, _fvd_config(i3d_path, stats_path=str(stats), num_frames=8))


def test_fvd_user_errors(tmp_path, i3d_path):
    with pytest.raises(UserInputError, match=r"metrics\.fvd\.i3d_path="):
        fvd(_videos(0, 2), _videos(1, 2), FVDConfig())
    with pytest.raises(UserInputError, match=r"not found.*metrics\.fvd\.i3d_path="):
        fvd(_videos(0, 2), _videos(1, 2), FVDConfig(i3d_path=str(tmp_path / "missing.pt")))
    (tmp_path / "not_torchscript.pt").write_text("hello")
    with pytest.raises(UserInputError, match=r"not a TorchScript file.*metrics\.fvd\.i3d_path="):
        fvd(_videos(0, 2), _videos(1, 2), FVDConfig(i3d_path=str(tmp_path / "not_torchscript.pt")))
    with pytest.raises(UserInputError, match="16"):
        fvd(_videos(0, 2, frames=8), _videos(1, 2), _fvd_config(i3d_path))
    with pytest.raises(UserInputError, match="at least 2 videos"):
        fvd(_videos(0, 1), _videos(1, 2), _fvd_config(i3d_path))


# --- Inception Score ------------------------------------------------------------------------------------------


def test_is_of_identical_uniform_predictions_is_one():
    assert inception_score_from_probs(np.full((20, 101), 1 / 101), splits=10) == pytest.approx((1.0, 0.0))


def test_is_of_distinct_one_hot_predictions_is_the_number_of_classes():
    k = 7
    probs = np.tile(np.eye(k), (2, 1))  # each half holds every class once
    mean, std = inception_score_from_probs(probs, splits=2, shuffle_seed=None)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0)
    # everything predicted as the same class is as bad as uniform
    assert inception_score_from_probs(np.tile(np.eye(k)[:1], (6, 1)), splits=1)[0] == pytest.approx(1.0)


def test_is_matches_the_kl_formula_on_random_predictions():
    probs = to_probabilities(np.random.default_rng(0).normal(size=(30, 5)), softmax=True)
    marginal = probs.mean(0)
    expected = np.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(marginal)), axis=1)))
    assert inception_score_from_probs(probs, splits=1)[0] == pytest.approx(expected, rel=1e-12)


def _constant_videos(levels, num_classes):
    return [np.full((16, 12, 12, 3), round(i * 255 / (num_classes - 1)), np.uint8) for i in levels]


@pytest.mark.parametrize("softmax_inside", [False, True])
def test_is_with_a_scripted_c3d(tmp_path, softmax_inside):
    k = 5
    path = _save_script(FixedLogitsC3D(k, softmax=softmax_inside), tmp_path / "c3d_ucf101.pt")
    config = ISConfig(c3d_path=path, splits=1)  # softmax="auto" recognises logits and probabilities
    mean, _ = inception_score(_constant_videos(range(k), k), config)
    assert mean == pytest.approx(k, rel=1e-4)
    assert inception_score(_constant_videos([2] * 4, k), config)[0] == pytest.approx(1.0, rel=1e-4)


def test_is_of_a_net_predicting_uniformly_is_one(tmp_path):
    path = _save_script(UniformC3D(), tmp_path / "c3d_ucf101.pt")
    videos = _constant_videos(range(10), 10)
    assert inception_score(videos, ISConfig(c3d_path=path))[0] == pytest.approx(1.0)  # splits=10 default


def test_is_user_errors(tmp_path):
    with pytest.raises(UserInputError, match=r"metrics\.is\.c3d_path="):
        inception_score(_videos(0, 2), ISConfig())
    with pytest.raises(UserInputError, match="splits"):
        inception_score_from_probs(np.full((3, 4), 0.25), splits=10)


def test_uncached_hub_weights_offline_are_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match=r"not in the local cache and the hub is offline \(HF_HUB_OFFLINE=1\); pass metrics\.fvd\.i3d_path="):
        fvd(_videos(0, 2), _videos(1, 2), FVDConfig(i3d_path="stylevid-test-nobody/none:i3d_torchscript.pt"))
