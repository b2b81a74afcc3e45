"""The toy world's generator: determinism, captions, ground-truth maps, motion, files for training."""

import cv2
import numpy as np
import pytest

from stylevid.data import toy_world
from stylevid.data.videos import ClipSpec, VideoClipDataset, folder_records
from stylevid.toy import judge
from stylevid.training.toy import word_tokenizer


def test_scenes_and_videos_are_a_function_of_the_seed():
    first, again, other = toy_world.scenes(5, seed=7), toy_world.scenes(5, seed=7), toy_world.scenes(5, seed=8)
    assert first == again and first != other
    assert np.array_equal(toy_world.video_array(first[0]), toy_world.video_array(again[0]))
    video = toy_world.video_array(first[0])
    assert video.shape == (toy_world.FRAMES, 64, 64, 3) and video.dtype == np.uint8


def test_captions_name_the_attributes_and_every_word_is_one_token():
    scene = toy_world.Scene("red", "circle", "small", "right", "stripes", "gray", 20.0, 30.0)
    assert scene.caption() == "a small red circle moving right on a gray striped background"
    assert scene.caption(size=False, background=False) == "a red circle moving right"
    orange = toy_world.Scene("orange", "star", "large", "up", "plain", "olive", 20.0, 30.0)
    assert orange.caption(size=False) == "an orange star moving up on an olive background"
    assert orange.caption(background_colour=False) == "a large orange star moving up on a background"
    tokenizer = word_tokenizer()
    rng = np.random.default_rng(0)
    for scene in toy_world.scenes(50, seed=1):
        caption = scene.random_caption(rng)
        assert set(caption.split()) <= set(toy_world.vocabulary())
        ids = tokenizer(caption).input_ids
        assert len(ids) == len(caption.split()) + 2  # BOS, one token per word, EOS


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
def test_translating_objects_travel_the_stated_way_and_stay_in_frame(motion):
    for scene in toy_world.scenes(6, seed=3, motion=motion, shape="circle"):
        frames = toy_world.render_video(scene)
        start, end = (np.argwhere(f.mask)[:, ::-1].mean(0) for f in (frames[0], frames[-1]))
        dx, dy = toy_world.DIRECTIONS[motion]
        assert np.allclose(end - start, np.array([dx, dy]) * toy_world.TRAVEL, atol=1.0)
        assert all(f.mask[0].sum() + f.mask[-1].sum() + f.mask[:, 0].sum() + f.mask[:, -1].sum() == 0 for f in frames)
        # The judge reads the same direction from the pixels alone (no mask).
        assert judge.motion_direction(np.stack([f.image for f in frames])) == motion


def test_growing_and_shrinking_change_the_area_monotonically():
    for motion, sign in (("grow", 1), ("shrink", -1)):
        scene = toy_world.scenes(1, seed=4, motion=motion, shape="square")[0]
        areas = [int(f.mask.sum()) for f in toy_world.render_video(scene)]
        assert all(sign * (b - a) >= 0 for a, b in zip(areas, areas[1:])) and sign * (areas[-1] - areas[0]) > 100


def test_depth_edges_and_pose_ground_truth():
    scene = toy_world.Scene("blue", "person", "large", "bounce", "plain", "white", 32.0, 40.0, phase=0.3)
    frame = toy_world.render_frame(scene, 5)
    inside, outside = frame.mask.astype(bool), ~frame.mask.astype(bool)
    assert frame.depth[inside].min() > frame.depth[outside].max()  # larger is nearer: the figure is in front
    # On a plain background, edges lie on what is drawn (the object and its trail) or right beside it, and
    # they trace the object's outline.
    edges = frame.edges.astype(bool)
    drawn = (frame.image != toy_world.background_image(scene)).any(-1)
    assert drawn[inside].all()
    assert not (edges & ~cv2.dilate(drawn.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)).any()
    outline = inside & ~cv2.erode(frame.mask, np.ones((3, 3), np.uint8)).astype(bool)
    near_edge = cv2.dilate(frame.edges, np.ones((3, 3), np.uint8)).astype(bool)
    assert near_edge[outline].mean() > 0.9
    assert frame.keypoints.shape == (18, 3)
    pose = toy_world.pose_map(frame)
    assert pose.shape == (64, 64, 3) and pose.any()
    square = toy_world.render_frame(toy_world.Scene("red", "square", "small", "left", "plain", "gray", 40.0, 30.0), 0)
    assert square.keypoints is None and not toy_world.pose_map(square).any()


def test_foreground_centroid_finds_the_object_on_every_background_and_colour():
    """The judge of generated motion: every object colour on every background tone and pattern, trail left out."""
    rng = np.random.default_rng(5)
    for colour in toy_world.COLOURS:
        for background in toy_world.BACKGROUND_COLOURS:
            pattern = str(rng.choice(list(toy_world.PATTERNS)))
            scene = toy_world.random_scene(rng, colour=colour, background=background, pattern=pattern, shape="square", motion="right")
            frame = toy_world.render_frame(scene, 8)
            expected = np.argwhere(frame.mask)[:, ::-1].mean(0)
            assert np.allclose(toy_world.foreground_centroid(frame.image), expected, atol=1.0), (colour, background, pattern)


def test_backgrounds_are_muted_and_their_patterns_keep_the_hue():
    for background in toy_world.BACKGROUND_COLOURS:
        for pattern in toy_world.PATTERNS:
            scene = toy_world.Scene("red", "circle", "small", "left", pattern, background, 30.0, 30.0)
            pixels = toy_world.background_image(scene).reshape(-1, 3).astype(int)
            assert (pixels.max(1) - pixels.min(1)).max() <= 75
            # Every tone of the pattern is the colour shifted by the same amount on every channel.
            shifts = np.unique(pixels, axis=0) - np.array(toy_world.BACKGROUND_COLOURS[background])
            assert (shifts == shifts[:, :1]).all()


def test_colour_statistics_and_style_distance():
    red = np.zeros((4, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert np.allclose(judge.colour_statistics(red), [1, 0, 0, 0, 0, 0])
    assert judge.style_distance(red, red[0]) == 0
    sunset = toy_world.style_image("sunset", size=64)
    assert np.array_equal(sunset, toy_world.style_image("sunset", size=64))
    assert judge.style_distance(sunset[None], sunset) < judge.style_distance(red, sunset)


def test_written_videos_train_through_the_dataset(tmp_path):
    paths = toy_world.write_videos(tmp_path, count=3, seed=2)
    records = folder_records(tmp_path)
    assert [r.path for r in records] == paths
    assert all(set(r.caption.split()) <= set(toy_world.vocabulary()) for r in records)
    item = VideoClipDataset(records, ClipSpec(frames=16, stride=1, size=64, flip=False), seed=0)[0]
    assert item["pixel_values"].shape == (16, 3, 64, 64) and item["skipped"] == 0
    original = toy_world.video_array(toy_world.scenes(1, seed=2)[0])
    decoded = ((item["pixel_values"].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()
    assert np.abs(decoded - original).mean() < 8  # mp4 compression only


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
def test_a_single_frame_shows_the_direction_of_motion(motion):
    """The trail (fainter copies of the object) lies behind it, so one frame tells which way it moves."""
    scene = toy_world.scenes(1, seed=11, shape="square", motion=motion, pattern="plain")[0]
    frame = toy_world.render_frame(scene, 8)
    trail = (frame.image != toy_world.background_image(scene)).any(-1) & ~frame.mask.astype(bool)
    assert trail.sum() > 20
    offset = np.argwhere(trail)[:, ::-1].mean(0) - np.argwhere(frame.mask)[:, ::-1].mean(0)  # (x, y)
    dx, dy = toy_world.DIRECTIONS[motion]
    assert float(np.dot(offset, (dx, dy))) < -4.0  # behind, by several pixels
    # Faint: blended with the background, at most TRAIL_OPACITY of the object's colour (where it is over the
    # plain background), and fading with distance behind the object.
    background = toy_world.background_image(scene)[trail].astype(float)
    colour = np.array(toy_world.COLOURS[scene.colour], float)
    opacity = ((frame.image[trail] - background) / (colour - background + 1e-9)).max(-1)
    assert opacity.max() <= toy_world.TRAIL_OPACITY + 0.02 and opacity.min() > 0
    behind = -(np.argwhere(trail)[:, ::-1] @ np.array([dx, dy]))
    assert np.corrcoef(behind, opacity)[0, 1] < -0.5


def test_the_judges_standard_error_is_the_sample_deviation_over_the_root_of_the_count():
    # gains 0.1, 0.3, 0.2, 0.0: sample standard deviation sqrt(0.05 / 3), over sqrt(4)
    assert judge.standard_error([0.1, 0.3, 0.2, 0.0]) == pytest.approx(np.sqrt(0.05 / 3) / 2)
    assert np.isnan(judge.standard_error([0.4]))
