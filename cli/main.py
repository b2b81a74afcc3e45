"""The `stylevid` command: `stylevid generate|train|invert|evaluate [hydra overrides]`.

Hydra does not nest under argparse, so the subcommand is popped here and `<task>.yaml` is composed by
Hydra's own entry point: `--help`, `--cfg job` and `-m` behave as in any Hydra app.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import resources
from pathlib import Path

from rich.console import Console

TASKS = {
    "generate": "zero-shot video from text (t2v_zero), a style image (stylet2v0) and pose/edge/depth conditions",
    "train": "train a motion module (stylevid train motion_module data=webvid ...), on CPU, a GPU or torchrun",
    "invert": "DDIM-invert an image or video: latents per step, a reconstruction and its PSNR",
    "evaluate": "CLIPSIM, consistency, style fidelity, warp error, FVD, IS over runs, sweeps or video folders",
}
AVAILABLE = {"generate", "train", "invert", "evaluate"}
GROUPS_CHECKED = ("method", "model", "condition", "metrics", "data", "trainer")  # checked before Hydra, for a one-line error

console = Console(stderr=True)


def conf_dir() -> Path:
    return Path(str(resources.files("stylevid.conf")))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def usage() -> str:
    lines = ["usage: stylevid TASK [key=value ...] [--help] [--cfg job] [-m]", "", "tasks:"]
    lines += [f"  {task:<9} {text}" for task, text in TASKS.items()]
    lines += ["", "methods (generate method=...):"]
    lines += [f"  {name}" for name in group_options("method")]
    lines += ["", "models (model=..., or model.path=<hub id | diffusers dir | .safetensors>):"]
    lines += [f"  {name}" for name in group_options("model")]
    lines += ["", "`stylevid TASK --help` shows every key of that task. Examples:",
              '  stylevid generate method=stylet2v0 prompt="a horse galloping on a beach" style=vangogh.png model=sd15',
              '  stylevid generate method=t2v_zero prompt="a panda surfing" frames=24 chunk_size=8']
    return "\n".join(lines)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def check_group_choices(overrides: list[str]) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in GROUPS_CHECKED or not value or value.startswith(("glob(", "range(")):
            continue
        # `a`, a sweep `a,b`, or a list `[a,b]`: every name must be an option of the group
        names = [n.strip() for n in value.strip("[]").split(",") if n.strip()]
        options = group_options(key)
        for name in names:
            if name not in options:
                fail(f"unknown {key} {name!r}; choose one of: {', '.join(options)}")


def check_composes(task: str, overrides: list[str]) -> None:
    """Compose the config once before running, so that a bad override is one line and exit code 2.

    (Hydra's own report spans several lines; sweeps and flags are left to Hydra.)
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from omegaconf import OmegaConf

    try:
        with initialize_config_module("stylevid.conf", version_base="1.3"):
            cfg = compose(task, overrides=overrides)
        missing = sorted(key for key in OmegaConf.missing_keys(cfg) if not key.startswith("hydra"))
        if missing:
            fail(f"missing required value{'s' if len(missing) > 1 else ''}: " + ", ".join(f"{k}=..." for k in missing))
    except Exception as error:  # Hydra raises several exception types for a bad override
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        fail("; ".join(lines[:2]) or error.__class__.__name__)
    finally:
        GlobalHydra.instance().clear()


def quiet_libraries() -> None:
    """Keep the terminal for stylevid's own progress: library chatter goes only above warning level."""
    import warnings

    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    task, overrides = argv[0], argv[1:]
    if task not in TASKS:
        fail(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if task not in AVAILABLE:
        fail(f"stylevid {task} is not yet available")
    if task == "train":
        # `stylevid train motion_module ...`: the target is a word before the overrides
        if overrides and "=" not in overrides[0] and not overrides[0].startswith("-"):
            overrides = [f"target={overrides[0]}", *overrides[1:]]
    check_group_choices(overrides)
    if task == "generate" and any(arg in ("--help", "-h", "--hydra-help") for arg in overrides):
        if not any(arg.startswith("method=") for arg in overrides):
            overrides.append("method=stylet2v0")  # show a complete config: the method group is required
    if not any(arg.startswith("-") for arg in overrides):
        check_composes(task, overrides)

    import hydra  # imported late so that `stylevid --help` answers at once

    from .tasks import TASK_FUNCTIONS

    entered = {"task": False}

    def task_main(cfg) -> None:
        entered["task"] = True
        TASK_FUNCTIONS[task](cfg)

    sys.argv = [f"stylevid-{task}", *overrides]
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    logging.basicConfig(level=logging.WARNING)
    quiet_libraries()
    try:
        hydra.main(config_path="pkg://stylevid.conf", config_name=task, version_base="1.3")(task_main)()
    except SystemExit as exit_:
        # Hydra exits with 1 when it cannot compose the config (a bad override): that is the user's input.
        if exit_.code == 1 and not entered["task"]:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
