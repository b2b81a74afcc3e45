"""Peak training memory of the inflated UNet with and without gradient checkpointing, side by side.

Three settings: checkpointing off; diffusers' own (`UNetMotionModel.enable_gradient_checkpointing()`: resnets
and the spatial transformers' blocks, not the motion modules); stylevid's
(`stylevid.models.checkpointing.enable_gradient_checkpointing`: resnets, spatial and temporal transformers,
samplers). One optimizer-free training step (forward + backward through the motion module, image weights frozen) on
random latents, in a fresh process per setting so that peaks do not mix:
  * CUDA: torch.cuda.max_memory_allocated during the step;
  * CPU: growth of the process's peak resident set size during the step (ru_maxrss after - RSS before).
    glibc keeps freed blocks under its mmap threshold (up to 32 MiB) in the heap, so that peak includes cached
    free memory; `--live` lowers the threshold in the children so that it tracks live tensors instead.

    python scripts/benchmark_train.py --preset small --frames 16 --size 256 --batch 1
    python scripts/benchmark_train.py --preset sd15 --device cuda --dtype bf16   # SD 1.5 geometry, random weights
    python scripts/benchmark_train.py --preset tiny --settings off stylevid      # a subset of the settings
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PRESETS = {
    # block_out_channels, layers_per_block, cross_attention_dim, heads (UNet), motion heads
    "tiny": ((32, 64), 1, 32, 8, 2),
    "small": ((64, 128, 256, 256), 2, 256, 8, 8),
    "sd15": ((320, 640, 1280, 1280), 2, 768, 8, 8),
}
SETTINGS = ("off", "diffusers", "stylevid")


def build(preset: str):
    import torch
    from diffusers import UNet2DConditionModel

    from stylevid.models.motion_module import inflate, motion_adapter_for_unet

    channels, layers, cross, heads, motion_heads = PRESETS[preset]
    torch.manual_seed(0)
    levels = len(channels)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=layers,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=cross,
        attention_head_dim=heads,
        norm_num_groups=32 if channels[0] >= 64 else 8,
    )
    adapter = motion_adapter_for_unet(unet, num_attention_heads=motion_heads)
    model = inflate(unet, adapter)
    model.freeze_unet2d_params()
    return model, cross


def one_setting(args) -> dict:
    import torch

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model, cross = build(args.preset)
    if args.checkpointing == "diffusers":
        model.enable_gradient_checkpointing()
    elif args.checkpointing == "stylevid":
        from stylevid.models.checkpointing import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    model.to(device)
    for parameter in model.parameters():
        if not parameter.requires_grad:
            parameter.data = parameter.data.to(dtype)
    model.train()
    latent = args.size // 8
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, 4, args.frames, latent, latent, generator=generator).to(device)
    text = torch.randn(args.batch * args.frames, 77, cross, generator=generator).to(device)
    timesteps = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
    rss_before = _rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type, enabled=False)
    with autocast:
        prediction = model(sample, timesteps, encoder_hidden_states=text).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), torch.zeros_like(prediction, dtype=torch.float32))
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    record = {"checkpointing": args.checkpointing, "step_s": seconds}
    if device.type == "cuda":
        record["peak_step_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        record["peak_step_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return record


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                        help="checkpointing settings to measure, each in a fresh process (default: all three)")
    parser.add_argument("--live", action="store_true",
                        help="CPU: glibc MALLOC_MMAP_THRESHOLD_=128 KiB in the children, so that freed tensors leave the RSS "
                             "and its peak tracks live tensors, not the heap glibc keeps cached (slower)")
    parser.add_argument("--checkpointing", choices=SETTINGS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpointing is not None:  # child process: one setting
        print(json.dumps(one_setting(args)))
        return
    rows = measure(sys.argv[1:], args.settings, live=args.live)
    print(f"preset={args.preset} frames={args.frames} size={args.size} batch={args.batch} device={args.device} dtype={args.dtype}"
          + (" malloc=live" if args.live else ""))
    print(table(rows))


def measure(argv: list[str], settings, live: bool = False) -> list[dict]:
    """One child process per setting; `argv` is this script's arguments (without --checkpointing)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if live else None
    rows = []
    for setting in settings:
        command = [sys.executable, __file__, *argv, "--checkpointing", setting]
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        rows.append(json.loads(output))
    return rows


def table(rows: list[dict]) -> str:
    """Peak and step time per setting; memory saved and time ratio against `off` when it was measured."""
    off = next((row for row in rows if row["checkpointing"] == "off"), None)
    lines = [f"{'gradient checkpointing':<24}{'peak step memory (MiB)':>24}{'saved vs off':>14}{'step time (s)':>16}{'time / off':>12}"]
    for row in rows:
        saved = f"{1 - row['peak_step_mib'] / off['peak_step_mib']:.1%}" if off else "-"
        ratio = f"{row['step_s'] / off['step_s']:.2f}x" if off else "-"
        lines.append(f"{row['checkpointing']:<24}{row['peak_step_mib']:>24.0f}{saved:>14}{row['step_s']:>16.2f}{ratio:>12}")
    by = {row["checkpointing"]: row for row in rows}
    if "diffusers" in by and "stylevid" in by:
        lines.append(f"stylevid / diffusers peak: {by['stylevid']['peak_step_mib'] / by['diffusers']['peak_step_mib']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
