"""OpenPose-style skeleton maps for the pose ControlNet, and keypoint detectors to feed them.

The pose ControlNet was trained on skeletons drawn in the OpenPose body format, so the drawing
follows that convention exactly:
  * 18 keypoints in OpenPose's COCO-18 order (`OPENPOSE_KEYPOINTS`), with a neck that COCO lacks;
  * 17 limbs (`OPENPOSE_LIMBS`), each a filled ellipse 4 px wide along the bone in its own colour,
    all limbs then dimmed to 60% (drawn at 0.6 alpha over the black background);
  * every keypoint a filled circle of radius 4 in its own colour, drawn last at full strength;
  * colours from OpenPose's 18-colour list, a hue wheel from red through green and blue to magenta,
    as RGB (the ControlNet maps are RGB: the neck to right shoulder limb is red).
A keypoint is missing when its confidence is 0 (or not above `min_confidence`) or any of its values
is NaN; missing keypoints and the limbs touching them are not drawn. Any number of people.

Keypoints come from a `KeypointDetector`: anything with `detect(frame) -> list of (18, 3) arrays`
of (x, y, confidence) in the frame's pixels. `VitPoseDetector` wraps transformers' ViTPose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
import torch

from stylevid.conditions import load_annotator_weights

OPENPOSE_KEYPOINTS = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

# Pairs of OPENPOSE_KEYPOINTS indices: shoulders, arms, hips and legs from the neck, then the head.
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip

# Colour i is keypoint i's colour and limb i's colour: a hue wheel in steps of 85.
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

LIMB_ALPHA = 0.6

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# For each OpenPose keypoint, the COCO keypoint it is (None: the neck, made from the shoulders).
_COCO_INDEX_FOR_OPENPOSE = tuple(
    None if name == "neck" else COCO_KEYPOINTS.index(name) for name in OPENPOSE_KEYPOINTS
)

DEFAULT_POSE_MODEL = "usyd-community/vitpose-base-simple"


# --- rendering ----------------------------------------------------------------------------------


def render_pose(
    people: Sequence[np.ndarray],
    height: int,
    width: int,
    *,
    limb_width: int = 4,
    joint_radius: int = 4,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """Draw people's OpenPose-18 keypoints ((18, 3): x, y, confidence in pixels) as a uint8 (height, width, 3) map."""
    visible_people = [_visible_keypoints(person, min_confidence) for person in people]
    canvas = np.zeros((height, width, 3), np.uint8)

    for limb_index, (start, end) in enumerate(OPENPOSE_LIMBS):
        for keypoints, visible in visible_people:
            if not (visible[start] and visible[end]):
                continue
            (x0, y0), (x1, y1) = keypoints[start, :2], keypoints[end, :2]
            center = (round((x0 + x1) / 2), round((y0 + y1) / 2))
            half_length = round(math.hypot(x1 - x0, y1 - y0) / 2)
            angle = round(math.degrees(math.atan2(y1 - y0, x1 - x0)))
            polygon = cv2.ellipse2Poly(center, (half_length, limb_width), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, OPENPOSE_COLORS[limb_index])
    # Dimming the whole limb layer is the same as drawing it at 0.6 alpha over black.
    canvas = (canvas * LIMB_ALPHA).astype(np.uint8)

    for keypoints, visible in visible_people:
        for index in np.flatnonzero(visible):
            center = (round(keypoints[index, 0]), round(keypoints[index, 1]))
            cv2.circle(canvas, center, joint_radius, OPENPOSE_COLORS[index], thickness=-1)
    return canvas


def _visible_keypoints(person: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    keypoints = np.asarray(person, dtype=np.float64)
    if keypoints.shape != (18, 3):
        raise ValueError(f"a person is an (18, 3) array of OpenPose keypoints, got shape {keypoints.shape}")
    visible = np.isfinite(keypoints).all(axis=1) & (np.nan_to_num(keypoints[:, 2]) > min_confidence)
    return keypoints, visible


def coco17_to_openpose18(coco_keypoints: np.ndarray) -> np.ndarray:
    """Reorder COCO-17 (x, y, confidence) rows into OpenPose-18, adding the neck.

    The neck is the midpoint of the shoulders with the lower of their confidences; it is missing
    (all zeros) when either shoulder is.
    """
    coco = np.asarray(coco_keypoints, dtype=np.float64)
    if coco.shape != (17, 3):
        raise ValueError(f"COCO keypoints are a (17, 3) array, got shape {coco.shape}")
    openpose = np.zeros((18, 3))
    for openpose_index, coco_index in enumerate(_COCO_INDEX_FOR_OPENPOSE):
        if coco_index is not None:
            openpose[openpose_index] = coco[coco_index]
    shoulders = coco[[COCO_KEYPOINTS.index("left_shoulder"), COCO_KEYPOINTS.index("right_shoulder")]]
    if np.isfinite(shoulders).all() and (shoulders[:, 2] > 0).all():
        neck = OPENPOSE_KEYPOINTS.index("neck")
        openpose[neck, :2] = shoulders[:, :2].mean(axis=0)
        openpose[neck, 2] = shoulders[:, 2].min()
    return openpose


# --- detectors ----------------------------------------------------------------------------------


class KeypointDetector(Protocol):
    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        """People in a uint8 (H, W, 3) RGB frame, each an (18, 3) OpenPose array of (x, y, confidence) in pixels."""
        ...


class VitPoseDetector:
    """transformers' ViTPose (a top-down COCO-17 estimator) as a `KeypointDetector`.

    ViTPose estimates keypoints inside given person boxes. Without a person detector the whole frame
    is taken as the one box, which suits the usual pose-control input, a single dancer filling the
    frame; for crowds, pass a detector of your own that supplies boxes.
    """

    def __init__(self, model, image_processor, *, device: str | torch.device = "cpu", min_confidence: float = 0.3):
        self.model = model.to(device).eval()
        self.image_processor = image_processor
        self.device = torch.device(device)
        # ViTPose scores are heatmap peaks; below ~0.3 the point is usually occluded or out of frame.
        self.min_confidence = min_confidence

    @classmethod
    def from_pretrained(
        cls,
        path: str = DEFAULT_POSE_MODEL,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        min_confidence: float = 0.3,
        local_files_only: bool = False,
    ) -> VitPoseDetector:
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        options = dict(what="pose annotator", option="annotator.path", local_files_only=local_files_only)
        model = load_annotator_weights(VitPoseForPoseEstimation.from_pretrained, path, dtype=dtype, **options)
        image_processor = load_annotator_weights(
            AutoImageProcessor.from_pretrained, path, required_file="preprocessor_config.json", **options
        )
        return cls(model, image_processor, device=device, min_confidence=min_confidence)

    @torch.inference_mode()
    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        height, width = frame.shape[:2]
        boxes = [[[0.0, 0.0, float(width), float(height)]]]  # COCO boxes are (x, y, width, height)
        inputs = self.image_processor(frame, boxes=boxes, return_tensors="pt")
        extra = {}
        if getattr(self.model.config.backbone_config, "num_experts", 1) > 1:
            # ViTPose+ checkpoints hold one head per training set; index 0 is COCO.
            extra["dataset_index"] = torch.zeros(1, dtype=torch.long, device=self.device)
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.model.dtype), **extra)
        outputs.heatmaps = outputs.heatmaps.float().cpu()
        (people,) = self.image_processor.post_process_pose_estimation(outputs, boxes=boxes)

        detected = []
        for person in people:
            coco = np.concatenate([person["keypoints"].numpy(), person["scores"].numpy()[:, None]], axis=1)
            coco[coco[:, 2] < self.min_confidence, 2] = 0.0  # confidence 0 marks a keypoint as missing
            detected.append(coco17_to_openpose18(coco))
        return detected


def pose_maps(
    frames: Sequence[np.ndarray],
    detector: KeypointDetector | None = None,
    path: str = DEFAULT_POSE_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    min_confidence: float = 0.3,
    limb_width: int = 4,
    joint_radius: int = 4,
) -> np.ndarray:
    """Skeleton maps for a clip: uint8 (N, H, W, 3), keypoints from `detector` or a ViTPose loaded from `path`.

    `device`, `dtype` and `min_confidence` configure the ViTPose loaded from `path`; a given detector keeps its own.
    """
    if detector is None:
        detector = VitPoseDetector.from_pretrained(path, device=device, dtype=dtype, min_confidence=min_confidence)
    maps = []
    for frame in frames:
        height, width = frame.shape[:2]
        people = detector.detect(frame)
        maps.append(render_pose(people, height, width, limb_width=limb_width, joint_radius=joint_radius))
    return np.stack(maps)


def tiny_pose_detector(seed: int = 0, device: str | torch.device = "cpu") -> VitPoseDetector:
    """A random ViTPose of about 45k parameters, built in memory, for tests and smoke runs (its poses mean nothing)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(
        image_size=[64, 48],
        patch_size=[16, 16],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        out_indices=[2],
    )
    config = VitPoseConfig(backbone_config=backbone, num_labels=len(COCO_KEYPOINTS), initializer_range=0.2)
    image_processor = VitPoseImageProcessor(size={"height": 64, "width": 48})
    # min_confidence 0: a random model's heatmap peaks are low, and tests want keypoints to draw.
    return VitPoseDetector(VitPoseForPoseEstimation(config), image_processor, device=device, min_confidence=0.0)
