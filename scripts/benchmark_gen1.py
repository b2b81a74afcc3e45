"""Gen-1's cost claims, each case in a fresh process so that peaks do not mix.

  * temporal guidance (eq. 8) against plain classifier-free guidance: ω_t = 1.5 runs the image model as a third
    row beside the video model's two, ω_t = 1 skips it; the sampling time ratio (target <= 1.6x) on 8 frames;
  * long inputs in temporal windows: the whole edit of 32 input frames against 8 (windows of 8 frames, 4 shared;
    the VAE encodes and decodes 8 frames at a time): peak memory ratio (target <= 1.3x: flat in the video's length).

Every case runs what `stylevid generate method=gen1` composes (its defaults: t_s = 3, ω = 7.5, the depth annotator
of the model, windows of 8 with 4 shared), through the method's own settings / load / generate, on an input video
written by the toy-video writer. Peak memory:
  * CUDA: torch.cuda.max_memory_allocated during the case, over what was allocated before it;
  * CPU: growth of the process's peak resident set size during the case over the RSS before it, with glibc's mmap
    threshold lowered so that freed tensors leave the RSS (as stylevid.models.video_decoder's measurement).
Before a case is measured, the UNet, the VAE and the annotator run once on one frame, so lazily built kernels and
thread pools do not count.

    python scripts/benchmark_gen1.py --tiny              # model=tiny's random parts (no build needed)
    python scripts/benchmark_gen1.py                     # the packaged toy Gen-1 (model=toy)
    python scripts/benchmark_gen1.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# case: (input frames, ω_t, what it measures)
CASES = {
    "cfg_8": (8, 1.0, "time"),
    "temporal_8": (8, 1.5, "time"),
    "frames_8": (8, 1.5, "memory"),
    "frames_32": (32, 1.5, "memory"),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_case(case: str, device_name: str, tiny: bool, repeat: int, steps: int, size: int) -> dict:
    import torch
    from hydra import compose, initialize_config_module

    from stylevid.data.toy import write_toy_videos
    from stylevid.methods.gen1 import Gen1
    from stylevid.progress import StageReporter

    if device_name == "cpu":
        torch.set_num_threads(1)  # this machine's benchmarks run single-threaded (the other core is busy)
    frames, temporal_guidance, kind = CASES[case]
    device = torch.device(device_name)
    folder = Path(tempfile.mkdtemp(prefix="benchmark_gen1_"))
    clip = write_toy_videos(folder, count=1, frames=frames, size=size)[0]
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("generate", overrides=[
            "method=gen1", "model=tiny" if tiny else "model=toy", f"input={clip}", "prompt=a blue square",
            f"method.temporal_guidance={temporal_guidance}", f"steps={steps}", f"device={device_name}"])
    method = Gen1()
    settings = method.settings(cfg)
    loaded = method.load(cfg, settings, device, torch.float32, None)

    # warm-up on one frame: every network once
    with torch.no_grad():
        latents = torch.zeros(1, 4, 1, size // 8, size // 8, device=device)
        loaded.unet(latents, 500, torch.zeros(1, 1, loaded.unet.config.cross_attention_dim, device=device),
                    extra_input=torch.zeros(1, 8, 1, size // 8, size // 8, device=device))
        loaded.vae.decode(loaded.vae.encode(torch.zeros(1, 3, size, size, device=device)).latent_dist.mean)
        if loaded.annotator is not None:
            import numpy as np

            loaded.annotator([np.zeros((size, size, 3), np.uint8)])

    rss_before = _rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sampling, totals = [], []
    for _ in range(repeat if kind == "time" else 1):
        reporter = StageReporter()
        started = time.perf_counter()
        output = method.generate(loaded, settings, reporter)
        if device.type == "cuda":
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - started)
        sampling.append(reporter.timings["sampling"])
    record = {"case": case, "frames": int(output.frames.shape[0]), "temporal_guidance": temporal_guidance,
              "steps": steps, "size": size, "windows": len(settings.spans),
              "sampling_s": sorted(sampling)[len(sampling) // 2], "total_s": sorted(totals)[len(totals) // 2]}
    if device.type == "cuda":
        record["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        record["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    shutil.rmtree(folder, ignore_errors=True)
    return record


def measure(argv: list[str], cases) -> dict[str, dict]:
    rows = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for case in cases:
        command = [sys.executable, __file__, *argv, "--case", case]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            raise SystemExit(f"case {case} failed: {result.stderr.strip().splitlines()[-1:]}")
        rows[case] = json.loads(result.stdout.strip().splitlines()[-1])
    return rows


def table(rows: dict[str, dict]) -> str:
    lines = [f"{'case':<12}{'frames':>8}{'w_t':>6}{'windows':>9}{'sampling (s)':>14}{'total (s)':>11}{'peak (MiB)':>12}"]
    for row in rows.values():
        lines.append(f"{row['case']:<12}{row['frames']:>8}{row['temporal_guidance']:>6.1f}{row['windows']:>9}"
                     f"{row['sampling_s']:>14.2f}{row['total_s']:>11.2f}{row['peak_mib']:>12.1f}")
    if {"cfg_8", "temporal_8"} <= set(rows):
        ratio = rows["temporal_8"]["sampling_s"] / rows["cfg_8"]["sampling_s"]
        lines.append(f"w_t = 1.5 / w_t = 1 (eq. 8's image pass), sampling time: {ratio:.3f} (target <= 1.6)")
    if {"frames_8", "frames_32"} <= set(rows):
        ratio = rows["frames_32"]["peak_mib"] / max(rows["frames_8"]["peak_mib"], 1e-9)
        lines.append(f"32 / 8 input frames (windows of 8, 4 shared), peak memory: {ratio:.3f} (target <= 1.3)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="model=tiny's random parts instead of the toy Gen-1")
    parser.add_argument("--repeat", type=int, default=3, help="runs per time case; the median is kept")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64, help="input frame side in pixels")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--case", choices=list(CASES), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:  # child process: one case
        print(json.dumps(one_case(args.case, args.device, args.tiny, args.repeat, args.steps, args.size)))
        return
    rows = measure([*(["--tiny"] if args.tiny else []), "--device", args.device, "--repeat", str(args.repeat),
                    "--steps", str(args.steps), "--size", str(args.size)], args.cases)
    print(f"device={args.device} model={'tiny' if args.tiny else 'toy'} repeat={args.repeat} steps={args.steps} "
          f"size={args.size}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
