"""The `stylevid` command: `stylevid generate|train|invert|evaluate [hydra overrides]`.

Hydra does not nest under argparse, so the subcommand is popped here and `<task>.yaml` is composed by
Hydra's own entry point: `--help`, `--cfg job` and `-m` behave as in any Hydra app.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from importlib import resources
from pathlib import Path

from rich.console import Console

TASKS = {
    "generate": "a video from text, with a style image and pose/edge/depth conditions where the method takes them",
    "train": "train a target (stylevid train TARGET ...), on CPU, a GPU, torchrun or accelerate launch",
    "invert": "DDIM-invert an image or video: latents per step, a reconstruction and its PSNR",
    "evaluate": "CLIPSIM, consistency, style fidelity, warp error, FVD, IS over runs, sweeps or video folders",
}
AVAILABLE = {"generate", "train", "invert", "evaluate"}
GROUPS_CHECKED = ("method", "model", "condition", "metrics", "data", "trainer", "target", "diffusion", "experiment")  # checked before Hydra, for a one-line error

console = Console(stderr=True)


def conf_dir() -> Path:
    return Path(str(resources.files("stylevid.conf")))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def method_lines() -> tuple[list[str], list[str]]:
    """One line per registered method (`stylevid.methods`), and each method's example command."""
    quiet_libraries()  # importing the methods imports diffusers and transformers, which warn about optional packages
    from stylevid.methods.base import registered_methods

    methods = sorted(registered_methods().values(), key=lambda method: method.name)
    lines = [f"  {method.name:<13} {method.description}" for method in methods]
    examples = [f"  stylevid generate method={method.name} {method.example}" for method in methods if method.example]
    return lines, examples


def target_lines() -> tuple[list[str], list[str]]:
    """One line per registered training target (`stylevid.training.targets`), and each target's example."""
    from stylevid.training.targets import registered_targets

    targets = list(registered_targets().values())
    lines = [f"  {target.name:<13} {target.description}" for target in targets]
    examples = [f"  stylevid train {target.name} {target.example}" for target in targets if target.example]
    return lines, examples


def usage() -> str:
    methods, examples = method_lines()
    targets, train_examples = target_lines()
    lines = ["usage: stylevid TASK [key=value ...] [--help] [--cfg job] [-m]", "", "tasks:"]
    lines += [f"  {task:<9} {text}" for task, text in TASKS.items()]
    lines += ["", "methods (generate method=...):", *methods]
    lines += ["", "targets (train TARGET):", *targets]
    lines += ["", "models (model=..., or model.path=<hub id | diffusers dir | .safetensors>):"]
    lines += [f"  {name}" for name in group_options("model")]
    lines += ["", "`stylevid TASK --help` shows every key of that task. Examples:", *examples, *train_examples]
    return "\n".join(lines)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def interrupted() -> None:
    """Ctrl-C: one line, and the shell's exit status for SIGINT (130), so a loop in a script stops too."""
    console.print("[bold yellow]interrupted[/]", highlight=False)
    sys.exit(130)


def check_group_choices(overrides: list[str]) -> None:
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in GROUPS_CHECKED or not value or value.startswith(("glob(", "range(")):
            continue
        # `a`, a sweep `a,b`, or a list `[a,b]`: every name must be an option of the group
        names = [n.strip() for n in value.strip("[]").split(",") if n.strip()]
        options = group_options(key)
        if key == "method":  # the registry: built-in methods and any a plugin registered
            from stylevid.methods.base import registered_methods

            options = sorted(set(options) | set(registered_methods()))
        for name in names:
            if name not in options:
                fail(f"unknown {key} {name!r}; choose one of: {', '.join(options)}")


def config_groups() -> set[str]:
    return {path.name for path in conf_dir().iterdir() if path.is_dir() and not path.name.startswith("_")}


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def check_composes(task: str, overrides: list[str]) -> None:
    """Compose the config once before running, so that a bad override is one line and exit code 2.

    (Hydra's own report spans several lines; sweeps and flags are left to Hydra.)
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from omegaconf import OmegaConf

    groups = config_groups()
    try:
        with initialize_config_module("stylevid.conf", version_base="1.3"):
            cfg = compose(task, overrides=overrides)
            # The same groups without the user's key=value settings: what each key holds by default.
            defaults = compose(task, overrides=[o for o in overrides if _override_key(o) in groups])
        missing = sorted(key for key in OmegaConf.missing_keys(cfg) if not key.startswith("hydra"))
        if missing:
            fail(f"missing required value{'s' if len(missing) > 1 else ''}: " + ", ".join(f"{k}=..." for k in missing))
    except Exception as error:  # Hydra raises several exception types for a bad override
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        fail("; ".join(lines[:2]) or error.__class__.__name__)
    finally:
        GlobalHydra.instance().clear()
    check_value_types(cfg, defaults, [o for o in overrides if _override_key(o) not in groups], groups)


def check_value_types(cfg, defaults, overrides: list[str], groups: set[str]) -> None:
    """Each key=value must have the kind of value the key holds by default (a block, a flag, an integer, a
    number), and no number may be NaN or infinite: otherwise `frames=abc` fails as a ValueError deep in a task,
    `controlnet=tiny` replaces a whole block, and `guidance_scale=nan` quietly turns guidance off."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    for override in overrides:
        if override.startswith("~") or "=" not in override:
            continue
        key = _override_key(override)
        if key.startswith("hydra."):
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        default = OmegaConf.select(defaults, key, throw_on_missing=False)
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"{key} must be a finite number, got {value}")
        if isinstance(value, ListConfig):
            bad = [item for item in value if isinstance(item, float) and not math.isfinite(item)]
            if bad:
                fail(f"{key} must hold finite numbers, got {bad[0]}")
        if default is None or value is None:
            continue
        if isinstance(default, DictConfig) and not isinstance(value, DictConfig):
            inner = ", ".join(f"{key}.{name}" for name in list(default.keys())[:3])
            fail(f"{key} is a block of keys ({inner}...), not a value: set one of them, e.g. {key}.{next(iter(default.keys()), 'path')}={value}")
        if isinstance(default, bool):
            if not isinstance(value, bool):
                fail(f"{key} must be true or false, got {value!r}")
        elif isinstance(default, int):
            # a float is left to the key's own reader: 12.5 px of motion is fine, 2.5 frames is not
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(f"{key} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(f"{key} must be a number, got {value!r}")


def quote_unparsable(overrides: list[str]) -> list[str]:
    """Hydra's override grammar refuses unquoted non-ASCII text (`prompt=un café` as the shell passes it) with a
    LexerNoViableAltException. Such a value can only be meant as a string, so quote it for Hydra; a value that
    still does not parse is left for the one-line error of `check_composes`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not override.startswith("-") and not value.isascii():
            try:
                parser.parse_override(override)
            except Exception:
                escaped = value.replace("\\", "\\\\").replace("'", "\\'")
                override = f"{key}='{escaped}'"
                try:
                    parser.parse_override(override)
                except Exception:
                    fail(f"cannot read {key}={value}: quote the value for Hydra, e.g. '{key}=\"{value}\"'")
        fixed.append(override)
    return fixed


# Hydra's flags with the number of values each takes; argparse loses them among the overrides (`... seed=1 -m`
# would print Hydra's whole usage text), so they are moved in front.
HYDRA_FLAGS = {"-m": 0, "--multirun": 0, "--resolve": 0, "-h": 0, "--help": 0, "--hydra-help": 0,
               "--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--info": 1}


def flags_first(overrides: list[str]) -> list[str]:
    flags, rest, index = [], [], 0
    while index < len(overrides):
        arg = overrides[index]
        takes = HYDRA_FLAGS.get(arg)
        if takes is None:
            rest.append(arg)
            index += 1
            continue
        flags += overrides[index : index + 1 + takes]
        index += 1 + takes
    return flags + rest


def quiet_libraries() -> None:
    """Keep the terminal for stylevid's own progress: library chatter goes only above warning level."""
    import warnings

    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # transformers 5 draws a "Loading weights" bar per model
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
        if any(arg in ("--help", "-h") for arg in overrides) and not any(o.startswith("target=") for o in overrides):
            quiet_libraries()
            targets, examples = target_lines()
            print("\n".join(["usage: stylevid train TARGET [key=value ...] [--help]", "", "targets:", *targets,
                             "", "`stylevid train TARGET --help` shows every key. Examples:", *examples]))
            sys.exit(0)
    overrides = quote_unparsable(flags_first(overrides))
    check_group_choices(overrides)
    if task == "generate" and any(arg in ("--help", "-h", "--hydra-help") for arg in overrides):
        if not any(arg.startswith("method=") for arg in overrides):
            quiet_libraries()
            from stylevid.methods.base import methods_supporting

            # show a complete config (the method group is required): one with a style image, the most keys
            overrides.append(f"method={methods_supporting('style')[0]}")
    if not any(arg.startswith("-") for arg in overrides):
        check_composes(task, overrides)

    import hydra  # imported late so that `stylevid --help` answers at once

    from stylevid.distributed import close_process_group

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
        close_process_group()
    except KeyboardInterrupt:
        interrupted()
    except SystemExit as exit_:
        # Hydra exits with 1 when it cannot compose the config (a bad override): that is the user's input.
        if exit_.code == 1 and not entered["task"]:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
