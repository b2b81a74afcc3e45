"""Condition maps: the annotate dispatcher, saving with a run, loading back with count and size checks."""

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from stylevid.conditions.canny import canny_maps
from stylevid.conditions.depth import tiny_depth_annotator
from stylevid.conditions.maps import annotate, load_condition_maps, save_condition_maps
from stylevid.conditions.pose import render_pose, tiny_pose_detector
from stylevid.errors import UserInputError


def clip(count=3, height=32, width=48, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (count, height, width, 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        cv2.circle(frame, (12 + 8 * index, 16), 7, (255, 255, 255), thickness=-1)  # a moving disc
    return frames


def test_annotate_canny_equals_canny_maps_with_its_options():
    frames = clip()
    np.testing.assert_array_equal(
        annotate("canny", frames, low_threshold=50, high_threshold=150), canny_maps(frames, 50, 150)
    )


def test_annotate_depth_and_pose_use_the_given_models():
    frames = clip(count=2)
    depth = tiny_depth_annotator()
    np.testing.assert_array_equal(annotate("depth", frames, annotator=depth), depth(frames))
    detector = tiny_pose_detector()
    pose = annotate("pose", frames, detector=detector)
    np.testing.assert_array_equal(pose[1], render_pose(detector.detect(frames[1]), 32, 48))


def test_annotate_rejects_unknown_kinds_and_options():
    with pytest.raises(UserInputError, match="'edges' is not one of canny, depth, pose"):
        annotate("edges", clip())
    with pytest.raises(UserInputError, match="canny annotator does not take sigma; it takes low_threshold, high_threshold"):
        annotate("canny", clip(), sigma=2)


def test_saved_maps_load_back_exactly(tmp_path):
    maps = annotate("canny", clip(count=3))
    folder = save_condition_maps(maps, tmp_path / "run", "canny")
    assert folder == tmp_path / "run" / "conditions" / "canny"
    assert sorted(file.name for file in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    np.testing.assert_array_equal(load_condition_maps(folder, 3, height=32, width=48), maps)
    # Fewer frames than saved: the first ones.
    np.testing.assert_array_equal(load_condition_maps(folder, 2, height=32, width=48), maps[:2])


def test_saving_never_overwrites_maps(tmp_path):
    save_condition_maps(clip(count=1), tmp_path, "depth")
    with pytest.raises(FileExistsError):
        save_condition_maps(clip(count=1), tmp_path, "depth")


def test_too_few_maps_give_both_counts(tmp_path):
    folder = save_condition_maps(clip(count=3), tmp_path, "canny")
    with pytest.raises(UserInputError, match=r"condition.maps .* has 3 frames after start=0 stride=1 .*; 8 requested"):
        load_condition_maps(folder, 8, height=32, width=48)


def test_maps_of_another_size_give_both_sizes_unless_fitting_is_asked(tmp_path):
    folder = save_condition_maps(clip(count=2, height=32, width=48), tmp_path, "pose")
    with pytest.raises(UserInputError, match="maps are 32x48 .* generation asks for 64x96"):
        load_condition_maps(folder, 2, height=64, width=96)
    fitted = load_condition_maps(folder, 2, height=64, width=96, fit="crop")
    assert fitted.shape == (2, 64, 96, 3)


def test_maps_of_mixed_sizes_are_a_user_error(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    cv2.imwrite(str(folder / "0000.png"), np.zeros((32, 48, 3), np.uint8))
    cv2.imwrite(str(folder / "0001.png"), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(UserInputError, match="frames of different sizes"):
        load_condition_maps(folder, 2, height=32, width=48)


def test_maps_load_from_a_video(tmp_path):
    path = tmp_path / "depth.mp4"
    levels = np.arange(4, dtype=np.uint8)[:, None, None, None] * 60
    iio.imwrite(path, np.broadcast_to(levels, (4, 32, 48, 3)).copy(), fps=8)
    maps = load_condition_maps(path, 4, height=32, width=48)
    assert maps.shape == (4, 32, 48, 3)
    np.testing.assert_allclose(maps.mean(axis=(1, 2, 3)), [0, 60, 120, 180], atol=3)
