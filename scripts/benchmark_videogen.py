"""VideoGen's speed and memory claims on the toy models, each case in a fresh process so that peaks do not mix.

  * x8 temporal super-resolution from 8 base frames (57 frames) against the base stage generating those 57 frames
    directly at the same resolution: time ratio (VideoGen's point: TSR is cheaper than denoising every frame) and
    peak memory;
  * decoding 57 frames in overlapping temporal chunks against decoding 8: peak memory ratio (chunks keep it flat).

Every case runs what `stylevid generate method=videogen model=toy` composes (the CLI's defaults: TSR mode flow with the
refiner, 10 refiner steps, the base stage's 25 steps at guidance 7.5, decoder chunks of 8 frames with 2 shared).
  * CUDA: torch.cuda.max_memory_allocated during the case;
  * CPU: growth of the process's peak resident set size during the case (see scripts/benchmark_train.py).

    python scripts/benchmark_videogen.py                 # the packaged toy VideoGen, on the CPU
    python scripts/benchmark_videogen.py --device cuda
    python scripts/benchmark_videogen.py --tiny          # model=tiny's random parts (no build needed)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("tsr_x8", "base_57", "decode_8", "decode_57")


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_case(case: str, device_name: str, tiny: bool, repeat: int) -> dict:
    import torch
    from hydra import compose, initialize_config_module

    from stylevid.methods.videogen import VideoGen, decode_latent_video, temporal_super_resolution
    from stylevid.sampling.cascade import sample_stage

    torch.manual_seed(0)
    device = torch.device(device_name)
    model = ["model=tiny"] if tiny else ["model=toy"]
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("generate", overrides=["method=videogen", *model, "prompt=a red circle moving right",
                                             f"device={device_name}"])
    method = VideoGen()
    settings = method.settings(cfg)
    loaded = method.load(cfg, settings, device, torch.float32, None)
    stage, unet = settings.stages[-1], loaded.stages[0]  # the base stage, run at the last stage's resolution
    h, w = stage.height // 8, stage.width // 8
    generator = torch.Generator().manual_seed(0)
    base_frames = torch.randn(1, 4, 8, h, w, generator=generator).to(device)
    long_latents = torch.randn(1, 4, 57, h, w, generator=generator).to(device)
    text, negative = loaded.pipe.encode_prompt(settings.prompt, device, 1, True, None)
    reference = torch.randn(1, 4, h, w, generator=generator).to(device)

    def run():
        if case == "tsr_x8":
            return temporal_super_resolution(settings.back, loaded.back, base_frames, torch.Generator().manual_seed(0))
        if case == "base_57":
            return sample_stage(unet, loaded.scheduler, text_embeddings=text, negative_embeddings=negative,
                                reference_latent=reference, low_resolution=None, fps=settings.base_fps * 8, noise_level=0,
                                frames=57, height_latent=h, width_latent=w, steps=settings.stages[0].steps,
                                guidance_scale=settings.stages[0].guidance_scale, generator=torch.Generator().manual_seed(0))
        return decode_latent_video(settings.back, loaded.back, base_frames if case == "decode_8" else long_latents)

    rss_before = _rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    with torch.no_grad():
        for _ in range(repeat):
            started = time.perf_counter()
            out = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    record = {"case": case, "seconds": sorted(times)[len(times) // 2], "frames_out": int(out.shape[2] if out.ndim == 5 else out.shape[0]),
              "resolution": [stage.height, stage.width]}
    if device.type == "cuda":
        record["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        record["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return record


def measure(argv: list[str], cases) -> dict[str, dict]:
    rows = {}
    for case in cases:
        command = [sys.executable, __file__, *argv, "--case", case]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows[case] = json.loads(output)
    return rows


def table(rows: dict[str, dict]) -> str:
    lines = [f"{'case':<12}{'frames out':>12}{'time (s)':>12}{'peak (MiB)':>14}"]
    for row in rows.values():
        lines.append(f"{row['case']:<12}{row['frames_out']:>12}{row['seconds']:>12.2f}{row['peak_mib']:>14.1f}")
    if {"tsr_x8", "base_57"} <= set(rows):
        lines.append(f"tsr x8 / base stage at 57 frames: time {rows['tsr_x8']['seconds'] / rows['base_57']['seconds']:.3f} "
                     f"(target <= 0.5), peak {rows['tsr_x8']['peak_mib'] / max(rows['base_57']['peak_mib'], 1e-9):.3f}")
    if {"decode_8", "decode_57"} <= set(rows):
        lines.append(f"decode 57 / 8 frames (chunks of 8, 2 shared): peak {rows['decode_57']['peak_mib'] / max(rows['decode_8']['peak_mib'], 1e-9):.3f} "
                     "(target <= 1.3)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="model=tiny's random parts instead of the toy VideoGen")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median time is kept")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--case", choices=CASES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:  # child process: one case
        print(json.dumps(one_case(args.case, args.device, args.tiny, args.repeat)))
        return
    rows = measure([*(["--tiny"] if args.tiny else []), "--device", args.device, "--repeat", str(args.repeat)], args.cases)
    print(f"device={args.device} model={'tiny' if args.tiny else 'toy'} repeat={args.repeat}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
