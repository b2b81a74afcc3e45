"""data=toy: toy-world clips rendered at any frame rate, as the video datasets give them (VideoGen's toy build)."""

import numpy as np
import pytest

from stylevid.data import toy_world
from stylevid.data.toy_clips import ToyClipDataset
from stylevid.errors import UserInputError


def test_items_are_seeded_and_carry_the_rate_they_were_rendered_at():
    dataset = ToyClipDataset(count=4, frames=3, stride=[2, 8], size=32, seed=5)
    first, again = dataset[1], dataset[1]
    assert first["pixel_values"].shape == (3, 3, 32, 32)
    assert first["pixel_values"].equal(again["pixel_values"]) and first["caption"] == again["caption"]
    assert first["fps"] in (8 * 8 / 2, 8 * 8 / 8)
    dataset.set_epoch(1)
    assert not dataset[1]["pixel_values"].equal(first["pixel_values"])  # a fresh scene per epoch


def test_a_sub_frame_clip_is_the_toy_world_rendered_between_its_frames():
    """At 8 sub-frames per toy frame the middle of a 3-frame clip at stride 4 is the scene half a toy frame on:
    the object's centroid lies between the outer frames' (a translating scene)."""
    dataset = ToyClipDataset(count=64, frames=3, stride=4, size=64, seed=0)
    checked = 0
    for index in range(64):
        frames, scene, caption, _ = dataset.clip(index)
        if scene.motion not in ("left", "right"):
            continue
        xs = [toy_world.foreground_centroid(frame)[0] for frame in frames]
        assert xs[0] < xs[1] < xs[2] if scene.motion == "right" else xs[0] > xs[1] > xs[2]
        assert xs[1] == pytest.approx((xs[0] + xs[2]) / 2, abs=0.6)
        assert scene.motion in caption.replace("moving ", "")
        checked += 1
    assert checked >= 8


def test_a_clip_longer_than_the_toy_world_is_one_line():
    with pytest.raises(UserInputError, match="span 15.5 toy frames"):
        ToyClipDataset(count=1, frames=32, stride=4)
    with pytest.raises(UserInputError, match="data.size"):
        ToyClipDataset(count=1, frames=2, stride=4, size=48 + 4)
