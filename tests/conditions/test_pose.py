"""OpenPose rendering: exact colours at joints and limbs, missing keypoints, COCO mapping, ViTPose detector."""

import numpy as np
import pytest

from stylevid.conditions.pose import (
    COCO_KEYPOINTS,
    OPENPOSE_COLORS,
    OPENPOSE_KEYPOINTS,
    OPENPOSE_LIMBS,
    VitPoseDetector,
    coco17_to_openpose18,
    pose_maps,
    render_pose,
    tiny_pose_detector,
)
from stylevid.errors import UserInputError

NECK, R_SHOULDER, L_SHOULDER, R_HIP, R_KNEE, NOSE, L_HIP = (
    OPENPOSE_KEYPOINTS.index(name)
    for name in ("neck", "right_shoulder", "left_shoulder", "right_hip", "right_knee", "nose", "left_hip")
)


def person(points: dict[int, tuple[float, float, float]]) -> np.ndarray:
    keypoints = np.zeros((18, 3))
    for index, value in points.items():
        keypoints[index] = value
    return keypoints


def dimmed(color):
    return tuple(int(channel * 0.6) for channel in color)


def limb_color(start, end):
    return OPENPOSE_COLORS[OPENPOSE_LIMBS.index((start, end))]


def test_the_convention_tables_are_complete():
    assert len(OPENPOSE_KEYPOINTS) == 18 and len(OPENPOSE_COLORS) == 18 and len(OPENPOSE_LIMBS) == 17
    assert len(set(OPENPOSE_LIMBS)) == 17
    # The published convention's first limb, neck to right shoulder, is drawn red.
    assert OPENPOSE_LIMBS[0] == (NECK, R_SHOULDER) and OPENPOSE_COLORS[0] == (255, 0, 0)


def test_joints_are_drawn_in_their_colour_and_limbs_dimmed_to_60_percent():
    body = person({
        NECK: (32, 20, 1.0),
        R_SHOULDER: (16, 20, 1.0),
        L_SHOULDER: (48, 20, 0.9),
        R_HIP: (20, 50, 1.0),
        R_KNEE: (20, 80, 1.0),
    })  # fmt: skip
    canvas = render_pose([body], 96, 64)
    assert canvas.shape == (96, 64, 3) and canvas.dtype == np.uint8

    for index in (NECK, R_SHOULDER, L_SHOULDER, R_HIP, R_KNEE):
        x, y = body[index, :2].astype(int)
        assert tuple(canvas[y, x]) == OPENPOSE_COLORS[index]
    # Limb midpoints, away from any joint circle.
    assert tuple(canvas[20, 24]) == dimmed(limb_color(NECK, R_SHOULDER)) == (153, 0, 0)
    assert tuple(canvas[20, 40]) == dimmed(limb_color(NECK, L_SHOULDER))
    assert tuple(canvas[35, 26]) == dimmed(limb_color(NECK, R_HIP))
    assert tuple(canvas[65, 20]) == dimmed(limb_color(R_HIP, R_KNEE))
    # A limb is about 2 * 4 px wide: beside the shin is background.
    assert tuple(canvas[65, 28]) == (0, 0, 0) and tuple(canvas[65, 12]) == (0, 0, 0)
    assert tuple(canvas[90, 60]) == (0, 0, 0)


def test_missing_keypoints_and_their_limbs_are_not_drawn():
    body = person({
        NECK: (32, 40, 1.0),
        R_SHOULDER: (16, 40, 1.0),
        NOSE: (32, 10, 0.0),  # confidence 0: missing
        L_SHOULDER: (48, 40, np.nan),  # NaN: missing
        R_HIP: (np.nan, np.nan, 1.0),
        L_HIP: (40, 70, 0.2),  # below min_confidence
    })  # fmt: skip
    canvas = render_pose([body], 96, 64, min_confidence=0.3)
    assert (canvas[0:30] == 0).all()  # no nose, no neck-to-nose limb
    assert (canvas[:, 38:] == 0).all()  # no left shoulder, no left hip, no limbs to them
    assert tuple(canvas[40, 24]) == (153, 0, 0)  # the visible limb is still there
    assert (canvas[50:] == 0).all()


def test_several_people_are_drawn():
    first = person({NECK: (10, 10, 1.0), R_SHOULDER: (4, 10, 1.0)})
    second = person({NECK: (50, 50, 1.0), R_SHOULDER: (44, 50, 1.0)})
    canvas = render_pose([first, second], 64, 64)
    assert tuple(canvas[10, 10]) == tuple(canvas[50, 50]) == OPENPOSE_COLORS[NECK]
    assert tuple(canvas[10, 4]) == tuple(canvas[50, 44]) == OPENPOSE_COLORS[R_SHOULDER]
    assert (render_pose([], 64, 64) == 0).all()


def test_coco17_is_reordered_into_openpose18_with_a_neck_between_the_shoulders():
    # Row i of the COCO array holds (i, 100 + i, confidence) so each row names its source.
    coco = np.stack([np.arange(17.0), 100 + np.arange(17.0), np.linspace(0.5, 0.9, 17)], axis=1)
    openpose = coco17_to_openpose18(coco)
    for openpose_index, name in enumerate(OPENPOSE_KEYPOINTS):
        if name != "neck":
            np.testing.assert_array_equal(openpose[openpose_index], coco[COCO_KEYPOINTS.index(name)])
    assert openpose[OPENPOSE_KEYPOINTS.index("right_shoulder"), 0] == 6  # COCO index 6
    assert openpose[OPENPOSE_KEYPOINTS.index("left_eye"), 0] == 1  # COCO index 1
    left, right = coco[5], coco[6]
    np.testing.assert_allclose(openpose[NECK], [(left[0] + right[0]) / 2, (left[1] + right[1]) / 2, left[2]])


def test_the_neck_is_missing_when_a_shoulder_is():
    coco = np.ones((17, 3))
    coco[COCO_KEYPOINTS.index("right_shoulder"), 2] = 0.0
    assert coco17_to_openpose18(coco)[NECK, 2] == 0.0


def test_vitpose_detector_returns_one_openpose_person_per_frame():
    detector = tiny_pose_detector(seed=0)
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (found,) = detector.detect(frame)
    assert found.shape == (18, 3)
    if (found[[R_SHOULDER, L_SHOULDER], 2] > 0).all():
        np.testing.assert_allclose(found[NECK, :2], found[[R_SHOULDER, L_SHOULDER], :2].mean(axis=0))
    maps = pose_maps([frame, frame], detector=detector)
    assert maps.shape == (2, 48, 64, 3) and maps.dtype == np.uint8
    np.testing.assert_array_equal(maps[0], render_pose([found], 48, 64))


def test_vitpose_drops_keypoints_below_its_confidence_threshold():
    detector = tiny_pose_detector(seed=0)
    frame = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (everything,) = detector.detect(frame)
    not_neck = np.arange(18) != NECK
    threshold = float(np.median(everything[not_neck, 2]))
    detector.min_confidence = threshold
    (confident,) = detector.detect(frame)
    kept = everything[:, 2] >= threshold
    np.testing.assert_allclose(confident[not_neck & kept], everything[not_neck & kept])
    assert (confident[not_neck & ~kept, 2] == 0).all()
    # With a threshold above every score, nothing is drawn.
    detector.min_confidence = np.inf
    assert (pose_maps([frame], detector=detector) == 0).all()


def test_vitpose_loads_from_a_local_folder(tmp_path):
    tiny = tiny_pose_detector(seed=0)
    tiny.model.save_pretrained(tmp_path)
    tiny.image_processor.save_pretrained(tmp_path)
    loaded = VitPoseDetector.from_pretrained(str(tmp_path), min_confidence=0.0, local_files_only=True)
    frame = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.detect(frame)[0], tiny.detect(frame)[0], rtol=1e-5, atol=1e-4)


def test_missing_pose_model_names_the_setting_to_pass(tmp_path):
    with pytest.raises(UserInputError, match="annotator.path .*no-vitpose does not exist; pass annotator.path="):
        VitPoseDetector.from_pretrained(str(tmp_path / "no-vitpose"))
