"""Speed and memory of zero-shot generation, measured side by side in one run.

1. stylevid `t2v_zero` vs diffusers' `TextToVideoZeroPipeline` on identical work (same components, seed,
   settings), alternating runs, median time; target ratio <= 1.05.
2. `stylet2v0` vs `t2v_zero` at 8 frames (the paper's sharing; target ratio <= 1.35), and with `make demo`'s.
3. Peak memory of 32 frames with chunk_size=8 vs 8 frames (each in a fresh process); target <= 1.3.

The tiny model runs on the CPU by default; `--model-path` takes real weights and `--device cuda` a GPU
(then memory is CUDA's peak allocation, else the rise of the process's peak RSS during generation).

    python scripts/benchmark_t2v.py [--size 128] [--steps 20] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def load(model_path: str | None, device: str, dtype: torch.dtype):
    from omegaconf import OmegaConf

    from stylevid.models.loading import load_pipeline

    cfg = OmegaConf.create({"name": "tiny" if not model_path else "custom", "path": model_path, "seed": 0})
    return load_pipeline(cfg, dtype).to(device)


def style_image(path: Path) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
    return str(path)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def speed(args) -> dict:
    from diffusers import TextToVideoZeroPipeline

    from stylevid.methods.t2v_zero import default_step_counts
    from stylevid.methods import stylet2v0
    from stylevid.methods.t2v_zero import ZeroShotSettings, ZeroShotVideo

    dtype = getattr(torch, args.dtype)
    pipe = load(args.model_path, args.device, dtype)
    reference = TextToVideoZeroPipeline(
        **{k: getattr(pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    t0, t1 = default_step_counts(args.steps)
    settings = dict(prompt="a panda surfing", frames=8, height=args.size, width=args.size, steps=args.steps, t0=t0, t1=t1, seed=0)
    style_path = style_image(Path(tempfile.mkdtemp()) / "style.png")
    paper_style, demo_style = stylet2v0.StyleSettings(style_path, sharing="paper"), stylet2v0.StyleSettings(style_path)

    runs = {
        "diffusers TextToVideoZeroPipeline": lambda: reference(
            prompt=settings["prompt"], video_length=8, height=args.size, width=args.size, num_inference_steps=args.steps,
            t0=t0, t1=t1, generator=torch.Generator().manual_seed(0), output_type="np",
        ),
        "stylevid t2v_zero": lambda: ZeroShotVideo(pipe)(ZeroShotSettings(**settings)),
        "stylevid stylet2v0": lambda: stylet2v0.generate(pipe, ZeroShotSettings(**settings), paper_style),
        # The default sharing (`make demo`'s): the clean style latent as reference (no DDIM inversion), up blocks only.
        "stylevid stylet2v0 demo": lambda: stylet2v0.generate(pipe, ZeroShotSettings(**settings), demo_style),
    }
    for fn in runs.values():  # warm-up: first calls pay for allocator and kernel set-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate so that drift in machine load hits all equally
        for name, fn in runs.items():
            times[name].append(timed(fn, args.device))
    return {name: statistics.median(values) for name, values in times.items()}


MEMORY_CHILD = r"""
import json, os, resource, sys, torch
sys.path.insert(0, {root!r})
os.environ["HF_HUB_OFFLINE"] = "1"
from scripts.benchmark_t2v import load
from stylevid.methods.t2v_zero import default_step_counts
from stylevid.methods.t2v_zero import ZeroShotSettings, ZeroShotVideo
import psutil
device = {device!r}
pipe = load({model_path!r}, device, getattr(torch, {dtype!r}))
t0, t1 = default_step_counts({steps})
settings = ZeroShotSettings(prompt="a panda surfing", frames={frames}, chunk_size={chunk}, height={size}, width={size}, steps={steps}, t0=t0, t1=t1)
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
else:
    before = psutil.Process().memory_info().rss
ZeroShotVideo(pipe)(settings)
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated() - before
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({{"peak_bytes": peak}}))
"""


def memory(args, frames: int, chunk: int) -> float:
    root = str(Path(__file__).resolve().parents[1])
    code = MEMORY_CHILD.format(root=root, device=args.device, model_path=args.model_path, dtype=args.dtype,
                               steps=args.steps, frames=frames, chunk=chunk, size=args.memory_size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="frame size for the speed runs")
    parser.add_argument("--memory-size", type=int, default=256, help="frame size for the memory runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)  # 3 left the tiny-model ratios several points apart
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model-path", default=None, help="diffusers directory or hub id (default: the tiny model)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    torch.manual_seed(0)
    times = speed(args)
    ref, t2v, style, demo = (
        times[k] for k in ("diffusers TextToVideoZeroPipeline", "stylevid t2v_zero", "stylevid stylet2v0", "stylevid stylet2v0 demo")
    )
    mem8 = memory(args, frames=8, chunk=8)
    mem32 = memory(args, frames=32, chunk=8)
    mem32_unchunked = memory(args, frames=32, chunk=0)

    model = args.model_path or "tiny"
    print(f"\n## Zero-shot generation ({model}, {args.device}, {args.dtype}, {torch.get_num_threads()} threads)\n")
    print(f"Speed: 8 frames, {args.size}x{args.size}, {args.steps} steps, median of {args.repeats} alternating runs.\n")
    print("| run | time (s) | ratio | target |")
    print("|---|---|---|---|")
    print(f"| diffusers TextToVideoZeroPipeline | {ref:.3f} | 1.00 | |")
    print(f"| stylevid t2v_zero | {t2v:.3f} | {t2v / ref:.3f} vs diffusers | <= 1.05 |")
    print(f"| stylevid stylet2v0 | {style:.3f} | {style / t2v:.3f} vs t2v_zero | <= 1.35 |")
    print(f"| stylevid stylet2v0, `make demo`'s sharing (clean reference, up blocks) | {demo:.3f} | {demo / t2v:.3f} vs t2v_zero | |")
    print(f"\nPeak memory during generation ({args.memory_size}x{args.memory_size}, {args.steps} steps):\n")
    print("| frames | chunk_size | peak (MiB) | ratio vs 8 frames | target |")
    print("|---|---|---|---|---|")
    print(f"| 8 | 8 | {mem8:.0f} | 1.00 | |")
    print(f"| 32 | 8 | {mem32:.0f} | {mem32 / mem8:.2f} | <= 1.3 |")
    print(f"| 32 | 0 (one batch) | {mem32_unchunked:.0f} | {mem32_unchunked / mem8:.2f} | (for contrast) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"times_s": times, "memory_mib": {"8": mem8, "32_chunk8": mem32, "32_unchunked": mem32_unchunked}}, indent=2))


if __name__ == "__main__":
    main()
