"""Image prompts' cost claim (VideoBooth-style paper): the exemplar pass and its injection against plain AnimateDiff
on identical work, each case in a fresh process so that peaks do not mix.

  * animatediff:  plain AnimateDiff (`method=animatediff`);
  * image_prompt: `method=image_prompt` at the CLI's defaults (method.fine=true, method.position_encoding=true): the
    coarse tokens in the text plus, at every UNet call, the exemplar pass of the image prompt's noised latent and
    Section 3.2's injection in every spatial self-attention;
  * coarse:       `method=image_prompt method.fine=false` (the mapper's tokens in the text only);
  * llm:          the LLM prompt refinement step alone (`prompt_refiner=llm`, Section 3.5), with a tiny random
    transformers causal LM built in this process and saved to a temporary directory (`llm.path=`). Its time is
    reported on its own line: it runs once per video before the model loads, whatever the method, so it has no
    target; with a real LLM it is that model's generation time.

Every video case is the same work: one prompt ("a star moving right", subject=star), seed, frames, steps and size,
composed exactly as `stylevid generate` composes it (hydra `compose("generate", overrides=[...])`) and run through
the method's own settings / load / generate. Reported per case, from the run of median sampling time of --repeat:
  * sampling: everything before decoding, i.e. the "image prompt" stage (CLIP vision tower, mapper, composed text,
    the image prompt's VAE latent; not in plain AnimateDiff, whose text encoding is inside its denoising stage) plus
    the "denoising" stage; the target is image_prompt / animatediff <= 1.3 on sampling time;
  * denoising, total (with decoding), the UNet calls of one run (the exemplar pass is one more call per step);
  * peak memory during the measured runs, over what was in use after loading and warm-up:
      - CUDA: torch.cuda.max_memory_allocated over memory_allocated before the runs;
      - CPU: growth of the process's peak resident set size (VmHWM, reset to the current RSS through
        /proc/self/clear_refs before the runs; ru_maxrss where that is not allowed), with glibc's mmap threshold
        lowered so that freed tensors leave the RSS (as stylevid.models.video_decoder's measurement).
Before a case is measured it generates once with one step (every network, hook and kernel runs once), so lazily
built kernels and thread pools do not count.

    python scripts/benchmark_image_prompt.py --tiny              # model=tiny's random parts (no build needed)
    python scripts/benchmark_image_prompt.py                     # the packaged toy weights (model=toy)
    python scripts/benchmark_image_prompt.py --device cuda --json image_prompt_benchmark.json
"""

from __future__ import annotations

import argparse
import dataclasses
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

PROMPT, SUBJECT = "a star moving right", "star"
TARGET = 1.3  # image_prompt / animatediff sampling time
# case: (method, extra overrides, what it is)
CASES = {
    "animatediff": ("animatediff", [], "plain AnimateDiff"),
    "image_prompt": ("image_prompt", [], "fine + position encoding (CLI defaults)"),
    "coarse": ("image_prompt", ["method.fine=false"], "coarse tokens only (method.fine=false)"),
}
LLM_CASE = "llm"
TOY_MANIFEST = ROOT / "stylevid" / "toy" / "weights" / "image_prompt" / "manifest.json"
LLM_WORDS = ("a the star stars red yellow blue moving moves right left slowly quickly across gray background video "
             "shows shining bright small large").split()


def _rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where /proc/self/clear_refs cannot be written."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def write_star_image(folder: Path) -> Path:
    """The image prompt: a red star of the toy world on a plain gray background (toy_world's renderer)."""
    import numpy as np
    from PIL import Image

    from stylevid.data import toy_world

    scene = toy_world.random_scene(np.random.default_rng(0), colour="red", shape="star", size="large", motion="right",
                                   pattern="plain", background="gray")
    path = folder / "star.png"
    Image.fromarray(toy_world.render_frame(scene, 0).image).save(path)
    return path


def compose_case(case: str, image: Path, tiny: bool, frames: int, steps: int, size: int, seed: int, device_name: str,
                 extra: tuple[str, ...] = ()):
    from hydra import compose, initialize_config_module

    method, overrides, _ = CASES[case]
    image_args = [f"image_prompt={image}", f"subject={SUBJECT}"] if method == "image_prompt" else []
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("generate", overrides=[
            f"method={method}", "model=tiny" if tiny else "model=toy", f"prompt={PROMPT}", *image_args, *overrides,
            f"frames={frames}", f"steps={steps}", f"height={size}", f"width={size}", f"seed={seed}",
            f"device={device_name}", *extra])


def one_case(case: str, device_name: str, tiny: bool, repeat: int, frames: int, steps: int, size: int, seed: int) -> dict:
    import torch

    from stylevid.methods.base import get_method
    from stylevid.models.loading import resolve_dtype
    from stylevid.progress import StageReporter

    if device_name == "cpu":
        torch.set_num_threads(1)  # this machine's benchmarks run single-threaded (the other core is busy)
    device = torch.device(device_name)
    folder = Path(tempfile.mkdtemp(prefix="benchmark_image_prompt_"))
    try:
        cfg = compose_case(case, write_star_image(folder), tiny, frames, steps, size, seed, device_name)
        method = get_method(str(cfg.method.name))
        settings = method.settings(cfg)
        loaded = method.load(cfg, settings, device, resolve_dtype(str(cfg.dtype), device), None)
        unet = loaded.video_pipe.unet
        calls = [0]
        counter = unet.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))

        # warm-up: the whole generation once, one step
        method.generate(loaded, dataclasses.replace(settings, steps=1), StageReporter())

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        rss_before = _rss_mib()
        reset = device.type == "cpu" and _reset_peak_rss()
        stages: dict[str, list[float]] = {"image prompt": [], "denoising": [], "sampling": [], "total": []}
        unet_calls = []
        for _ in range(repeat):
            calls[0] = 0
            reporter = StageReporter()
            started = time.perf_counter()
            output = method.generate(loaded, settings, reporter)
            if device.type == "cuda":
                torch.cuda.synchronize()
            stages["total"].append(time.perf_counter() - started)
            prepare = reporter.timings.get("image prompt", 0.0)
            stages["image prompt"].append(prepare)
            stages["denoising"].append(reporter.timings["denoising"])
            stages["sampling"].append(prepare + reporter.timings["denoising"])
            unet_calls.append(calls[0])
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            peak_how = "cuda max_memory_allocated"
        elif reset:
            peak, peak_how = _peak_rss_mib() - rss_before, "VmHWM reset"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
            peak_how = "ru_maxrss"
        counter.remove()
        # the run of median sampling time, all its stages (so that the printed columns add up)
        middle = sorted(range(repeat), key=stages["sampling"].__getitem__)[repeat // 2]
        return {"case": case, "what": CASES[case][2], "method": str(cfg.method.name),
                "fine": bool(getattr(settings, "fine", False)),
                "position_encoding": bool(getattr(settings, "position_encoding", False)),
                "frames": int(output.frames.shape[0]), "height": int(output.frames.shape[1]),
                "width": int(output.frames.shape[2]), "steps": settings.steps, "seed": settings.seed,
                "guidance_scale": settings.guidance_scale, "unet_calls": unet_calls[0],
                "prepare_s": stages["image prompt"][middle], "denoising_s": stages["denoising"][middle],
                "sampling_s": stages["sampling"][middle], "total_s": stages["total"][middle],
                "sampling_runs_s": stages["sampling"], "peak_mib": peak, "peak_measure": peak_how}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_tiny_llm(path: Path) -> Path:
    """stylevid's tiny random causal LM over LLM_WORDS, its end-of-text suppressed: every answer is
    llm.max_new_tokens words long."""
    from stylevid.models.tiny import save_tiny_causal_lm

    return save_tiny_causal_lm(path, list(LLM_WORDS), max_positions=2048, words_only=True)


def llm_case(device_name: str, tiny: bool, repeat: int, frames: int, steps: int, size: int, seed: int,
             llm_tokens: int) -> dict:
    """The refinement step as `stylevid generate` runs it (stylevid.prompting.prompt_refiner, PromptRefiner.refine:
    its Refinement.time_s), for the image_prompt case's config plus prompt_refiner=llm llm.path=<the tiny LM>."""
    import torch

    from stylevid.progress import StageReporter
    from stylevid.prompting import prompt_refiner

    if device_name == "cpu":
        torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="benchmark_image_prompt_llm_"))
    try:
        llm = save_tiny_llm(folder / "tiny-llm")
        cfg = compose_case("image_prompt", write_star_image(folder), tiny, frames, steps, size, seed, device_name,
                           ("prompt_refiner=llm", f"llm.path={llm}", f"llm.max_new_tokens={llm_tokens}"))
        with prompt_refiner(cfg, StageReporter()) as refiner:
            first = refiner.refine(cfg)  # the LM loads on its first question, as in a run
            runs = [refiner.refine(cfg) for _ in range(repeat)]
        if device_name.startswith("cuda"):
            torch.cuda.synchronize()
        refined = runs[-1].refined
        return {"case": LLM_CASE, "backend": first.record()["prompt_refiner"]["backend"], "max_new_tokens": llm_tokens,
                "first_s": first.time_s, "refine_s": _median([run.time_s for run in runs]),
                "refine_runs_s": [run.time_s for run in runs], "refined_words": len(refined.split()) if refined else 0,
                "error": runs[-1].error}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(argv: list[str], cases: list[str]) -> dict[str, dict]:
    """Each case in its own process; a case's failure is one line (exit 2 for bad input, else 1)."""
    rows = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    for case in cases:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", case]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode:
            last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise CaseFailed(f"case {case} failed: {last}", 2 if result.returncode == 2 else 1)
        rows[case] = json.loads(result.stdout.strip().splitlines()[-1])
    return rows


class CaseFailed(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    out = {}
    base = rows.get("animatediff")
    if base is None:
        return out
    for case, key in (("image_prompt", "image_prompt"), ("coarse", "coarse")):
        if case in rows:
            out[f"{key}_time"] = rows[case]["sampling_s"] / base["sampling_s"]
            out[f"{key}_denoising"] = rows[case]["denoising_s"] / base["denoising_s"]
            out[f"{key}_peak"] = rows[case]["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else None
    return out


def _ratio_text(value: float | None) -> str:
    return "n/a (plain AnimateDiff's peak is not positive)" if value is None else f"{value:.3f}"


def table(rows: dict[str, dict], llm: dict | None) -> str:
    lines = []
    if rows:
        lines.append(f"{'case':<14}{'frames':>7}{'steps':>6}{'UNet calls':>11}{'prepare (s)':>13}{'denoising (s)':>15}"
                     f"{'sampling (s)':>14}{'total (s)':>11}{'peak (MiB)':>12}")
        for row in rows.values():
            lines.append(f"{row['case']:<14}{row['frames']:>7}{row['steps']:>6}{row['unet_calls']:>11}"
                         f"{row['prepare_s']:>13.3f}{row['denoising_s']:>15.3f}{row['sampling_s']:>14.3f}"
                         f"{row['total_s']:>11.3f}{row['peak_mib']:>12.1f}")
    found = ratios(rows)
    if "image_prompt_time" in found:
        value = found["image_prompt_time"]
        verdict = "met" if value <= TARGET else "NOT met"
        lines.append(f"image_prompt / animatediff, sampling time: {value:.3f} (target <= {TARGET}: {verdict}); "
                     f"denoising only: {found['image_prompt_denoising']:.3f}")
        lines.append(f"image_prompt / animatediff, peak memory: {_ratio_text(found['image_prompt_peak'])}")
    if "coarse_time" in found:
        lines.append(f"coarse only (method.fine=false) / animatediff, sampling time: {found['coarse_time']:.3f}; "
                     f"peak memory: {_ratio_text(found['coarse_peak'])}")
    if llm is not None:
        lines.append(f"LLM refinement step (prompt_refiner=llm, {llm['backend']}, tiny random LM, "
                     f"{llm['max_new_tokens']} new tokens; no target): {llm['refine_s']:.3f} s "
                     f"(first, loading the LM: {llm['first_s']:.3f} s)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="model=tiny's random parts instead of the toy weights")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per case; the median is kept")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (a multiple of 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm-tokens", type=int, default=256, help="llm.max_new_tokens of the refinement step")
    parser.add_argument("--cases", nargs="+", choices=[*CASES, LLM_CASE], default=[*CASES, LLM_CASE])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--case", choices=[*CASES, LLM_CASE], default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check(args) -> str | None:
    for name in ("repeat", "frames", "steps", "llm_tokens"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    if args.size < 8 or args.size % 8:
        return f"--size must be a positive multiple of 8, got {args.size}"
    if not args.tiny and not TOY_MANIFEST.is_file():
        return (f"the toy image_prompt weights are not built ({TOY_MANIFEST.parent}); "
                "run scripts/build_toy_world.py or pass --tiny")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check(args)
    if problem:
        print(f"benchmark_image_prompt: {problem}", file=sys.stderr)
        return 2
    common = (args.device, args.tiny, args.repeat, args.frames, args.steps, args.size, args.seed)
    if args.case is not None:  # child process: one case
        from stylevid.errors import UserInputError

        try:
            record = llm_case(*common, args.llm_tokens) if args.case == LLM_CASE else one_case(args.case, *common)
        except UserInputError as error:
            print(error, file=sys.stderr)
            return 2
        print(json.dumps(record))
        return 0
    argv_child = [*(["--tiny"] if args.tiny else []), "--device", args.device, "--repeat", str(args.repeat),
                  "--frames", str(args.frames), "--steps", str(args.steps), "--size", str(args.size),
                  "--seed", str(args.seed), "--llm-tokens", str(args.llm_tokens)]
    try:
        measured = measure(argv_child, list(dict.fromkeys(args.cases)))
    except CaseFailed as failure:
        print(f"benchmark_image_prompt: {failure}", file=sys.stderr)
        return failure.code
    llm = measured.pop(LLM_CASE, None)
    options = {"device": args.device, "model": "tiny" if args.tiny else "toy", "repeat": args.repeat,
               "frames": args.frames, "steps": args.steps, "size": args.size, "seed": args.seed,
               "prompt": PROMPT, "subject": SUBJECT, "llm_tokens": args.llm_tokens}
    print(" ".join(f"{key}={value}" for key, value in options.items() if key not in ("prompt", "subject"))
          + f" prompt={PROMPT!r} subject={SUBJECT}")
    print(table(measured, llm))
    if args.json:
        found = ratios(measured)
        record = {"options": options, "rows": measured, "ratios": found, "target": TARGET,
                  "met": found["image_prompt_time"] <= TARGET if "image_prompt_time" in found else None, "llm": llm}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
