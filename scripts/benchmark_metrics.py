"""Speed of the per-video metrics, and of batched vs one-at-a-time CLIP embedding, measured in one run.

1. Frames per second of each per-video metric alone (compute_metrics with one name, the CLIP model already
   loaded) on a synthetic video (a textured background with a moving square), at each --sizes; then all of
   the default metrics in one call, which shares one CLIP pass per frame set and one flow computation.
2. CLIP image embedding of the same frames with batch_size=--frames vs batch_size=1; prints the ratio.

CLIP is the tiny random CLIP by default (what the tests use: it times the pipeline around the model, not a
real ViT); --clip-model takes a real CLIP (hub id in the local cache, or a directory). Best of --repeats,
runs interleaved (the machine may be shared).
Prints a markdown table for the README.

    python scripts/benchmark_metrics.py [--frames 16] [--sizes 64 256] [--repeats 5] [--clip-model tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PER_VIDEO = ["clipsim", "clip_score", "frame_consistency", "style_fidelity", "warp_error", "temporal_flicker",
             "motion"]
DEFAULT_SET = ["clipsim", "frame_consistency", "style_fidelity", "warp_error", "temporal_flicker", "motion"]


def synthetic_video(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """A smooth textured background and a square moving 2 px per frame (at 64 px; scaled with the size)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    background = np.stack([np.sin(6 * x + 3 * y), np.cos(5 * y), np.sin(4 * (x - y))], axis=-1) * 80 + 120
    step, side = max(1, size // 32), size // 4
    video = []
    for t in range(frames):
        frame = background + rng.normal(0, 3, background.shape)
        top, left = size // 3, (size // 8 + step * t) % (size - side)
        frame[top : top + side, left : left + side] = (230, 60, 40)
        video.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(video)


def best_times(*fns, repeats: int) -> list[float]:
    """Fastest of `repeats` runs of each function, the functions alternating so that a busy moment of a shared
    machine hits all of them alike; the minimum is the least disturbed measurement. Three warm-up runs each:
    the first few CPU forward passes of a model are many times slower than the steady state."""
    for fn in fns:
        for _ in range(3):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [min(record) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip-model", default="tiny", help="tiny (random, built here), hub id or CLIP directory")
    parser.add_argument("--device", default="cpu")
    # One thread by default: on a shared or busy machine, torch's OpenMP workers wait on each other at every
    # barrier and single calls become 10-100x slower at random, which no number of repeats smooths out.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from stylevid.metrics import MetricsConfig, compute_metrics
    from stylevid.metrics.clip import ClipEmbedder, build_tiny_clip, load_clip

    with tempfile.TemporaryDirectory() as scratch:
        clip_model = str(build_tiny_clip(f"{scratch}/clip")) if args.clip_model == "tiny" else args.clip_model
        config = MetricsConfig.from_dict({"device": args.device, "clip": {"model": clip_model,
                                                                           "batch_size": args.frames}})
        load_clip(clip_model, args.device)  # load once, outside the timings
        prompt = "a red square moving over a colourful background"

        fps: dict[str, dict[int, float]] = {}
        embedding: dict[int, tuple[float, float]] = {}
        for size in args.sizes:
            frames = synthetic_video(args.frames, size)
            style = synthetic_video(1, size, seed=1)[0]
            for name in [*PER_VIDEO, "default six together"]:
                names = DEFAULT_SET if name == "default six together" else [name]
                (seconds,) = best_times(lambda: compute_metrics(frames, prompt, style, names, config),
                                        repeats=args.repeats)
                fps.setdefault(name, {})[size] = args.frames / seconds

            loaded = load_clip(clip_model, args.device)
            batched = ClipEmbedder(loaded.model, loaded.processor, clip_model, args.device, batch_size=args.frames)
            single = ClipEmbedder(loaded.model, loaded.processor, clip_model, args.device, batch_size=1)
            assert torch.allclose(batched.embed_images(frames), single.embed_images(frames), atol=1e-5)
            embedding[size] = tuple(best_times(lambda: batched.embed_images(frames),
                                               lambda: single.embed_images(frames), repeats=args.repeats))

    model_name = "tiny random CLIP (32 px, 2 layers)" if args.clip_model == "tiny" else args.clip_model
    print(f"\nPer-video metrics, {args.frames} frames, {args.device}, {torch.get_num_threads()} torch threads, "
          f"CLIP: {model_name}; frames per second (best of {args.repeats}):\n")
    print("| metric | " + " | ".join(f"{s}x{s} fps" for s in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for name, by_size in fps.items():
        print(f"| {name} | " + " | ".join(f"{by_size[s]:.0f}" for s in args.sizes) + " |")
    print(f"\nCLIP image embedding of {args.frames} frames, batch_size={args.frames} vs batch_size=1:\n")
    print("| size | batched ms | batch 1 ms | batch 1 / batched |")
    print("|---|---:|---:|---:|")
    for size, (batched_s, single_s) in embedding.items():
        print(f"| {size}x{size} | {batched_s * 1e3:.1f} | {single_s * 1e3:.1f} | {single_s / batched_s:.2f} |")


if __name__ == "__main__":
    main()
