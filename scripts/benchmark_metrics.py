"""Speed of every metric, and of batched vs one-at-a-time CLIP embedding, measured in one run.

1. Frames per second of each per-video metric alone (compute_metrics with one name, its network already
   loaded) on a synthetic video (a textured background with a moving square), at each --sizes; then all of
   the default metrics in one call, which embeds the frames with CLIP once and computes the flow once.
2. Frames per second of the set-level metrics on --set-videos such videos: fvd (generated and as many real
   videos, the real statistics recomputed each time, so every frame of both sets goes through I3D) and is.
3. CLIP image embedding of the same frames with batch_size=--frames vs batch_size=1; prints the ratio.

The networks are the tiny ones the tests use, which time the pipeline around a model, not a real network:
CLIP is the tiny random CLIP (--clip-model takes a real one: a hub id in the local cache, or a directory);
VGG, CSD, I3D and C3D are the tiny TorchScript stand-ins of tests/metrics/ (same call conventions, same
preprocessing: CSD and FVD resize every frame to 224 px). Best of --repeats, runs interleaved (the machine
may be shared; --note labels the table, e.g. --note "machine shared"). Prints markdown tables for the README.

    python scripts/benchmark_metrics.py [--frames 16] [--sizes 64 256] [--repeats 5] [--set-videos 4]
                                        [--clip-model tiny] [--threads 1] [--note "machine shared"]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PER_VIDEO = ["clipsim", "clip_score", "prompt_consistency", "frame_consistency", "style_fidelity", "style_gram",
             "style_csd", "warp_error", "temporal_flicker", "motion"]
DEFAULT_SET = ["clipsim", "frame_consistency", "style_fidelity", "warp_error", "temporal_flicker", "motion"]
TESTS = Path(__file__).resolve().parents[1] / "tests" / "metrics"


def test_module(name: str):
    """A test module of tests/metrics (not a package), for the tiny networks it defines. Registered in
    sys.modules because TorchScript reads a class's source through its module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def save_tiny_networks(directory: str) -> dict[str, str]:
    """The tests' tiny VGG, CSD, I3D and C3D stand-ins, scripted and saved as the metrics load them."""
    style_tests, set_tests = test_module("test_metrics_style"), test_module("test_metrics_fvd_is")
    networks = {"vgg": style_tests.TinyFeatures(), "csd": style_tests.TinyCSD(), "i3d": set_tests.TinyI3D(),
                "c3d": set_tests.FixedLogitsC3D(num_classes=10)}
    paths = {}
    for name, network in networks.items():
        paths[name] = f"{directory}/{name}.pt"
        torch.jit.save(torch.jit.script(network.eval()), paths[name])
    return paths


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
    parser.add_argument("--set-videos", type=int, default=4, help="videos per set for fvd and is")
    parser.add_argument("--note", default="", help="a label for the tables, e.g. 'machine shared'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from stylevid.metrics import MetricsConfig, compute_metrics, compute_set_metrics
    from stylevid.metrics.clip import ClipEmbedder, build_tiny_clip, load_clip
    from stylevid.metrics.style import load_csd, load_vgg_features

    with tempfile.TemporaryDirectory() as scratch:
        clip_model = str(build_tiny_clip(f"{scratch}/clip")) if args.clip_model == "tiny" else args.clip_model
        networks = save_tiny_networks(scratch)
        config = MetricsConfig.from_dict({
            "device": args.device,
            "clip": {"model": clip_model, "batch_size": args.frames},
            # TinyFeatures has two layers; the extractor's output is used as is (a TorchScript file)
            "style": {"vgg_path": networks["vgg"], "csd_path": networks["csd"]},
            "fvd": {"i3d_path": networks["i3d"]},
            "is": {"c3d_path": networks["c3d"], "splits": 2},
        })
        # load once, outside the timings (compute_metrics finds them in the caches)
        load_clip(clip_model, args.device)
        load_vgg_features(config.style.vgg_path, config.style.vgg_layers, args.device)
        load_csd(config.style.csd_path, args.device)
        prompt = "a red square moving over a colourful background"
        fvd_label = f"fvd ({args.set_videos} generated + {args.set_videos} real videos)"
        is_label = f"is ({args.set_videos} videos, 2 splits)"

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

            generated = [synthetic_video(args.frames, size, seed=10 + i) for i in range(args.set_videos)]
            real = [synthetic_video(args.frames, size, seed=100 + i) for i in range(args.set_videos)]
            fvd_s, is_s = best_times(lambda: compute_set_metrics(generated, ["fvd"], config, real_videos=real),
                                     lambda: compute_set_metrics(generated, ["is"], config), repeats=args.repeats)
            fps.setdefault(fvd_label, {})[size] = 2 * args.set_videos * args.frames / fvd_s
            fps.setdefault(is_label, {})[size] = args.set_videos * args.frames / is_s

            loaded = load_clip(clip_model, args.device)
            batched = ClipEmbedder(loaded.model, loaded.processor, clip_model, args.device, batch_size=args.frames)
            single = ClipEmbedder(loaded.model, loaded.processor, clip_model, args.device, batch_size=1)
            assert torch.allclose(batched.embed_images(frames), single.embed_images(frames), atol=1e-5)
            embedding[size] = tuple(best_times(lambda: batched.embed_images(frames),
                                               lambda: single.embed_images(frames), repeats=args.repeats))

    model_name = "tiny random CLIP (32 px, 2 layers)" if args.clip_model == "tiny" else args.clip_model
    note = f" ({args.note})" if args.note else ""
    print(f"\nMetrics on {args.frames}-frame videos, {args.device}, {torch.get_num_threads()} torch threads{note}, "
          f"CLIP: {model_name}, VGG/CSD/I3D/C3D: the tests' tiny TorchScript networks; frames per second, best of "
          f"{args.repeats} (fvd and is: every frame of the set through the network):\n")
    print("| metric | " + " | ".join(f"{s}x{s} fps" for s in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for name, by_size in fps.items():
        print(f"| {name} | " + " | ".join(f"{by_size[s]:.0f}" for s in args.sizes) + " |")
    print(f"\nCLIP image embedding of {args.frames} frames, batch_size={args.frames} vs batch_size=1{note}:\n")
    print("| size | batched ms | batch 1 ms | batch 1 / batched |")
    print("|---|---:|---:|---:|")
    for size, (batched_s, single_s) in embedding.items():
        print(f"| {size}x{size} | {batched_s * 1e3:.1f} | {single_s * 1e3:.1f} | {single_s / batched_s:.2f} |")


if __name__ == "__main__":
    main()
