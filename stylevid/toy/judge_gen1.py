"""The toy Gen-1, measured against its paper's claims on held-out toy videos.

Every edit runs `method=gen1 model=toy` through the method's own functions on the config the CLI composes
(`judge.cli_configs`), on a held-out toy video written to a folder of frames (`input=`), its depth from the toy
Gen-1's own depth annotator (the manifest's, as the CLI uses it), so a figure is what a user typing those overrides
gets:

  * `measure_gen1`: structure kept (the edit's object silhouette against the input's, IoU over frames) as t_s grows
    (Fig. 10), prompt consistency as t_s grows (Section 4.3: CLIP cosine of the frames to the edit prompt, on edit
    prompts that name new content, here another colour and another shape, as the paper's evaluation prompts do:
    "hiker" to "alien"; the same figure on prompts that keep the input's shape is reported beside it), the object
    taking the prompt's colour (text content through the prior) and a content image's colour (Fig. 9), temporal
    guidance ω_t against frame consistency and warp error (Fig. 4), and masked editing (Fig. 8): outside the edited
    region the input, against its VAE round trip's error (at the CLI's default, the input's pixels put back; with
    method.keep_outside=latents, the latent recipe alone, reported).

Held-out data: scenes from numpy streams seeded 80_000 and up, a path the build never draws from (data=toy draws
from (seed, epoch, index) with the experiments' seed 0).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..data import toy_world
from ..metrics.clip import clipsim
from ..metrics.flow import warp_error
from ..progress import StageReporter
from . import judge

TS_VALUES = (0, 1, 3, 5, 7)
KEEP_OUTSIDE = ("pixels", "latents")  # method.keep_outside: the CLI's default first
TEMPORAL_GUIDANCE = (0.0, 0.5, 1.0, 1.5, 2.0)
DEFAULT_TS = 3  # conf/method/gen1.yaml's method.ts: the colour and guidance figures are at the CLI's default
FRAMES = 8


def silhouette_iou(source: np.ndarray, edited: np.ndarray) -> float:
    """Mean over frames of IoU(object of the input frame, object of the edited frame)."""
    scores = []
    for a, b in zip(source, edited):
        first, second = judge.foreground_mask(a), judge.foreground_mask(b)
        union = np.logical_or(first, second).sum()
        scores.append(float(np.logical_and(first, second).sum() / union) if union else 1.0)
    return float(np.mean(scores))


def held_out_video(rng: np.random.Generator) -> tuple[np.ndarray, toy_world.Scene]:
    """uint8 (FRAMES, 64, 64, 3) of a fresh scene, one toy frame apart (the rate the toy Gen-1 trains on)."""
    scene = toy_world.random_scene(rng)
    start = int(rng.integers(0, toy_world.FRAMES - FRAMES + 1))
    background = toy_world.background_image(scene)
    frames = [toy_world.render_frame(scene, start + k, toy_world.FRAMES, background).image for k in range(FRAMES)]
    return np.stack(frames), scene


def write_frames(frames: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:04d}.png")
    return folder


def other_colour(rng: np.random.Generator, colour: str) -> str:
    options = [c for c in toy_world.COLOURS if c != colour]
    return options[int(rng.integers(len(options)))]


def other_shape(rng: np.random.Generator, shape: str) -> str:
    options = [s for s in toy_world.SHAPES if s != shape]
    return options[int(rng.integers(len(options)))]


def paired_step(before: list[float], after: list[float]) -> tuple[float, float]:
    """(mean of after - before over the videos, its standard error); the error is 0 for a single video."""
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    return float(differences.mean()), judge.standard_error(differences) if len(differences) > 1 else 0.0


class _Editor:
    """method=gen1 model=toy on one loaded set of weights; each edit composes its own CLI config."""

    def __init__(self, *overrides: str):
        from ..methods.gen1 import Gen1

        self.method, self.loaded, self.overrides = Gen1(), None, overrides

    def __call__(self, *overrides: str) -> np.ndarray:
        cfg = judge.cli_configs("gen1", [[*self.overrides, *overrides]])[0]
        settings = self.method.settings(cfg)
        if self.loaded is None:  # every edit uses the same weights; only the settings differ
            self.loaded = self.method.load(cfg, settings, torch.device("cpu"), torch.float32, None)
        return self.method.generate(self.loaded, settings, StageReporter()).frames


# Held-out videos. The figures compared across t_s and ω_t differ by 0.002-0.02 between neighbours, and the share
# figures move by 12.5 % per video over 8 videos, so the judge edits 32 (the first 8 are the earlier judge's).
GEN1_VIDEOS = 32


def measure_gen1(count: int = GEN1_VIDEOS, seed: int = 80_000, steps: int = 20, *overrides: str) -> dict:
    """Every Gen-1 figure on `count` held-out toy videos (see the module's docstring); `overrides` go to every edit
    (method.weights=<a build elsewhere>, ...)."""
    from ..sampling.vae import decode_to_uint8, encode_images

    embedder = judge.toy_clip_embedder()
    rng = np.random.default_rng(seed)
    shape_rng = np.random.default_rng([seed, 1])  # its own stream: the held-out videos are those of `rng` alone
    edit = _Editor(f"steps={steps}", *overrides)
    iou = {ts: [] for ts in TS_VALUES}
    consistency_to_prompt = {ts: [] for ts in TS_VALUES}  # edit prompts naming a new colour and a new shape
    consistency_same_shape = {ts: [] for ts in TS_VALUES}  # ... a new colour only (the input's shape kept)
    iou_new_shape = {ts: [] for ts in TS_VALUES}
    text_colour, image_colour = [], []
    guidance = {w: {"consistency": [], "warp_error": []} for w in TEMPORAL_GUIDANCE}
    # Masked editing at the CLI's default (the input's pixels put back outside the edit) and with
    # method.keep_outside=latents (the latent recipe alone, decoded as it is).
    outside_error = {mode: [] for mode in KEEP_OUTSIDE}
    outside_all_error = {mode: [] for mode in KEEP_OUTSIDE}
    masked_colour, round_trip_iou = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(count):
            frames, scene = held_out_video(rng)
            source = write_frames(frames, Path(tmp) / f"input_{index}")
            colour = other_colour(rng, scene.colour)
            prompt = toy_world.phrase("a", colour, scene.shape, toy_world.MOTIONS[scene.motion])
            new_content = toy_world.phrase("a", colour, other_shape(shape_rng, scene.shape), toy_world.MOTIONS[scene.motion])
            common = [f"input={source}", f"seed={seed + index}"]
            # Text content at every t_s: structure kept, prompt consistency; the colour at the CLI's default t_s.
            for ts in TS_VALUES:
                edited = edit(*common, f"prompt='{prompt}'", f"method.ts={ts}")
                iou[ts].append(silhouette_iou(frames, edited))
                consistency_same_shape[ts].append(clipsim(embedder, edited, prompt))
                reshaped = edit(*common, f"prompt='{new_content}'", f"method.ts={ts}")
                iou_new_shape[ts].append(silhouette_iou(frames, reshaped))
                consistency_to_prompt[ts].append(clipsim(embedder, reshaped, new_content))
                if ts == DEFAULT_TS:
                    text_colour.append(judge.majority_colour(embedder, edited) == colour)
                    guidance[1.0]["consistency"].append(judge.frame_consistency(embedder, edited))
                    guidance[1.0]["warp_error"].append(warp_error(edited))
            # The input's own VAE round trip (the weights are loaded by now): what an edit that kept every latent
            # would decode to, so the ceiling of the silhouette IoU, and the masked figure's reference error.
            round_trip = decode_to_uint8(edit.loaded.vae, encode_images(edit.loaded.vae, frames))
            round_trip_iou.append(silhouette_iou(frames, round_trip))
            # Temporal guidance ω_t (ω_t = 1, plain classifier-free guidance, is the default-t_s edit above).
            for weight in TEMPORAL_GUIDANCE:
                if weight == 1.0:
                    continue
                edited = edit(*common, f"prompt='{prompt}'", f"method.temporal_guidance={weight}")
                guidance[weight]["consistency"].append(judge.frame_consistency(embedder, edited))
                guidance[weight]["warp_error"].append(warp_error(edited))
            # Content from an image: a toy frame of another scene in a third colour.
            image_scene = toy_world.random_scene(rng, colour=other_colour(rng, scene.colour))
            image = toy_world.render_frame(image_scene, float(rng.uniform(0, toy_world.FRAMES - 1))).image
            image_path = Path(tmp) / f"content_{index}.png"
            Image.fromarray(image).save(image_path)
            edited = edit(*common, f"content_image={image_path}")
            image_colour.append(judge.majority_colour(embedder, edited) == image_scene.colour)
            # Masked editing: the object (its silhouette, dilated by 4 px) edited to the prompt's colour.
            masks = np.stack([cv2.dilate(judge.foreground_mask(f).astype(np.uint8) * 255, np.ones((9, 9), np.uint8)) for f in frames])
            mask_dir = write_frames(np.repeat(masks[..., None], 3, axis=-1), Path(tmp) / f"mask_{index}")
            masked = {mode: edit(*common, f"prompt='{prompt}'", f"mask={mask_dir}", "method.edit_region=foreground",
                                 f"method.keep_outside={mode}") for mode in KEEP_OUTSIDE}
            # Outside: the pixels of latent cells the sampler keeps from the input (no masked pixel in them), and
            # of those the cells at least one cell away from an edited one (the VAE decoder's 3x3 convolutions
            # carry an edited cell's content into its neighbours' pixels, whatever the sampler keeps; its mid-block
            # attention reaches further, which the next-to-edit ratio shows).
            cells = masks.reshape(FRAMES, 8, 8, 8, 8).max(axis=(2, 4)) > 0
            near = np.stack([cv2.dilate(c.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for c in cells])
            upscale = lambda grid: np.repeat(np.repeat(grid, 8, axis=1), 8, axis=2)  # noqa: E731
            trip_error = np.abs(round_trip.astype(np.float32) - frames).mean(-1)
            for mode, edited in masked.items():
                error = np.abs(edited.astype(np.float32) - frames).mean(-1)
                for table, region in ((outside_error, ~upscale(near)), (outside_all_error, ~upscale(cells))):
                    if region.any():  # a large object's margin can cover a whole clip
                        table[mode].append((float(error[region].mean()), float(trip_error[region].mean())))
            inside = np.stack([m > 0 for m in masks])
            masked_colour.append(judge.majority_colour(embedder, np.where(inside[..., None], masked["pixels"], 128).astype(np.uint8))
                                 == colour)
    means = lambda table: [float(np.mean(table[key])) for key in table]  # noqa: E731
    # Each step between neighbouring t_s, paired over the videos: (mean difference, its standard error), so a reader
    # tells a step that is there from one within noise (the per-video spread is far wider than the steps).
    steps = lambda table: [paired_step(table[a], table[b]) for a, b in zip(TS_VALUES, TS_VALUES[1:])]  # noqa: E731
    ratio = lambda pairs: float(np.mean([e for e, _ in pairs]) / np.mean([t for _, t in pairs]))  # noqa: E731
    iou_by_ts, prompt_by_ts = means(iou), means(consistency_to_prompt)
    prompt_same_shape_by_ts = means(consistency_same_shape)
    consistency = [float(np.mean(guidance[w]["consistency"])) for w in TEMPORAL_GUIDANCE]
    warp = [float(np.mean(guidance[w]["warp_error"])) for w in TEMPORAL_GUIDANCE]
    return {
        "count": count, "ts": list(TS_VALUES), "temporal_guidance": list(TEMPORAL_GUIDANCE),
        "iou_by_ts": iou_by_ts, "iou_ts0": iou_by_ts[0], "iou_vae_round_trip": float(np.mean(round_trip_iou)),
        "iou_decreases_with_ts": bool(all(a > b for a, b in zip(iou_by_ts, iou_by_ts[1:]))),
        "prompt_consistency_by_ts": prompt_by_ts,
        "prompt_consistency_steps": steps(consistency_to_prompt), "iou_steps": steps(iou),
        "prompt_consistency_rises_with_ts": bool(all(a < b for a, b in zip(prompt_by_ts, prompt_by_ts[1:]))),
        "iou_new_shape_by_ts": means(iou_new_shape),
        "prompt_consistency_same_shape_by_ts": prompt_same_shape_by_ts,
        "prompt_consistency_same_shape_rises_with_ts": bool(all(a < b for a, b in zip(prompt_same_shape_by_ts,
                                                                                          prompt_same_shape_by_ts[1:]))),
        "text_colour_followed": float(np.mean(text_colour)), "image_colour_followed": float(np.mean(image_colour)),
        "frame_consistency_by_wt": consistency, "warp_error_by_wt": warp,
        "consistency_rises_with_wt": bool(all(a < b for a, b in zip(consistency, consistency[1:]))),
        "warp_error_falls_with_wt": bool(all(a > b for a, b in zip(warp, warp[1:]))),
        "masked_outside_error": float(np.mean([e for e, _ in outside_error["pixels"]])),
        "masked_round_trip_error": float(np.mean([t for _, t in outside_error["pixels"]])),
        "masked_outside_ratio": ratio(outside_error["pixels"]),
        "masked_outside_ratio_next_to_edit": ratio(outside_all_error["pixels"]),
        "masked_outside_ratio_latents": ratio(outside_error["latents"]),
        "masked_outside_ratio_latents_next_to_edit": ratio(outside_all_error["latents"]),
        "masked_inside_colour_followed": float(np.mean(masked_colour)),
    }
