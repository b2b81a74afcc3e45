"""The toy image prompts, measured against the VideoBooth-style paper's claims on held-out toy subjects.

Every video runs `method=image_prompt model=toy` (or `method=animatediff model=toy` for text alone) through the
method's own functions on the config the CLI composes (`judge.cli_configs`), so a figure is what a user typing those
overrides gets. A held-out subject is a fresh toy scene's object drawn alone on the neutral background (the crop the
build trains on, `data.image_prompt.toy_subject_crop`); the prompt names its shape and a motion but never its colour
("a star moving right", subject=star), so the colour can only come from the image:

  * `colour_followed`: the video's majority colour (the toy CLIP's zero-shot colour over its frames) is the image
    prompt's, coarse + fine (the shipped weights at the CLI's defaults); text alone (`method=animatediff`, the same
    prompt and seed) is the chance level it is compared with;
  * `image_fidelity`: `stylevid evaluate`'s metric (mean CLIP image cosine of the frames to the image prompt, toy
    CLIP) for coarse + fine, coarse only (`method.fine=false` on the same weights: Section 3.3's stage 1), the joint
    ablation (`image_prompt_joint/`, trained with both at once for as many steps) and without position encodings
    (`method.position_encoding=false`, Section 3.4);
  * `subject_fidelity` (a diagnosis, no target): the same cosine with each frame's object alone on the neutral
    background, cropped as the image prompt is (`subject_crops`), so the frames' backgrounds do not count;
  * the same figures of the true toy clip of the subject (`ground_truth`, the scene rendered from its first frame):
    the most a video of that subject can score, since the metric also compares the frames' backgrounds and sizes
    with the crop's (measured: 0.691 on the 16 subjects, against 0.678 for coarse only);
  * `clip_score`: 100 x the CLIP cosine of the frames to the prompt with the subject's colour named (the paper's
    CLIP-Score, on the toy CLIP), for the position-encoding ablation.

Held-out data: scenes from numpy streams seeded 90_000 and up, a path the build never draws from (data=toy draws
from (seed, epoch, index) with the experiment's seed 0).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import toy_world
from ..data.image_prompt import crop_to_mask, toy_subject_crop
from ..metrics import clip as clip_metrics
from ..progress import StageReporter
from . import WEIGHTS, judge

FRAMES = 8
JOINT = "image_prompt_joint"  # the joint-training ablation's weights, beside image_prompt/ in the toy weights
# The arms, each a set of overrides on `method=image_prompt model=toy` (text alone: method=animatediff).
ARMS = {
    "coarse_fine": (),
    "coarse": ("method.fine=false",),
    "no_position_encoding": ("method.position_encoding=false",),
    "joint": (f"method.weights={WEIGHTS / JOINT}",),
}


REFERENCES = ("text_alone", "ground_truth")  # not arms of the method: text alone (animatediff), the true toy clip


def true_clip(scene: toy_world.Scene) -> np.ndarray:
    """uint8 (FRAMES, 64, 64, 3): the held-out scene itself from its first frame (the crop's), as data=toy renders
    it. Its image fidelity is what a perfect video of the subject scores: the ceiling of the metric on the toy."""
    background = toy_world.background_image(scene)
    return np.stack([toy_world.render_frame(scene, k, toy_world.FRAMES, background).image for k in range(FRAMES)])


def subject_crops(frames: np.ndarray) -> list[np.ndarray]:
    """Each frame's object (`judge.foreground_mask`) alone on the neutral background, cropped around it as the image
    prompt is (`toy_subject_crop`; a frame with no object gives none)."""
    masks = [judge.foreground_mask(frame) for frame in frames]
    return [crop_to_mask(frame, mask) for frame, mask in zip(frames, masks) if mask.any()]


class _Generator:
    """One method on one loaded set of weights; each video composes its own CLI config."""

    def __init__(self, method_name: str, *overrides: str):
        from ..methods.base import get_method

        self.name, self.method, self.overrides, self.loaded = method_name, get_method(method_name), overrides, None

    def __call__(self, *overrides: str) -> np.ndarray:
        cfg = judge.cli_configs(self.name, [[*self.overrides, *overrides]])[0]
        settings = self.method.settings(cfg)
        if self.loaded is None:  # the videos of an arm share its weights; only the settings differ
            self.loaded = self.method.load(cfg, settings, torch.device("cpu"), torch.float32, None)
        return self.method.generate(self.loaded, settings, StageReporter()).frames


def measure_image_prompt(count: int = 16, seed: int = 90_000, steps: int = 20, arms: tuple[str, ...] = tuple(ARMS),
                         *overrides: str) -> dict:
    """Every image-prompt figure on `count` held-out subjects (see the module's docstring); `overrides` go to every
    image-prompt video (e.g. method.weights=<a build elsewhere>). An arm whose weights are not built (the joint ablation) is left out and named under `missing`."""
    embedder = judge.toy_clip_embedder()
    rng = np.random.default_rng(seed)
    arms = tuple(arm for arm in arms if arm != "joint" or (WEIGHTS / JOINT / "manifest.json").is_file())
    generators = {arm: _Generator("image_prompt", f"steps={steps}", f"frames={FRAMES}", *ARMS[arm], *overrides)
                  for arm in arms}
    text_alone = _Generator("animatediff", f"steps={steps}", f"frames={FRAMES}")
    colour, fidelity, subject, score = ({arm: [] for arm in (*arms, *REFERENCES)} for _ in range(4))
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(count):
            scene = toy_world.random_scene(rng)
            crop = toy_subject_crop(scene)
            image_path = Path(tmp) / f"subject_{index}.png"
            Image.fromarray(crop).save(image_path)
            prompt = toy_world.phrase("a", scene.shape, toy_world.MOTIONS[scene.motion])
            named = toy_world.phrase("a", scene.colour, scene.shape, toy_world.MOTIONS[scene.motion])
            common = [f"prompt='{prompt}'", f"seed={seed + index}"]
            subject_embedding = embedder.embed_images(crop[None])
            videos = {arm: generate(*common, f"image_prompt={image_path}", f"subject={scene.shape}")
                      for arm, generate in generators.items()}
            videos["text_alone"] = text_alone(*common)
            videos["ground_truth"] = true_clip(scene)
            for arm, frames in videos.items():
                colour[arm].append(judge.majority_colour(embedder, frames) == scene.colour)
                fidelity[arm].append(clip_metrics.style_fidelity_of(embedder.embed_images(frames), subject_embedding))
                crops = subject_crops(frames)  # crops differ in size: one embedding each; no object scores 0
                subject[arm].append(float(np.mean([clip_metrics.style_fidelity_of(embedder.embed_images(crop[None]),
                                                                                  subject_embedding) for crop in crops]))
                                    if crops else 0.0)
                score[arm].append(100 * clip_metrics.clipsim(embedder, frames, named))
    # The fine stage's gain in image fidelity, paired by subject (the same prompt, seed and image in both arms).
    paired = np.array(fidelity.get("coarse_fine", [])) - np.array(fidelity.get("coarse", []))
    paired_subject = np.array(subject.get("coarse_fine", [])) - np.array(subject.get("coarse", []))
    mean = lambda table: {arm: float(np.mean(values)) for arm, values in table.items()}  # noqa: E731
    colour, fidelity, subject, score = mean(colour), mean(fidelity), mean(subject), mean(score)
    return {
        "count": count, "steps": steps, "frames": FRAMES, "chance": 1 / len(toy_world.COLOURS),
        "colour_followed": colour, "image_fidelity": fidelity, "subject_fidelity": subject, "clip_score": score,
        "missing": [arm for arm in ARMS if arm not in arms],
        "fine_above_coarse": bool(fidelity.get("coarse_fine", 0) > fidelity.get("coarse", 0)),
        "fine_gain_subjects_higher": float(np.mean(paired > 0)) if paired.size else float("nan"),
        "fine_gain_standard_error": judge.standard_error(paired),
        "subject_fine_gain_standard_error": judge.standard_error(paired_subject),
        "coarse_to_fine_above_joint": (bool(fidelity["coarse_fine"] > fidelity["joint"]) if "joint" in fidelity else None),
    }


def report_figures(result: dict) -> dict:
    """The measurement flattened to the keys `scripts/toy_report.py` prints (an arm not built reads NaN)."""
    flat = dict(result)
    for table, prefix in (("colour_followed", "colour"), ("image_fidelity", "fidelity"), ("subject_fidelity", "subject_fidelity"),
                          ("clip_score", "clip_score")):
        for arm in (*ARMS, *REFERENCES):
            flat[f"{prefix}_{arm}"] = result[table].get(arm, float("nan"))
    fidelity = result["image_fidelity"]
    flat["fidelity_fine_gain"] = fidelity["coarse_fine"] - fidelity["coarse"]
    flat["fidelity_staged_gain"] = fidelity["coarse_fine"] - fidelity.get("joint", float("nan"))
    flat["subject_fidelity_fine_gain"] = result["subject_fidelity"]["coarse_fine"] - result["subject_fidelity"]["coarse"]
    return flat
