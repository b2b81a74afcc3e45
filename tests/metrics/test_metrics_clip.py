"""CLIP metrics on a tiny random CLIP: equality with torchmetrics' CLIPScore, Gen-1 consistency definitions."""

import numpy as np
import pytest
import torch

from stylevid.errors import UserInputError
from stylevid.metrics.clip import (
    build_tiny_clip,
    clip_score,
    clipsim,
    frame_consistency,
    load_clip,
    style_fidelity,
)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    # torchmetrics accepts a path only when it contains "openai" (it then calls CLIPModel.from_pretrained).
    return str(build_tiny_clip(tmp_path_factory.mktemp("clip") / "openai-tiny-clip"))


@pytest.fixture(scope="module")
def embedder(tiny_clip_dir):
    return load_clip(tiny_clip_dir, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def frames():
    # non-square frames so the processor's resize + center crop is exercised
    return np.random.default_rng(0).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)


class _TensorFeatures(torch.nn.Module):
    """transformers 5 returns a ModelOutput from get_*_features, torchmetrics 1.9 expects the tensor; this
    unwraps it and changes nothing else (same weights, same processor, same torchmetrics arithmetic)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        return self._unwrap(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return self._unwrap(self.model.get_text_features(*args, **kwargs))

    @staticmethod
    def _unwrap(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output


def _torchmetrics_clip_score(directory):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(directory)
    with torch.no_grad():
        probe = model.get_text_features(input_ids=torch.tensor([[0, 1]]))
    if isinstance(probe, torch.Tensor):  # transformers < 5: torchmetrics works on the path as is
        return CLIPScore(model_name_or_path=directory)
    return CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), CLIPProcessor.from_pretrained(directory)))


# With this tiny random CLIP, "a cat" has a positive and "a horse galloping" a negative mean cosine on `frames`,
# so both sides of the clamp are checked.
@pytest.mark.parametrize("prompt", ["a cat", "a horse galloping"])
def test_clip_score_equals_torchmetrics(tiny_clip_dir, embedder, frames, prompt):
    metric = _torchmetrics_clip_score(tiny_clip_dir)
    metric.update(torch.from_numpy(frames).permute(0, 3, 1, 2), [prompt] * len(frames))
    expected_clamped = float(metric.compute())
    expected_raw = float(metric.score / metric.n_samples)  # torchmetrics' state before its clamp

    assert clip_score(embedder, frames, prompt, clamp="mean") == pytest.approx(expected_clamped, abs=1e-4)
    assert clip_score(embedder, frames, prompt, clamp="none") == pytest.approx(expected_raw, abs=1e-4)
    assert clipsim(embedder, frames, prompt) == pytest.approx(expected_raw / 100, abs=1e-6)


def test_prompt_signs_cover_both_clamp_branches(embedder, frames):
    assert clip_score(embedder, frames, "a cat", clamp="none") > 0
    assert clip_score(embedder, frames, "a horse galloping", clamp="none") < 0
    assert clip_score(embedder, frames, "a horse galloping", clamp="mean") == 0.0


def test_per_frame_clamp_averages_clamped_frame_scores(embedder, frames):
    cosines = (embedder.embed_images(frames) * embedder.embed_texts(["pencil sketch of a man"])).sum(-1).double()
    expected = float((100 * cosines).clamp(min=0).mean())
    score = clip_score(embedder, frames, "pencil sketch of a man", clamp="per_frame")
    assert score == pytest.approx(expected, abs=1e-4)


def test_embeddings_do_not_depend_on_batch_size(tiny_clip_dir, frames):
    one = load_clip(tiny_clip_dir, batch_size=1).embed_images(frames)
    many = load_clip(tiny_clip_dir, batch_size=32).embed_images(frames)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)
    assert torch.allclose(one.norm(dim=-1), torch.ones(len(frames)), atol=1e-5)


def test_frame_consistency_follows_gen1_and_all_pairs(embedder, frames):
    a, b = frames[0], frames[1]
    cos_ab = float((embedder.embed_images(a[None]) * embedder.embed_images(b[None])).sum())
    video = np.stack([a, a, b])
    # Gen-1: mean over consecutive pairs (a,a), (a,b); all pairs adds (a,b) once more
    assert frame_consistency(embedder, video) == pytest.approx((1 + cos_ab) / 2, abs=1e-5)
    assert frame_consistency(embedder, video, pairs="all") == pytest.approx((1 + 2 * cos_ab) / 3, abs=1e-5)
    assert frame_consistency(embedder, np.stack([a] * 4)) == pytest.approx(1.0, abs=1e-5)
    assert cos_ab < 0.999


def test_style_fidelity_is_one_for_the_style_image_itself(embedder, frames):
    style = frames[2]
    assert style_fidelity(embedder, np.stack([style] * 3), style) == pytest.approx(1.0, abs=1e-5)
    mixed = style_fidelity(embedder, frames, style)
    per_frame = [style_fidelity(embedder, f[None], style) for f in frames]
    assert mixed == pytest.approx(float(np.mean(per_frame)), abs=1e-5)
    assert mixed < 1.0


def test_missing_local_clip_directory_names_the_key(tmp_path):
    with pytest.raises(UserInputError, match=r"metrics\.clip\.model="):
        load_clip(str(tmp_path / "no-such-clip"))


def test_uncached_hub_id_offline_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserInputError, match=r"HF_HUB_OFFLINE=1.*metrics\.clip\.model="):
        load_clip("stylevid-test-nobody/no-such-clip-model")


def test_prompt_is_required(embedder, frames):
    with pytest.raises(UserInputError, match="prompt"):
        clipsim(embedder, frames, "")
