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


def _first_frame_x(dataset: ToyClipDataset, motion: str, count: int = 400) -> list[float]:
    """The object's centroid x in the first frame of each of the dataset's clips of `motion`."""
    xs = []
    for index in range(count):
        frames, scene, _, _ = dataset.clip(index)
        if scene.motion == motion:
            xs.append(toy_world.foreground_centroid(frames[0])[0])
    return xs


def test_a_fitted_scene_tells_its_direction_by_where_it_starts_and_anywhere_does_not():
    """data.start=fit (the toy world's scenes) starts an object moving right on the left, so a clip's first frame
    gives its direction away; data.start=anywhere places the first frame's object independently of its motion."""
    fit = ToyClipDataset(count=400, frames=3, stride=56, size=64, seed=3)
    anywhere = ToyClipDataset(count=400, frames=3, stride=56, size=64, seed=3, start="anywhere")
    fit_gap = np.mean(_first_frame_x(fit, "left")) - np.mean(_first_frame_x(fit, "right"))
    anywhere_gap = np.mean(_first_frame_x(anywhere, "left")) - np.mean(_first_frame_x(anywhere, "right"))
    assert fit_gap > 15  # left-movers start 20+ px further right than right-movers
    assert abs(anywhere_gap) < 5
    # the same scene draws otherwise: only the placement moved
    (_, fit_scene, _, _), (_, any_scene, _, _) = fit.clip(7), anywhere.clip(7)
    assert (fit_scene.colour, fit_scene.shape, fit_scene.motion) == (any_scene.colour, any_scene.shape, any_scene.motion)
    with pytest.raises(UserInputError, match="data.start"):
        ToyClipDataset(count=1, frames=2, stride=4, start="centre")


def test_without_the_trail_every_coloured_pixel_is_the_object():
    dataset = ToyClipDataset(count=40, frames=2, stride=8, size=64, seed=1, trail=False)
    trailed = ToyClipDataset(count=40, frames=2, stride=8, size=64, seed=1)
    moving = 0
    for index in range(40):
        frames, scene, _, _ = dataset.clip(index)
        if scene.motion not in ("left", "right", "up", "down"):
            continue
        moving += 1
        trailed_frames, _, _, _ = trailed.clip(index)
        assert (frames != trailed_frames).any(axis=-1).sum() > 20  # the trail is gone ...
        object_pixels = frames[0] == np.array(toy_world.COLOURS[scene.colour], np.uint8)
        tinted = (frames[0] != toy_world.background_image(scene)).any(-1)
        assert (tinted == object_pixels.all(-1)).all()  # ... and nothing but the object differs from the background
    assert moving >= 8


def test_fixed_attributes_make_a_simpler_world():
    fixed = {"colour": "red", "shape": "circle", "background": "gray"}
    dataset = ToyClipDataset(count=30, frames=2, stride=8, size=32, seed=2, fixed=fixed)
    scenes = [dataset.clip(index)[1] for index in range(30)]
    assert all((s.colour, s.shape, s.background) == ("red", "circle", "gray") for s in scenes)
    assert len({s.motion for s in scenes}) >= 4  # what is not fixed still varies
    with pytest.raises(UserInputError, match="data.fixed.colour='crimson'"):
        ToyClipDataset(count=1, frames=2, stride=4, fixed={"colour": "crimson"})
    with pytest.raises(UserInputError, match="data.fixed.speed"):
        ToyClipDataset(count=1, frames=2, stride=4, fixed={"speed": "fast"})


def test_the_data_config_gives_fixed_attributes_and_refuses_a_bare_value():
    from omegaconf import OmegaConf

    from stylevid.data.toy_clips import toy_clip_dataset

    data = OmegaConf.create({"count": 4, "frames": 2, "stride": 8, "size": 32, "subframes": 8, "fixed": {"shape": "star"}})
    assert toy_clip_dataset(data, seed=0).clip(0)[1].shape == "star"
    data.fixed = "star"
    with pytest.raises(UserInputError, match="data.fixed must map"):
        toy_clip_dataset(data, seed=0)


def test_a_fixed_attribute_can_be_drawn_among_a_list():
    dataset = ToyClipDataset(count=60, frames=2, stride=8, size=32, seed=4, fixed={"motion": ["left", "right"]})
    motions = [dataset.clip(i)[1].motion for i in range(60)]
    assert set(motions) == {"left", "right"} and 15 < motions.count("left") < 45
    with pytest.raises(UserInputError, match="data.fixed.motion"):
        ToyClipDataset(count=1, frames=2, stride=4, fixed={"motion": ["left", "sideways"]})


def test_a_mix_gives_its_share_of_scenes_the_simpler_world():
    easy = {"colour": "red", "shape": "circle", "pattern": "plain"}
    dataset = ToyClipDataset(count=400, frames=2, stride=8, size=32, seed=5, mix={"share": 0.25, "fixed": easy})
    scenes = [dataset.clip(i)[1] for i in range(400)]
    simple = sum(s.colour == "red" and s.shape == "circle" and s.pattern == "plain" for s in scenes)
    by_chance = 400 * 0.75 / (len(toy_world.COLOURS) * len(toy_world.SHAPES) * len(toy_world.PATTERNS))
    assert abs(simple - (100 + by_chance)) < 25  # a quarter, plus the whole world's own red plain circles
    assert len({s.colour for s in scenes}) == len(toy_world.COLOURS)  # the rest is the whole world
    plain = ToyClipDataset(count=50, frames=2, stride=8, size=32, seed=5)
    assert [plain.clip(i)[2] for i in range(50)] != [dataset.clip(i)[2] for i in range(50)]
    for bad in ({"share": 1.5, "fixed": easy}, {"share": 0.5}, {"fixed": easy, "weight": 1}, {"fixed": {"colour": "teal"}}):
        with pytest.raises(UserInputError, match="data.mix"):
            ToyClipDataset(count=1, frames=2, stride=4, mix=bad)


def test_the_data_config_gives_a_mix_and_attribute_lists():
    from omegaconf import OmegaConf

    from stylevid.data.toy_clips import toy_clip_dataset

    data = OmegaConf.create({"count": 40, "frames": 2, "stride": 8, "size": 32, "subframes": 8,
                             "fixed": {"motion": ["up", "down"]}, "mix": {"share": 1.0, "fixed": {"shape": "star"}}})
    scenes = [toy_clip_dataset(data, seed=0).clip(i)[1] for i in range(40)]
    assert {s.shape for s in scenes} == {"star"} and {s.motion for s in scenes} == {"up", "down"}
