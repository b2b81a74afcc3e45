"""`stylevid generate`: every key a user types, given a bad value, ends in one line and exit code 2, before any
run directory exists; and the defect-trial cases that used to print tracebacks (issues 16 and 23)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_stylevid

TINY = ["model=tiny", "frames=2", "steps=4", "height=64", "width=64"]
STYLE = "style=examples/styles/ocean.png"

# (arguments after `generate model=tiny`, a part of the one-line message)
BAD_INPUTS = [
    (["method=t2v_zero", "prompt=x", "frames=abc"], "frames must be an integer, got 'abc'"),
    (["method=t2v_zero", "prompt=x", "frames=0"], "frames must be at least 1"),
    (["method=t2v_zero", "prompt=x", "frames=2.5"], "frames must be an integer"),
    (["method=t2v_zero", "prompt=x", "seed=abc"], "seed must be an integer, got 'abc'"),
    (["method=t2v_zero", "prompt=x", "seed=99999999999999999999"], "seed must be between 0 and"),
    (["method=t2v_zero", "prompt=x", "seed=-5"], "seed must be between 0 and"),
    (["method=t2v_zero", "prompt=x", "height=100000"], "height must be between 8 and 4096"),
    (["method=t2v_zero", "prompt=x", "width=60"], "multiples of 8"),
    (["method=t2v_zero", "prompt=x", "height=big"], "height must be an integer"),
    (["method=t2v_zero", "prompt=x", "steps=0"], "steps must be between 1 and 1000, got 0"),
    (["method=t2v_zero", "prompt=x", "steps=2"], "steps must be at least 3 for method=t2v_zero"),
    (["method=t2v_zero", "prompt=x", "steps=6000"], "steps must be between 1 and 1000"),
    (["method=stylet2v0", "prompt=x", STYLE, "steps=6000"], "steps must be between 1 and 1000"),
    (["method=animatediff", "prompt=x", "steps=6000"], "steps must be between 1 and 1000"),
    (["method=t2v_zero", "prompt=x", "guidance_scale=nan"], "guidance_scale must be a finite number"),
    (["method=t2v_zero", "prompt=x", "guidance_scale=inf"], "guidance_scale must be a finite number"),
    (["method=animatediff", "prompt=x", "guidance_scale=-inf"], "guidance_scale must be a finite number"),
    (["method=t2v_zero", "prompt=x", "guidance_scale=-1"], "guidance_scale must be at least 0, got -1"),
    (["method=t2v_zero", "prompt=x", "guidance_scale=high"], "guidance_scale must be a number"),
    (["method=t2v_zero", "prompt=x", "fps=0"], "fps must be greater than 0"),
    (["method=t2v_zero", "prompt=x", "fps=nan"], "fps must be a finite number"),
    (["method=t2v_zero", "prompt=x", "chunk_size=-1"], "chunk_size must be at least 0, got -1"),
    (["method=t2v_zero", "prompt=x", "chunk_size=1", "frames=4"], "chunk_size must be 0 (no chunking) or at least 2"),
    (["method=t2v_zero", "prompt=x", "method.t0=abc"], "method.t0 must be an integer"),
    (["method=t2v_zero", "prompt=x", "method.t0=3", "method.t1=2"], "need 0 <= t0 < t1"),
    (["method=t2v_zero", "prompt=x", "method.motion_field_strength_x=inf"], "method.motion_field_strength_x must be a finite"),
    (["method=t2v_zero", "prompt=x", "method.smoothing_alpha=2"], "method.smoothing_alpha must be between 0 and 1"),
    (["method=t2v_zero", "prompt=x", "method.smooth_background=maybe"], "method.smooth_background must be true or false"),
    (["method=t2v_zero", "prompt=x", "save_frames=3"], "save_frames must be true or false"),
    (["method=t2v_zero", "prompt=x", "vae_slicing=yes"], "vae_slicing must be true or false"),
    (["method=t2v_zero", "prompt=x", "dtype=float8"], "dtype must be one of"),
    (["method=t2v_zero", "prompt=x", "device=gpu0"], "is not a torch device"),
    (["method=t2v_zero", "prompt=x", "controlnet=tiny"], "controlnet is a block of keys"),
    (["method=t2v_zero", "prompt=x", "condition.scale=nan"], "condition.scale must be a finite number"),
    (["method=t2v_zero", "prompt=x", "output_dir=/sys/stylevid-out"], "cannot write in /sys"),
    (["method=t2v_zero", "prompt=x", "output_dir=/etc/hostname/run"], "is a file, not a directory"),
    (["method=t2v_zero", "prompt=x", "outputs_root=/sys/stylevid-out"], "outputs_root /sys/stylevid-out: cannot write"),
    (["method=t2v_zero", "prompt=x", STYLE], "method=t2v_zero does not support style= (methods that do: animatediff, stylet2v0)"),
    (["method=t2v_zero", "prompt=x", "style_prompt=a painting"], "method=t2v_zero does not support style_prompt="),
    (["method=animatediff", "prompt=x", "style=/no/such.png"], "style image not found: /no/such.png"),
    (["method=animatediff", "prompt=x", "method.context_length=0"], "method.context_length must be at least 1"),
    (["method=animatediff", "prompt=x", "method.free_init_iters=x"], "method.free_init_iters must be an integer"),
    (["method=t2v_zero", "prompt=x", "cpu_offload=maybe"], "cpu_offload must be true or false"),
    (["method=t2v_zero", "prompt=x", "condition=canny", "condition.stride=abc"], "condition.stride must be an integer"),
    (["method=t2v_zero", "prompt=x", "condition=canny", "condition.guidance_start=0.9", "condition.guidance_end=0.1"],
     "need 0 <= condition.guidance_start < condition.guidance_end <= 1"),
    (["method=t2v_zero", "prompt=x", "condition.video=/no/clip.mp4"], "but no condition kind"),
    (["method=t2v_zero", "prompt=x", "condition=canny", "condition.video=/no/clip.mp4"], "condition.video /no/clip.mp4: no such file"),
    (["method=t2v_zero", "prompt=x", "condition=canny", "condition.maps=/no/maps"], "condition.maps (canny) /no/maps: no such file"),
    (["method=t2v_zero", "prompt=x", "condition=canny", "condition.controls.canny.scale=inf"], "condition.controls.canny.scale must be a finite"),
    (["method=t2v_zero", "prompt=x", "condition=[canny,depth]", "controlnet.path=tiny"], "applies only to a single condition"),
    (["method=animatediff", "prompt=x", "lora.scale=nan"], "lora.scale must be a finite number"),
    (["method=animatediff", "prompt=x", "lora.path=/no/lora.safetensors"], "LoRA file not found"),
    (["method=animatediff", "prompt=x", "method.beta_schedule=cosine"], "method.beta_schedule must be one of"),
    (["method=animatediff", "prompt=x", "method.free_noise=true", "method.context_stride=0"], "method.context_stride must be at least 1"),
    (["method=animatediff", "prompt=x", "condition=canny"], "condition=canny needs an input: condition.video="),
    (["method=animatediff", "prompt=x", "condition=canny", "condition.motion_field=true"],
     "method=animatediff does not support condition.motion_field=true (methods that do: stylet2v0, t2v_zero)"),
    (["method=animatediff", "prompt=x", "condition=canny", "condition.shared_noise=false"],
     "method=animatediff does not support condition.shared_noise=false"),
    (["method=stylet2v0", "prompt=x", "style=/no/such.png"], "style image not found"),
    (["method=t2v_zero", "prompt=x", "prompts=/no/such.txt"], "prompts file not found"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a[2:]) or a[0] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(args, message, tmp_path, capsys):
    code, _, err = run_stylevid(["generate", *TINY, *args, f"outputs_root={tmp_path / 'out'}"]
                                if not any(a.startswith("outputs_root") for a in args) else ["generate", *TINY, *args], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cell,message", [
    ("abc", "seed must be an integer, got 'abc'"),
    ("-5", "seed must be between 0 and"),
    ("1e99", "seed must be an integer"),
    ("99999999999999999999", "seed must be between 0 and"),
])
def test_bad_seed_in_a_prompts_csv_names_the_row(cell, message, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"prompt,seed\na cat,1\na dog,{cell}\n")
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, f"prompts={prompts}", f"outputs_root={tmp_path / 'out'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "row 2" in err and message in err
    assert not (tmp_path / "out").exists()


def test_non_ascii_prompt_works_unquoted(tmp_path, capsys):
    # the shell strips the quotes of prompt="un café", and Hydra's grammar refuses unquoted non-ASCII text
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=1", "prompt=un café à l'aube",
                                 f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["prompt"] == "un café à l'aube"


def test_sweep_flag_after_the_overrides_works(tmp_path, capsys):
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=1", "prompt=x", "seed=0,1",
                                 f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m"], capsys)
    assert code == 0, err
    assert sorted(json.loads(p.read_text())["seed"] for p in (tmp_path / "sweep").glob("*/result.json")) == [0, 1]


def test_a_key_a_method_ignores_is_only_a_warning_in_a_sweep_over_methods(tmp_path, capsys):
    # -m method=t2v_zero,stylet2v0 style=... is the paper's comparison: style cannot be set for one job only
    code, _, err = run_stylevid(["generate", "-m", "method=t2v_zero,stylet2v0", *TINY, "frames=1", "prompt=x", STYLE,
                                 f"hydra.sweep.dir={tmp_path / 'sweep'}"], capsys)
    assert code == 0, err
    assert "warning: method=t2v_zero does not support style= (methods that do: animatediff, stylet2v0); ignored in this sweep job" in err
    assert sorted(json.loads(p.read_text())["method"] for p in (tmp_path / "sweep").glob("*/result.json")) == ["stylet2v0", "t2v_zero"]


def test_ctrl_c_is_one_line_and_removes_the_half_made_run(tmp_path, capsys, monkeypatch):
    import stylevid.generate as generate

    def interrupted(*args, **kwargs):
        (tmp_path / "run").mkdir()
        with generate.run_directory(tmp_path / "run"):
            (tmp_path / "run" / "video.mp4").write_bytes(b"half")
            raise KeyboardInterrupt

    monkeypatch.setattr(generate, "execute_job", interrupted)
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "prompt=x", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 130  # the shell's status for SIGINT, so that a script's loop stops too
    assert err.strip() == "interrupted"
    assert not list((tmp_path / "run").iterdir())  # the user's (empty) directory is kept, the half-made files not


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import stylevid.generate as generate

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes.\nmore detail")

    monkeypatch.setattr(generate, "execute_job", allocate)
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "prompt=x", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: out of memory") and "lower height/width/frames" in err


def test_a_killed_run_is_named_unfinished_and_how_to_reuse_it(tmp_path, capsys):
    killed = tmp_path / "run"
    killed.mkdir()
    (killed / "config.yaml").write_text("method: {name: t2v_zero}\n")  # what SIGKILL leaves: no result.json
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "prompt=x", f"output_dir={killed}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds an unfinished run (no result.json" in err and f"rm -r {killed}" in err
    assert (killed / "config.yaml").exists()  # nothing the user has is touched


def test_the_model_scheduler_bounds_steps_once_loaded():
    from diffusers import DDIMScheduler

    from stylevid.errors import UserInputError
    from stylevid.methods.base import check_steps_fit

    scheduler = DDIMScheduler(num_train_timesteps=100)
    check_steps_fit(100, scheduler)
    with pytest.raises(UserInputError, match="steps=101 is more than the model's scheduler was trained on .100"):
        check_steps_fit(101, scheduler)


def _write_clip(path: Path, frames: int, fps: float) -> Path:
    from stylevid.io.video import write_video

    video = np.zeros((frames, 64, 64, 3), dtype=np.uint8)
    for index in range(frames):  # a bright bar that moves right one column block per frame
        video[index, 16:48, 4 * index : 4 * index + 12] = 255
    return write_video(path, video, fps=fps)


def test_conditioned_video_keeps_the_input_frame_rate(tmp_path, capsys):
    """A 10-frame clip at 8 fps gives 6 consecutive frames at 8 fps (it used to be read at 4 fps: 5 frames)."""
    clip = _write_clip(tmp_path / "clip.mp4", frames=10, fps=8)
    run_dir = tmp_path / "run"
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=6", "prompt=x", "condition=canny",
                                 f"condition.video={clip}", "controlnet.path=tiny", f"output_dir={run_dir}"], capsys)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["fps"] == pytest.approx(8.0) and result["frames"] == 6
    import imageio.v3 as iio

    assert iio.immeta(run_dir / "video.mp4", plugin="FFMPEG")["fps"] == pytest.approx(8.0)
    # the edge maps are of consecutive input frames: the bar's left edge moves 4 px per map
    maps = sorted((run_dir / "conditions" / "canny").glob("*.png"))
    assert len(maps) == 6
    # an explicit fps= still resamples the input: at 4 fps every second frame
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=5", "fps=4", "prompt=x", "condition=canny",
                                 f"condition.video={clip}", "controlnet.path=tiny", f"output_dir={tmp_path / 'run4'}"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run4" / "result.json").read_text())["fps"] == 4.0


def test_a_controlnet_for_another_geometry_is_refused_naming_both(tmp_path, capsys):
    """The tiny ControlNet reads maps at 8x the latent size; a model whose VAE downsamples 2x cannot take it."""
    import torch
    from diffusers import AutoencoderKL

    from stylevid.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    torch.manual_seed(0)
    pipe.vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                             layers_per_block=1)
    pipe.save_pretrained(tmp_path / "vae2x")
    clip = _write_clip(tmp_path / "clip.mp4", frames=4, fps=8)
    code, _, err = run_stylevid(["generate", "method=t2v_zero", f"model.path={tmp_path / 'vae2x'}", "frames=2", "steps=4",
                                 "height=64", "width=64", "prompt=x", "condition=canny", f"condition.video={clip}",
                                 "controlnet.path=tiny", f"outputs_root={tmp_path / 'out'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "ControlNet tiny (canny) does not fit model" in err and str(tmp_path / "vae2x") in err
    assert "downsampling is 8, the model's 2" in err
    assert not list((tmp_path / "out").rglob("result.json"))


def test_an_interrupted_batch_is_not_finished_and_a_rerun_completes_it(tmp_path, capsys, monkeypatch):
    import stylevid.generate as generate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "batch"
    real_execute = generate.execute_job
    made = []

    def stop_at_second_row(job, loaded, run_dir, reporter):
        if run_dir.name == "0001":
            raise KeyboardInterrupt
        made.append(run_dir.name)
        return real_execute(job, loaded, run_dir, reporter)

    monkeypatch.setattr(generate, "execute_job", stop_at_second_row)
    args = ["generate", "method=t2v_zero", *TINY, "frames=1", f"prompts={prompts}", f"output_dir={out}"]
    assert run_stylevid(args, capsys)[0] == 130
    assert (out / "0000" / "result.json").exists() and not (out / "batch.json").exists()
    first = (out / "0000" / "result.json").read_bytes()

    # a single run into it is told what the directory holds
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "prompt=x", f"output_dir={out}"], capsys)
    assert code == 2 and "holds an unfinished batch" in err

    monkeypatch.setattr(generate, "execute_job", real_execute)
    code, _, err = run_stylevid(args, capsys)  # the same command again: the missing rows are made
    assert code == 0, err
    batch = json.loads((out / "batch.json").read_text())
    assert batch["runs"] == ["0000", "0001", "0002"] and batch["made_now"] == ["0001", "0002"] and batch["rows"] == 3
    assert (out / "0000" / "result.json").read_bytes() == first  # the finished row is kept as it was
    assert [json.loads((out / r / "result.json").read_text())["prompt"] for r in batch["runs"]] == ["one", "two", "three"]

    # once finished, it is never written again; other prompts into an unfinished batch are refused
    code, _, err = run_stylevid(args, capsys)
    assert code == 2 and "already holds a finished batch" in err
