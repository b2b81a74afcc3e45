"""Methods are plugins: a method defined in this file alone runs through `stylevid generate` (one video and a
prompts= batch), is listed by `stylevid --help`, and gets the features it declares and no others."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import run_stylevid

from stylevid import values
from stylevid.methods.base import (
    FEATURES,
    VideoMethod,
    VideoOutput,
    VideoSettings,
    common_settings,
    register,
    registered_methods,
    unregister,
)

SMALL = ["model=tiny", "frames=3", "height=16", "width=16"]


@dataclass
class FlatSettings(VideoSettings):
    level: int = 0


class FlatGrey(VideoMethod):
    """Every frame one grey level: `method.level` plus the seed plus 10 per frame, so a test can read back
    which settings and which row made a video."""

    name = "throwaway_flat"
    description = "a test's method: flat grey frames"
    example = "prompt=x method.level=40"

    loads = 0

    def settings(self, cfg):
        return FlatSettings(**common_settings(cfg), level=values.integer(cfg.method.level, "method.level", 0, 200))

    def load(self, cfg, settings, device, dtype, conditions):
        FlatGrey.loads += 1
        return {"device": device}

    def generate(self, loaded, settings, reporter):
        with reporter.stage("painting"):
            levels = [settings.level + settings.seed + 10 * frame for frame in range(settings.frames)]
            frames = np.stack([np.full((settings.height, settings.width, 3), level, np.uint8) for level in levels])
        return VideoOutput(frames=frames, latents=torch.zeros(settings.frames, 4, 2, 2))

    def record(self, cfg, settings):
        return {"level": settings.level}


@pytest.fixture
def flat_method():
    register(FlatGrey, config={"default_fps": 5, "level": 40})
    FlatGrey.loads = 0
    yield FlatGrey
    unregister(FlatGrey.name)


def video_levels(path: Path) -> list[int]:
    """The mean grey level of each frame of an mp4 (lossy: to within a few levels)."""
    return [int(round(float(frame.mean()))) for frame in iio.imread(path, plugin="FFMPEG")]


def test_a_method_from_this_file_alone_makes_a_video_through_the_cli(flat_method, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_stylevid(["generate", "method=throwaway_flat", "prompt=grey", "seed=2", "method.level=60",
                                   *SMALL, f"output_dir={run_dir}"], capsys)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["method"] == "throwaway_flat" and result["level"] == 60 and result["prompt"] == "grey"
    assert result["fps"] == 5.0  # the method config's default_fps
    assert "painting" in result["timings_s"] and "loading model" in result["timings_s"]
    levels = video_levels(run_dir / "video.mp4")
    assert all(abs(got - want) <= 3 for got, want in zip(levels, [62, 72, 82])) and len(levels) == 3
    assert (run_dir / "preview.png").exists() and out.strip().endswith(str(run_dir / "video.mp4"))


def test_a_method_from_this_file_alone_runs_a_prompts_batch_loading_once(flat_method, tmp_path, capsys):
    prompts = tmp_path / "rows.csv"
    prompts.write_text("prompt,seed\nfirst,0\nsecond,30\n")
    batch = tmp_path / "batch"
    code, _, err = run_stylevid(["generate", "method=throwaway_flat", f"prompts={prompts}", *SMALL, f"output_dir={batch}"], capsys)
    assert code == 0, err
    assert json.loads((batch / "batch.json").read_text())["runs"] == ["0000", "0001"]
    assert FlatGrey.loads == 1  # one load for the whole batch
    first, second = (video_levels(batch / row / "video.mp4")[0] for row in ("0000", "0001"))
    assert abs(first - 40) <= 3 and abs(second - 70) <= 3


def test_help_and_the_unknown_method_error_read_the_registry(flat_method, tmp_path, capsys):
    code, out, _ = run_stylevid(["--help"], capsys)
    assert code == 0
    assert re.search(r"throwaway_flat\s+a test's method: flat grey frames", out)
    assert "stylevid generate method=throwaway_flat prompt=x method.level=40" in out
    for name, method in registered_methods().items():
        assert f"{name}" in out and method.description in out
    code, _, err = run_stylevid(["generate", "method=nosuch", "prompt=x"], capsys)
    assert code == 2 and "unknown method 'nosuch'" in err and "throwaway_flat" in err


@pytest.mark.parametrize("override,asked", [
    ("style=examples/styles/ocean.png", "style="),
    ("condition=canny", "condition="),
    ("cpu_offload=true", "cpu_offload=true"),
    ("vae_slicing=true", "vae_slicing=true"),
])
def test_a_feature_the_method_does_not_declare_is_refused_in_one_line(flat_method, override, asked, tmp_path, capsys):
    code, _, err = run_stylevid(["generate", "method=throwaway_flat", "prompt=x", *SMALL, override,
                                 f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"method=throwaway_flat does not support {asked}" in err
    assert not (tmp_path / "run").exists() and FlatGrey.loads == 0


def test_declaring_a_feature_is_what_lets_it_through(flat_method, tmp_path, capsys):
    FlatGrey.supports = frozenset({"vae_slicing"})
    try:
        code, _, err = run_stylevid(["generate", "method=throwaway_flat", "prompt=x", *SMALL, "vae_slicing=true",
                                     f"output_dir={tmp_path / 'run'}"], capsys)
    finally:
        FlatGrey.supports = frozenset()
    assert code == 0, err


def test_registration_checks_the_declaration():
    class Nameless(VideoMethod):
        description = "no name"

    with pytest.raises(TypeError, match="name"):
        register(Nameless)

    class Unknown(VideoMethod):
        name, description, supports = "unknown_feature", "x", frozenset({"teleport"})

    with pytest.raises(TypeError, match="teleport"):
        register(Unknown)
    assert "unknown_feature" not in registered_methods()


def test_the_task_code_names_no_method():
    """generate.py and cli/ learn methods from the registry only (a new method needs no edit there)."""
    repository = Path(__file__).parents[1]
    names = [name for name in registered_methods() if name != FlatGrey.name]
    sources = [repository / "stylevid" / "generate.py", *sorted((repository / "cli").glob("*.py"))]
    for source in sources:
        text = source.read_text()
        for name in names:
            assert not re.search(rf"\b{name}\b", text), f"{source.name} names method {name}"
    assert set(FEATURES) >= {"style", "condition", "cpu_offload", "vae_slicing"}
