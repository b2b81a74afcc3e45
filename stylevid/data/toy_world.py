"""The toy world: a seeded generator of 64x64 images and 16-frame videos of simple shapes, with captions.

Every scene is a handful of attributes (`Scene`): a foreground colour and shape (circle, square, triangle,
star, or a stick-figure person), a size, a motion (left, right, up, down, growing, shrinking, bouncing)
and a background (plain, striped, checkered or gradient, in a neutral or muted colour). Its caption is built from
the attributes ("a small red circle moving right on a gray striped background"); training uses captions
with optional parts dropped (`random_caption`) so that short prompts ("a red circle moving right") are
in distribution. For every frame the world also gives the ground truth a real video would need annotators
for: a depth map (foreground near, background far), an edge map (the boundaries of the drawn regions)
and, for people, OpenPose-18 keypoints with their rendered pose map (`stylevid.conditions.pose.render_pose`).

Everything is a pure function of a seed, so the toy models in `stylevid/toy/weights/` can be rebuilt
(`scripts/build_toy_world.py`) and their tests can draw fresh, reproducible scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

SIZE = 64
FRAMES = 16

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
# Backgrounds: neutral tones and muted tints. Their chroma (max - min over RGB) stays at most 75, the objects'
# is at least 140, so `foreground_centroid` can tell them apart in any generated frame. The tints give the
# T2I model background tones between the neutral ones, which a style image (stylet2v0) can pull it towards.
BACKGROUND_COLOURS = {
    "black": (25, 25, 25), "white": (235, 235, 235), "gray": (128, 128, 128), "brown": (110, 75, 45),
    "teal": (55, 115, 125), "olive": (100, 110, 40), "maroon": (135, 70, 65),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "star", "person")
SIZES = {"small": 9.0, "large": 14.0}  # radius in pixels at scale 1
PATTERNS = {"plain": "", "stripes": "striped", "checker": "checkered", "gradient": "gradient"}
MOTIONS = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "grow": "growing",
    "shrink": "shrinking",
    "bounce": "bouncing",
}
# The options of each attribute `random_scene` draws (and takes as a keyword argument to fix it).
SCENE_CHOICES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "motion": MOTIONS, "pattern": PATTERNS,
                 "background": BACKGROUND_COLOURS}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
TRAVEL = 26.0  # pixels a translating object covers over the clip
# The motion trail (`render_frame`): copies of the object 1 to TRAIL_FRAMES frames back, the nearest at
# TRAIL_OPACITY and fading linearly with the lag.
TRAIL_FRAMES = 9
TRAIL_OPACITY = 0.45

# Depth maps: larger is nearer, as MiDaS-style depth estimators (and depth ControlNets) expect.
BACKGROUND_DEPTH = 0.25
FOREGROUND_DEPTH = 0.9


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    motion: str
    pattern: str
    background: str
    x: float  # centre at frame 0, pixels
    y: float
    phase: float = 0.0  # stick figures: arm swing phase

    def caption(self, size: bool = True, background: bool = True, background_colour: bool = True,
                colour: bool = True) -> str:
        """'a [small] [red] circle moving right [on a [gray] [striped] background]' ('an orange ...', 'an olive ...');
        `colour=False` leaves the object's colour out (the toy image prompts: appearance from the image)."""
        words = ["a"] + ([self.size] if size else []) + ([self.colour] if colour else []) + [self.shape, MOTIONS[self.motion]]
        if background:
            words += ["on", "a"] + ([self.background] if background_colour else []) + [PATTERNS[self.pattern], "background"]
        return phrase(*words)

    def random_caption(self, rng: np.random.Generator, colour: bool = True) -> str:
        """A caption with optional parts dropped: the size half of the time, the background or its colour a third
        (the same draws whether or not the object's colour is named)."""
        return self.caption(size=rng.random() < 0.5, background=rng.random() > 0.3, background_colour=rng.random() > 0.3,
                            colour=colour)


def phrase(*words: str) -> str:
    """The words joined by spaces, empty ones left out, with "a" turned into "an" before a vowel ("an orange star")."""
    words = [word for word in words if word]
    return " ".join("an" if word == "a" and nxt[0] in "aeiou" else word for word, nxt in zip(words, words[1:] + [" "]))


def vocabulary() -> list[str]:
    """Every word a toy caption can use, in a fixed order."""
    words = ["a", "an", "on", "background", "moving", *SIZES, *COLOURS, *SHAPES, *BACKGROUND_COLOURS]
    words += [w for text in [*MOTIONS.values(), *PATTERNS.values()] for w in text.split()]
    return list(dict.fromkeys(w for w in words if w))


# --- scenes ---------------------------------------------------------------------------------------------------


def random_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; keyword arguments fix attributes (colour="red", motion="right", ...)."""
    pick = lambda options: str(options[int(rng.integers(len(options)))])  # noqa: E731
    colour = fixed.get("colour") or pick(list(COLOURS))
    shape = fixed.get("shape") or pick(SHAPES)
    size = fixed.get("size") or pick(list(SIZES))
    motion = fixed.get("motion") or pick(list(MOTIONS))
    pattern = fixed.get("pattern") or pick(list(PATTERNS))
    background = fixed.get("background") or pick(list(BACKGROUND_COLOURS))
    # Start so that the whole path stays inside the frame.
    margin = SIZES[size] * (1.4 if motion == "grow" else 1.0) + 2
    dx, dy = DIRECTIONS.get(motion, (0.0, 0.0))
    low_x, high_x = margin + max(0.0, -dx * TRAVEL), SIZE - margin - max(0.0, dx * TRAVEL)
    low_y, high_y = margin + max(0.0, -dy * TRAVEL), SIZE - margin - max(0.0, dy * TRAVEL)
    if motion == "bounce":
        low_y += 12
    x = float(rng.uniform(low_x, max(low_x, high_x)))
    y = float(rng.uniform(low_y, max(low_y, high_y)))
    return Scene(colour, shape, size, motion, pattern, background, x, y, float(rng.uniform(0, 2 * math.pi)))


def object_state(scene: Scene, t: float, frames: int = FRAMES) -> tuple[float, float, float]:
    """(x, y, radius) of the object at frame t."""
    progress = t / max(frames - 1, 1)
    radius = SIZES[scene.size]
    x, y = scene.x, scene.y
    if scene.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[scene.motion]
        x, y = x + dx * TRAVEL * progress, y + dy * TRAVEL * progress
    elif scene.motion == "grow":
        radius *= 0.6 + 0.8 * progress
    elif scene.motion == "shrink":
        radius *= 1.4 - 0.8 * progress
    elif scene.motion == "bounce":
        y -= 12 * abs(math.sin(2 * math.pi * progress))
    return x, y, radius


# --- drawing --------------------------------------------------------------------------------------------------


def background_image(scene: Scene) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8: the background colour, with stripes, a checkerboard or a gradient towards a contrast."""
    base = np.array(BACKGROUND_COLOURS[scene.background], np.float32)
    other = base - 70 if base.mean() > 128 else base + 70  # the pattern's second tone: same hue, lighter or darker
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if scene.pattern == "plain":
        weight = np.zeros((SIZE, SIZE), np.float32)
    elif scene.pattern == "stripes":
        weight = ((xx // 8) % 2).astype(np.float32)
    elif scene.pattern == "checker":
        weight = (((xx // 16) + (yy // 16)) % 2).astype(np.float32)
    else:
        weight = (yy / (SIZE - 1)).astype(np.float32)
    image = base * (1 - weight[..., None]) + other * weight[..., None]
    return image.round().astype(np.uint8)


def person_keypoints(x: float, y: float, radius: float, phase: float) -> np.ndarray:
    """OpenPose-18 keypoints (x, y, confidence) of a stick figure standing at (x, y), `radius` half its height."""
    h = radius
    swing = 0.5 * math.sin(phase)
    points = {
        "nose": (0, -0.8), "neck": (0, -0.55),
        "right_shoulder": (-0.25, -0.55), "left_shoulder": (0.25, -0.55),
        "right_elbow": (-0.45, -0.3 - 0.2 * swing), "left_elbow": (0.45, -0.3 + 0.2 * swing),
        "right_wrist": (-0.6, -0.05 - 0.5 * swing), "left_wrist": (0.6, -0.05 + 0.5 * swing),
        "right_hip": (-0.15, 0.1), "left_hip": (0.15, 0.1),
        "right_knee": (-0.25, 0.5), "left_knee": (0.25, 0.5),
        "right_ankle": (-0.3, 0.9), "left_ankle": (0.3, 0.9),
        "right_eye": (-0.07, -0.86), "left_eye": (0.07, -0.86), "right_ear": (-0.14, -0.82), "left_ear": (0.14, -0.82),
    }  # fmt: skip
    from ..conditions.pose import OPENPOSE_KEYPOINTS

    return np.array([[x + h * points[n][0], y + h * points[n][1], 1.0] for n in OPENPOSE_KEYPOINTS], np.float32)


def _star(x: float, y: float, r: float) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], 1)


def object_mask(scene: Scene, x: float, y: float, radius: float, keypoints: np.ndarray | None = None) -> np.ndarray:
    """(SIZE, SIZE) uint8 {0, 1}: the object's pixels."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    shift = 4  # cv2 sub-pixel coordinates: 4 fractional bits
    scale = 1 << shift

    def pts(points):
        return np.round(np.asarray(points) * scale).astype(np.int32)

    if scene.shape == "circle":
        cv2.circle(mask, (round(x * scale), round(y * scale)), round(radius * scale), 1, -1, cv2.LINE_8, shift)
    elif scene.shape == "square":
        r = radius * 0.85
        cv2.fillPoly(mask, [pts([(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)])], 1, cv2.LINE_8, shift)
    elif scene.shape == "triangle":
        corners = [(x + radius * math.cos(a), y + radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        cv2.fillPoly(mask, [pts(corners)], 1, cv2.LINE_8, shift)
    elif scene.shape == "star":
        cv2.fillPoly(mask, [pts(_star(x, y, radius * 1.15))], 1, cv2.LINE_8, shift)
    elif scene.shape == "person":
        from ..conditions.pose import OPENPOSE_LIMBS

        thickness = max(2, round(radius / 5))
        for start, end in OPENPOSE_LIMBS[:13]:  # body limbs; the head is a disc
            cv2.line(mask, tuple(pts(keypoints[start, :2])), tuple(pts(keypoints[end, :2])), 1, thickness, cv2.LINE_8, shift)
        cv2.circle(mask, tuple(pts(keypoints[0, :2])), round(radius * 0.22 * scale), 1, -1, cv2.LINE_8, shift)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return mask


@dataclass
class Frame:
    image: np.ndarray  # (SIZE, SIZE, 3) uint8
    mask: np.ndarray  # (SIZE, SIZE) uint8, 1 on the object
    depth: np.ndarray  # (SIZE, SIZE) float32 in [0, 1], larger is nearer
    edges: np.ndarray  # (SIZE, SIZE) uint8 {0, 255}
    keypoints: np.ndarray | None  # (18, 3) OpenPose keypoints for people, else None


def _pose_at(scene: Scene, t: float, frames: int) -> tuple[float, float, float, np.ndarray | None]:
    x, y, radius = object_state(scene, t, frames)
    keypoints = person_keypoints(x, y, radius, scene.phase + 2 * math.pi * t / 8) if scene.shape == "person" else None
    return x, y, radius, keypoints


def render_frame(scene: Scene, t: float, frames: int = FRAMES, background: np.ndarray | None = None,
                 trail: bool = True) -> Frame:
    """The scene at frame t; `trail=False` leaves the motion trail out (a still frame: nothing in it tells which way
    the object moves)."""
    x, y, radius, keypoints = _pose_at(scene, t, frames)
    mask = object_mask(scene, x, y, radius, keypoints)
    image = (background_image(scene) if background is None else background).copy()
    # A motion trail: a comet tail of the object's past positions, like a long exposure. It makes the direction
    # of motion visible in a single frame, as a runner's stride or a car's heading is in a photograph; without
    # it a frame of "moving left" and one of "moving right" are the same picture, the T2I model has no reason to
    # encode the direction, and a motion module (which sees the text only through the T2I model's features)
    # cannot follow it. A pixel takes the opacity of the most recent copy covering it (copies are drawn oldest
    # first, each blended with the background, not with older copies), so the tail never gets more opaque than
    # TRAIL_OPACITY and `foreground_centroid` can leave it out. A faint tail of three copies (2, 4 and 6 frames
    # back) did not survive the 64-px VAE: the judge read the direction from 61 % of frames, 29 % of their
    # reconstructions.
    colour = np.array(COLOURS[scene.colour], np.float32)
    plain = image.astype(np.float32)
    for lag in range(TRAIL_FRAMES if trail else 0, 0, -1):
        opacity = TRAIL_OPACITY * (1 - (lag - 1) / TRAIL_FRAMES)
        gx, gy, gradius, gkeypoints = _pose_at(scene, t - lag, frames)
        ghost = object_mask(scene, gx, gy, gradius, gkeypoints).astype(bool)
        image[ghost] = (plain[ghost] * (1 - opacity) + colour * opacity).round().astype(np.uint8)
    image[mask.astype(bool)] = COLOURS[scene.colour]
    # Depth: a far background plane sloping slightly up the frame; the object near, nearer when larger.
    yy = np.linspace(0.0, 0.1, SIZE, dtype=np.float32)[:, None]
    depth = np.broadcast_to(BACKGROUND_DEPTH + yy, (SIZE, SIZE)).copy()
    depth[mask.astype(bool)] = min(1.0, FOREGROUND_DEPTH * radius / SIZES["large"] * 0.8 + 0.2)
    # Edges: where the rendered image changes between neighbouring pixels (object outline, pattern borders).
    signal = image.astype(np.int16)
    change = np.zeros((SIZE, SIZE), bool)
    change[:, 1:] |= np.abs(signal[:, 1:] - signal[:, :-1]).max(-1) > 24
    change[1:, :] |= np.abs(signal[1:] - signal[:-1]).max(-1) > 24
    return Frame(image, mask, depth, (change * 255).astype(np.uint8), keypoints)


def render_video(scene: Scene, frames: int = FRAMES) -> list[Frame]:
    background = background_image(scene)
    return [render_frame(scene, t, frames, background) for t in range(frames)]


def video_array(scene: Scene, frames: int = FRAMES) -> np.ndarray:
    """(frames, SIZE, SIZE, 3) uint8."""
    return np.stack([frame.image for frame in render_video(scene, frames)])


def pose_map(frame: Frame) -> np.ndarray:
    """The frame's OpenPose-format map (black where there is no person)."""
    from ..conditions.pose import render_pose

    people = [frame.keypoints] if frame.keypoints is not None else []
    return render_pose(people, SIZE, SIZE, limb_width=1, joint_radius=1)


def scenes(count: int, seed: int = 0, **fixed) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **fixed) for _ in range(count)]


def frame_dataset(count: int, seed: int = 0, frames: int = FRAMES) -> tuple[np.ndarray, list[Scene], np.ndarray]:
    """`count` single frames, each from its own random scene at a random time: (images, scenes, frame indices)."""
    rng = np.random.default_rng(seed)
    chosen = [random_scene(rng) for _ in range(count)]
    times = rng.integers(0, frames, count)
    images = np.stack([render_frame(scene, int(t), frames).image for scene, t in zip(chosen, times)])
    return images, chosen, times


def foreground_centroid(frame: np.ndarray, min_chroma: float = 80.0) -> tuple[float, float] | None:
    """(x, y) of the object in a toy frame, from the pixels alone: the centroid of the strongly coloured ones.

    Toy objects are saturated colours and toy backgrounds neutral or muted tones (chroma, max - min over RGB,
    is at least 140 for every object colour and at most 75 for every background tone), so chroma separates
    them on any pattern. The motion trail is the object's colour at most 45 % opaque, so its chroma stays
    below three quarters of the object's; it is left out. Used to measure motion in generated videos, where there is
    no ground-truth mask.
    """
    pixels = frame.astype(np.float32)
    chroma = pixels.max(-1) - pixels.min(-1)
    weights = np.where(chroma >= max(min_chroma, 0.75 * float(chroma.max())), chroma, 0.0)
    if weights.sum() == 0:
        return None
    yy, xx = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    return float((weights * xx).sum() / weights.sum()), float((weights * yy).sum() / weights.sum())


# --- files ----------------------------------------------------------------------------------------------------


def write_videos(folder: str | Path, count: int, seed: int = 0, frames: int = FRAMES, **fixed) -> list[Path]:
    """`count` toy videos `toy_NNNNN.mp4` with caption sidecars (`.txt`), for `stylevid train motion_module data=folder`."""
    from ..io.video import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        scene = random_scene(rng, **fixed)
        path = folder / f"toy_{index:05d}.mp4"
        write_video(path, video_array(scene, frames), fps=8)
        path.with_suffix(".txt").write_text(scene.random_caption(rng) + "\n")
        paths.append(path)
    return paths


STYLE_PALETTES = {
    "sunset": [(250, 90, 40), (255, 170, 60), (190, 40, 90), (90, 20, 80)],
    "ocean": [(10, 40, 90), (20, 110, 160), (80, 190, 200), (220, 240, 240)],
    "forest": [(20, 60, 25), (60, 120, 40), (140, 170, 60), (90, 60, 30)],
}


def style_image(name: str, size: int = 256, seed: int = 0) -> np.ndarray:
    """A procedural style image: `sunset` (diagonal bands), `ocean` (waves), `forest` (blotches)."""
    rng = np.random.default_rng(seed)
    palette = np.array(STYLE_PALETTES[name], np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if name == "sunset":
        field = (xx + yy) * 3 + 0.3 * np.sin(xx * 20)
    elif name == "ocean":
        field = yy * 4 + 0.35 * np.sin(xx * 25 + 6 * yy) + 0.15 * np.sin(xx * 60)
    else:
        noise = rng.random((size // 16, size // 16)).astype(np.float32)
        field = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * 4 + rng.random((size, size)) * 0.4
    index = np.floor(field).astype(int) % len(palette)
    image = palette[index] + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_style_images(folder: str | Path) -> list[Path]:
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in STYLE_PALETTES:
        path = folder / f"{name}.png"
        Image.fromarray(style_image(name)).save(path)
        paths.append(path)
    return paths


def with_attribute(scene: Scene, **changes) -> Scene:
    return replace(scene, **changes)
