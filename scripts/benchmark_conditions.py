"""Annotator throughput and the cost of ControlNet conditioning, measured side by side in one run.

- frames per second of the canny (OpenCV), depth (tiny DPT, or --depth-model) and pose (tiny ViTPose + renderer,
  or --pose-model) annotators on the same frames;
- 8-frame generation with a ControlNet condition vs without, for t2v_zero and stylet2v0 (tiny model and
  ControlNet unless --model-path/--controlnet-path), median of alternating runs, as ratios: the default
  conditioned mode (shared noise, every frame denoised), and the conditioned run on the text-only
  motion-field schedule, whose ratio is the ControlNet's own cost.

    python scripts/benchmark_conditions.py [--size 128] [--frames 8] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def test_frames(count: int, size: int) -> np.ndarray:
    """A moving bright square on a gradient: edges, depth-like structure, some motion."""
    gradient = np.linspace(40, 200, size, dtype=np.float32)[None, :, None]
    frames = np.repeat(np.broadcast_to(gradient, (size, size, 3))[None], count, axis=0).astype(np.uint8)
    side = size // 3
    for i in range(count):
        left = (i * size // (2 * count)) % (size - side)
        frames[i, side : 2 * side, left : left + side] = 255
    return frames


def per_second(fn, items: int, repeats: int) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeats))
    return items / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth-model", default=None, help="depth model path (default: tiny random DPT)")
    parser.add_argument("--pose-model", default=None, help="ViTPose path (default: tiny random ViTPose)")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--controlnet-path", default="tiny")
    args = parser.parse_args()

    from omegaconf import OmegaConf

    from stylevid.conditions.canny import canny_maps
    from stylevid.conditions.depth import DepthAnnotator, tiny_depth_annotator
    from stylevid.conditions.pose import VitPoseDetector, pose_maps, tiny_pose_detector
    from stylevid.methods.t2v_zero import default_step_counts
    from stylevid.methods import stylet2v0
    from stylevid.methods.t2v_zero import Control, ZeroShotSettings, ZeroShotVideo
    from stylevid.models.controlnet import load_controlnet
    from stylevid.models.loading import load_pipeline

    frames = test_frames(args.frames, args.size)
    depth = DepthAnnotator.from_pretrained(args.depth_model) if args.depth_model else tiny_depth_annotator()
    detector = VitPoseDetector.from_pretrained(args.pose_model) if args.pose_model else tiny_pose_detector()
    rates = {
        "canny (OpenCV)": per_second(lambda: canny_maps(frames, 100, 200), len(frames), args.repeats),
        f"depth ({args.depth_model or 'tiny DPT'})": per_second(lambda: depth(frames), len(frames), args.repeats),
        f"pose ({args.pose_model or 'tiny ViTPose'} + renderer)": per_second(lambda: pose_maps(frames, detector=detector), len(frames), args.repeats),
    }

    pipe = load_pipeline(OmegaConf.create({"name": "custom" if args.model_path else "tiny", "path": args.model_path}), torch.float32)
    controlnet = load_controlnet(args.controlnet_path, "canny", pipe.unet, torch.float32)
    maps = torch.from_numpy(canny_maps(frames, 100, 200)).permute(0, 3, 1, 2).float() / 255
    t0, t1 = default_step_counts(args.steps)
    settings = dict(prompt="a square", frames=args.frames, height=args.size, width=args.size, steps=args.steps, t0=t0, t1=t1)
    style_path = str(Path(tempfile.mkdtemp()) / "style.png")
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(style_path)
    # The default conditioned mode (shared noise) denoises every frame through all steps, while the text-only
    # run denoises only frame 1 from T to t1 (motion-field schedule), so "+ canny" against it mixes the
    # ControlNet's cost with the schedule's. "+ canny, motion field" keeps the text-only schedule and adds only
    # the ControlNet: its ratio is the ControlNet's own cost.
    control = lambda motion_field=False: Control(controlnet, [maps], [1.0], motion_field=motion_field)  # noqa: E731
    style = stylet2v0.StyleSettings(style_path)
    runs = {
        "t2v_zero": lambda: ZeroShotVideo(pipe)(ZeroShotSettings(**settings)),
        "t2v_zero + canny": lambda: ZeroShotVideo(pipe)(ZeroShotSettings(**settings), control=control()),
        "t2v_zero + canny, motion field": lambda: ZeroShotVideo(pipe)(ZeroShotSettings(**settings), control=control(True)),
        "stylet2v0": lambda: stylet2v0.generate(pipe, ZeroShotSettings(**settings), style),
        "stylet2v0 + canny": lambda: stylet2v0.generate(pipe, ZeroShotSettings(**settings), style, control=control()),
        "stylet2v0 + canny, motion field": lambda: stylet2v0.generate(pipe, ZeroShotSettings(**settings), style, control=control(True)),
    }
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn))
    median = {name: statistics.median(v) for name, v in times.items()}

    print(f"\nAnnotators on {args.frames} frames of {args.size}x{args.size} ({torch.get_num_threads()} threads):\n")
    print("| annotator | frames/s |")
    print("|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print(f"\nGeneration, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, median of {args.repeats}:\n")
    print("| run | time (s) | conditioned / unconditioned |")
    print("|---|---:|---:|")
    for name, seconds in median.items():
        base = median[name.split(" + ")[0]]
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
