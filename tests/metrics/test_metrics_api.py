"""The CLI-facing API: compute_metrics, compute_set_metrics, aggregate, describe_metrics, config parsing."""

import math
from typing import List

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stylevid.errors import UserInputError
from stylevid.metrics import (
    MetricsConfig,
    aggregate,
    compute_metrics,
    compute_set_metrics,
    describe_metrics,
)
from stylevid.metrics.clip import build_tiny_clip, clip_score, clipsim, frame_consistency, load_clip, style_fidelity
from stylevid.metrics.flow import motion, temporal_flicker, warp_error
from stylevid.metrics.style import csd_similarity, gram_distance


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    clip_dir = build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=1)
    return MetricsConfig.from_dict({"clip": {"model": str(clip_dir), "batch_size": 4, "clamp": "none"}})


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(0)
    base = (rng.random((36, 44, 3)) * 255).astype(np.uint8)
    frames = [np.roll(base, shift=2 * t, axis=1) for t in range(4)]  # moving right by 2 px per frame
    return np.stack(frames)


def test_compute_metrics_matches_the_individual_functions(config, video):
    names = ["clipsim", "clip_score", "prompt_consistency", "frame_consistency", "style_fidelity",
             "warp_error", "temporal_flicker", "motion"]
    results = compute_metrics(video, prompt="a cat", style_image=video[0], metrics=names, config=config)
    assert list(results) == names
    assert all(isinstance(v, float) for v in results.values())

    embedder = load_clip(config.clip.model, batch_size=2)
    assert results["clip_score"] == pytest.approx(clip_score(embedder, video, "a cat", clamp="none"), abs=1e-5)
    assert results["clipsim"] == pytest.approx(results["clip_score"] / 100, abs=1e-7)
    assert results["prompt_consistency"] == results["clipsim"]  # Gen-1's definition is CLIPSIM's
    assert results["frame_consistency"] == pytest.approx(frame_consistency(embedder, video), abs=1e-6)
    assert results["warp_error"] == pytest.approx(warp_error(video), rel=1e-9)
    assert results["temporal_flicker"] == pytest.approx(temporal_flicker(video), rel=1e-9)
    assert results["motion"] == pytest.approx(motion(video), rel=1e-9)
    assert 0.0 <= results["warp_error"] < results["temporal_flicker"]


def test_compute_metrics_user_errors(config, video):
    with pytest.raises(UserInputError, match="unknown per-video metric 'clipsimm'"):
        compute_metrics(video, "a cat", None, ["clipsimm"], config)
    with pytest.raises(UserInputError, match="set-level"):
        compute_metrics(video, "a cat", None, ["fvd"], config)
    with pytest.raises(UserInputError, match="need a prompt"):
        compute_metrics(video, None, None, ["clip_score"], config)
    with pytest.raises(UserInputError, match="style image"):
        compute_metrics(video, "a cat", None, ["style_fidelity"], config)
    with pytest.raises(UserInputError, match="uint8"):
        compute_metrics(video.astype(np.float32), "a cat", None, ["temporal_flicker"], config)
    with pytest.raises(UserInputError, match=r"metrics\.style\.vgg_path="):
        compute_metrics(video, None, video[0], ["style_gram"], config)


def test_set_metrics_need_their_weights(video):
    with pytest.raises(UserInputError, match=r"metrics\.fvd\.i3d_path="):
        compute_set_metrics([video, video], ["fvd"], {}, real_videos=[video, video])
    with pytest.raises(UserInputError, match=r"metrics\.is\.c3d_path="):
        compute_set_metrics([video, video], ["is"], {})
    with pytest.raises(UserInputError, match="per-video"):
        compute_set_metrics([video], ["clipsim"], {})


def test_compute_set_metrics_reports_is_mean_and_std(tmp_path):
    class Uniform(torch.nn.Module):
        def forward(self, videos: torch.Tensor) -> torch.Tensor:
            return torch.zeros(videos.shape[0], 101)

    path = tmp_path / "c3d.pt"
    torch.jit.save(torch.jit.script(Uniform()), str(path))
    videos = [np.zeros((16, 8, 8, 3), np.uint8)] * 4
    results = compute_set_metrics(videos, ["is"], {"is": {"c3d_path": str(path), "splits": 2}})
    assert results == {"is": pytest.approx(1.0), "is_std": pytest.approx(0.0), "is_num_videos": 4}


class _ChannelStatsI3D(torch.nn.Module):
    """Stands in for I3D (same call convention): per-channel mean and std of the clip as the features."""

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        return torch.cat([videos.mean(dim=(2, 3, 4)), videos.std(dim=(2, 3, 4))], dim=1)


def test_fvd_records_the_size_of_both_sets_also_from_cached_statistics(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.save(torch.jit.script(_ChannelStatsI3D()), str(path))
    rng = np.random.default_rng(0)
    generated = [rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8) for _ in range(3)]
    real = [rng.integers(0, 200, (4, 8, 8, 3), dtype=np.uint8) for _ in range(5)]
    options = {"fvd": {"i3d_path": str(path), "num_frames": 4, "resolution": None,
                       "stats_path": str(tmp_path / "real.npz")}}

    computed = compute_set_metrics(generated, ["fvd"], options, real_videos=real)
    assert computed["fvd_num_generated"] == 3 and computed["fvd_num_real"] == 5 and computed["fvd"] > 0
    cached = compute_set_metrics(generated, ["fvd"], options)  # real set from real.npz only
    assert cached == computed


def test_clip_towers_run_once_per_video_and_give_the_same_numbers(config, video, monkeypatch):
    embedder = load_clip(config.clip.model, config.device, config.clip.batch_size)
    style = np.ascontiguousarray(video[0, ::-1])
    # What each metric gave when it embedded the frames itself (the same batches, so exactly the same numbers).
    expected = {
        "clipsim": clipsim(embedder, video, "a cat"),
        "clip_score": clip_score(embedder, video, "a cat", clamp="none"),
        "prompt_consistency": clipsim(embedder, video, "a cat"),
        "frame_consistency": frame_consistency(embedder, video),
        "style_fidelity": style_fidelity(embedder, video, style),
    }
    model = embedder.model  # the cached model compute_metrics gets from load_clip as well
    image_batches, text_batches = [], []
    image_tower, text_tower = model.get_image_features, model.get_text_features

    def count_images(**kwargs):
        image_batches.append(len(kwargs["pixel_values"]))
        return image_tower(**kwargs)

    def count_texts(**kwargs):
        text_batches.append(len(kwargs["input_ids"]))
        return text_tower(**kwargs)

    monkeypatch.setattr(model, "get_image_features", count_images)
    monkeypatch.setattr(model, "get_text_features", count_texts)
    results = compute_metrics(video, "a cat", style, list(expected), config)
    assert results == expected
    assert image_batches == [len(video), 1]  # the 4 frames in one batch (batch_size=4), then the style image
    assert text_batches == [1]


class _MeanFeatures(torch.nn.Module):
    """A stand-in VGG: two 'layers', the image and its 2x2 average pool."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x, torch.nn.functional.avg_pool2d(x, 2)]


class _PooledCSD(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def test_vgg_and_csd_weights_load_once_for_many_videos(tmp_path, video, monkeypatch):
    from stylevid.metrics import style as style_module

    vgg, csd = tmp_path / "vgg.pt", tmp_path / "csd.pt"
    torch.jit.save(torch.jit.script(_MeanFeatures()), str(vgg))
    torch.jit.save(torch.jit.script(_PooledCSD()), str(csd))
    options = MetricsConfig.from_dict({"style": {"vgg_path": str(vgg), "csd_path": str(csd), "csd_resolution": 32}})
    loads = []
    real_load = style_module.load_torchscript

    def counting_load(path, *args, **kwargs):
        loads.append(path)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(style_module, "load_torchscript", counting_load)  # (new paths: nothing cached yet)

    styles = [video[0], video[2], np.ascontiguousarray(video[1, ::-1])]
    results = [compute_metrics(video, None, style, ["style_gram", "style_csd"], options) for style in styles]
    assert sorted(map(str, loads)) == sorted([str(vgg), str(csd)])  # once each, not once per video
    for style, result in zip(styles, results):
        assert result["style_gram"] == gram_distance(video, style, torch.jit.load(str(vgg)))
        assert result["style_csd"] == csd_similarity(video, style, torch.jit.load(str(csd)), resolution=32)


def test_aggregate_mean_sample_std_and_count_skipping_nan():
    summary = aggregate([
        {"clipsim": 0.2, "warp_error": 0.01},
        {"clipsim": 0.4, "warp_error": math.nan},
        {"clipsim": 0.3},
    ])
    assert summary["clipsim"] == {"mean": pytest.approx(0.3), "std": pytest.approx(0.1), "n": 3}
    assert summary["warp_error"] == {"mean": pytest.approx(0.01), "std": 0.0, "n": 1}


def test_describe_records_model_and_clamp_policy(config):
    described = describe_metrics(["clip_score", "frame_consistency", "warp_error", "fvd"], config)
    assert described["clip_score"]["model"] == config.clip.model
    assert described["clip_score"]["clamp"] == "none"
    assert described["clip_score"]["higher_is_better"] is True
    assert described["frame_consistency"]["pairs"] == "consecutive"
    assert described["warp_error"]["higher_is_better"] is False
    assert "DIS" in described["warp_error"]["flow"]
    assert described["fvd"]["num_frames"] == 16


def test_config_from_hydra_style_mapping():
    cfg = OmegaConf.create({
        "_target_": "ignored", "names": ["clipsim"], "device": "cpu",
        "clip": {"clamp": "per_frame"}, "is": {"splits": 3}, "fvd": {"i3d_path": "/x/i3d.pt"},
    })
    config = MetricsConfig.from_dict(cfg)
    assert config.clip.clamp == "per_frame" and config.clip.model == "openai/clip-vit-base-patch32"
    assert config.is_.splits == 3 and config.fvd.i3d_path == "/x/i3d.pt"
    with pytest.raises(UserInputError, match=r"unknown config key metrics\.clip\.modle"):
        MetricsConfig.from_dict({"clip": {"modle": "x"}})
    with pytest.raises(UserInputError, match=r"unknown config key metrics\.fdv"):
        MetricsConfig.from_dict({"fdv": {}})
    with pytest.raises(UserInputError, match=r"metrics\.clip\.clamp=max"):
        MetricsConfig.from_dict({"clip": {"clamp": "max"}})


def test_image_fidelity_is_the_clip_cosine_to_the_image_prompt(config, video):
    """image_fidelity (image prompts) = mean over frames of cos(CLIP frame, CLIP image prompt): 1 for a video of the
    image prompt itself, the style cosine's value against the same image, and refused without an image prompt."""
    embedder = load_clip(config.clip.model, batch_size=2)
    subject = video[0]
    same = compute_metrics(np.stack([subject] * 3), None, None, ["image_fidelity"], config, image_prompt=subject)
    assert same["image_fidelity"] == pytest.approx(1.0, abs=1e-5)
    value = compute_metrics(video, None, None, ["image_fidelity"], config, image_prompt=video[3])["image_fidelity"]
    assert value == pytest.approx(style_fidelity(embedder, video, video[3]), abs=1e-6)
    assert value < 1.0 - 1e-4  # frames 0-2 are not the image prompt
    with pytest.raises(UserInputError, match="image_fidelity needs the image prompt"):
        compute_metrics(video, None, None, ["image_fidelity"], config)
