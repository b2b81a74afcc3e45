import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main  # noqa: F401  (the source tree's cli/, same module as stylevid.cli)
from conftest import run_stylevid

TINY = ["model=tiny", "frames=3", "steps=6", "height=64", "width=64"]


run = run_stylevid  # `stylevid ARGS` in this process: (exit code, stdout, stderr)


def test_help_lists_tasks_and_methods():
    out = subprocess.run([sys.executable, "-m", "stylevid", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for word in ("generate", "train", "invert", "evaluate", "t2v_zero", "stylet2v0", "sd15", "tiny"):
        assert word in out.stdout


def test_generate_writes_a_complete_run_directory(tmp_path, capsys, style_image_path):
    import psutil

    run_dir = tmp_path / "run"
    rss_before_mib = psutil.Process().memory_info().rss / 2**20
    code, out, err = run(
        ["generate", "method=stylet2v0", "prompt=a red circle", f"style={style_image_path}", *TINY,
         f"output_dir={run_dir}", "save_frames=true", "fps=6"],
        capsys,
    )
    assert code == 0, err
    assert out.strip().endswith(str(run_dir / "video.mp4"))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["method"] == "stylet2v0" and result["seed"] == 0
    assert result["model"] == {"name": "tiny", "path": None, "seed": 0}  # the tiny model's seed names its weights
    assert {"loading model", "first frame", "all frames", "decoding"} <= set(result["timings_s"])
    # the process's peak resident set is at least what it held before the run, and a tiny run stays far below 8 GiB
    assert rss_before_mib <= result["memory"]["peak_rss_mib"] < 8192 and result["versions"]["torch"]
    assert result["fps"] == 6.0
    frames = sorted((run_dir / "frames").glob("*.png"))
    assert [f.name for f in frames] == ["0000.png", "0001.png", "0002.png"]
    assert np.asarray(Image.open(frames[0])).shape == (64, 64, 3)
    assert result["style"] == str(style_image_path) and result["style_sharing"]["sharing"] == "aligned"
    assert (result["t0"], result["t1"]) == (3, 4)  # Text2Video-Zero's 44/47 of 50 steps, scaled to steps=6
    # preview.png: the 96x72 style image as the model saw it (cropped to the 64x64 frame), a double gap, the frames
    preview = np.asarray(Image.open(run_dir / "preview.png"))
    assert preview.shape == (64, 64 + 8 + 3 * 64 + 2 * 4, 3) and result["files"]["preview"] == "preview.png"
    for index, frame in enumerate(frames):
        left = 64 + 8 + index * (64 + 4)
        assert np.array_equal(preview[:, left : left + 64], np.asarray(Image.open(frame)))
    assert f"preview: {run_dir / 'preview.png'}" in err.replace("\n", "")
    import imageio.v3 as iio

    video = iio.imread(run_dir / "video.mp4", plugin="FFMPEG")
    assert video.shape[0] == 3 and video.shape[1:3] == (64, 64)
    assert "method:" in (run_dir / "config.yaml").read_text()

    # A finished run is never overwritten: the same output_dir is refused, and the run is intact.
    before = (run_dir / "result.json").read_bytes()
    code, _, err = run(["generate", "method=t2v_zero", "prompt=x", *TINY, f"output_dir={run_dir}"], capsys)
    assert code == 2 and "already holds a finished run" in err and len(err.strip().splitlines()) == 1
    assert (run_dir / "result.json").read_bytes() == before


def test_default_run_directories_never_collide(tmp_path, capsys):
    for _ in range(2):
        code, _, err = run(["generate", "method=t2v_zero", "prompt=x", *TINY, "frames=1", f"outputs_root={tmp_path}"], capsys)
        assert code == 0, err
    runs = sorted(tmp_path.glob("generate/*/*_t2v_zero*"))
    assert len(runs) == 2 and all((r / "result.json").exists() for r in runs)


@pytest.mark.parametrize(
    "args,message",
    [
        (["method=stylet2v0", "prompt=x"], "needs a style image"),
        (["method=stylet2v0", "prompt=x", "style=/no/such/style.png"], "style image not found"),
        (["method=t2v_zero", "prompt=x", "height=60"], "multiples of 8"),
        (["method=t2v_zero", "prompt=x", "frames=0"], "frames must be at least 1"),
        (["method=t2v_zero", "prompt=x", "steps=6", "method.t0=4", "method.t1=6"], "too small"),
        (["method=nope", "prompt=x"], "unknown method 'nope'"),
        (["method=t2v_zero", "model=sd99", "prompt=x"], "unknown model 'sd99'"),
        (["method=t2v_zero", "prompt=x", "model.path=/no/such/weights"], "does not exist"),
        (["method=t2v_zero", "prompt=x", "model=sd15"], "model.path="),
        (["method=t2v_zero", "prompt=x", "no_such_key=1"], "Could not override 'no_such_key'"),
        (["method=t2v_zero"], "no prompt"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys, tmp_path):
    model = [] if any(a.startswith("model") for a in args) else ["model=tiny"]
    code, out, err = run(["generate", *model, *args, f"outputs_root={tmp_path}"], capsys)
    assert code == 2
    assert "Traceback" not in err
    if message:
        assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("result.json"))


def test_unreadable_style_image_leaves_no_run_directory(tmp_path, capsys):
    broken = tmp_path / "style.png"
    broken.write_text("not an image")
    code, _, err = run(["generate", "method=stylet2v0", "prompt=x", f"style={broken}", *TINY, f"outputs_root={tmp_path / 'out'}"], capsys)
    assert code == 2 and "cannot be read" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,message", [
    ("method.strength=1.5", "method.strength (style strength) must be in [0, 1], got 1.5"),
    ("method.reference=noised", "method.reference must be inverted or clean, got 'noised'"),
])
def test_bad_style_settings_fail_before_loading_anything(tmp_path, capsys, style_image_path, override, message):
    # model.path names no weights, so an error found only after loading would be about the model instead
    code, _, err = run(["generate", "method=stylet2v0", "prompt=x", f"style={style_image_path}", override,
                        "model.path=/no/such/weights", f"outputs_root={tmp_path}"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert message in err
    assert not list(tmp_path.iterdir())


def test_unknown_style_layer_is_one_line_and_leaves_no_run(tmp_path, capsys, style_image_path):
    code, _, err = run(["generate", "method=stylet2v0", "prompt=x", f"style={style_image_path}", *TINY,
                        "method.layers=up_block", f"outputs_root={tmp_path}"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'up_block' matches no self-attention layer" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() or "stylet2v0" in p.name]


def test_task_help_names_the_task_and_its_keys(capsys):
    code, out, _ = run(["generate", "--help"], capsys)
    assert code == 0
    assert out.startswith("stylevid generate: ")
    for key in ("method: animatediff, gen1, image_prompt, stylet2v0, t2v_zero, tsr, videogen", "prompt: null", "chunk_size: 8", "strength: 1.0", "-m runs a sweep"):
        assert key in out


def test_unknown_task_is_refused(capsys):
    code, _, err = run(["paint"], capsys)
    assert code == 2 and "unknown task 'paint'" in err


def test_cfg_job_prints_the_composed_config(capsys):
    code, out, _ = run(["generate", "method=stylet2v0", "prompt=hello", "--cfg", "job"], capsys)
    assert code == 0
    assert "name: stylet2v0" in out and "strength: 1.0" in out and "prompt: hello" in out


def test_multirun_sweeps_methods_into_one_sweep_directory(tmp_path, capsys, style_image_path):
    sweep = tmp_path / "sweep"
    code, _, err = run(
        ["generate", "-m", "method=t2v_zero,stylet2v0", "prompt=x", f"style={style_image_path}", *TINY, "frames=2",
         f"hydra.sweep.dir={sweep}"],
        capsys,
    )
    assert code == 0, err
    results = {json.loads(p.read_text())["method"]: p.parent.name for p in sweep.glob("*/result.json")}
    assert results == {"t2v_zero": "0_t2v_zero", "stylet2v0": "1_stylet2v0"}


def test_invert_runs_from_the_command_line(tmp_path, capsys, style_image_path):
    code, out, err = run(["invert", f"input={style_image_path}", "model=tiny", "steps=4", "height=64", "width=64",
                          f"output_dir={tmp_path / 'inv'}"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "inv" / "result.json").read_text())
    assert (tmp_path / "inv" / "latents.safetensors").exists()
    # the recorded PSNR is that of the written reconstruction against the written input, computed here by its
    # definition (the videos are H.264, so within a codec's fraction of a dB)
    import imageio.v3 as iio

    source = iio.imread(tmp_path / "inv" / "input.mp4", plugin="FFMPEG").astype(np.float64)
    rebuilt = iio.imread(tmp_path / "inv" / "reconstruction.mp4", plugin="FFMPEG").astype(np.float64)
    expected = 10 * np.log10(255.0**2 / np.mean((source - rebuilt) ** 2))
    assert abs(result["psnr_db"]["mean"] - expected) < 0.5
    code, _, err = run(["invert", "input=/no/such/clip.mp4", "model=tiny"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_generate_then_evaluate_the_run(tmp_path, capsys, style_image_path):
    run_dir = tmp_path / "run"
    code, _, err = run(["generate", "method=stylet2v0", "prompt=a red circle", f"style={style_image_path}", *TINY, f"output_dir={run_dir}"], capsys)
    assert code == 0, err
    code, out, err = run(["evaluate", f"run={run_dir}", "metrics.clip.model=tiny", "metrics=[clipsim,style_fidelity,temporal_flicker]"], capsys)
    assert code == 0, err
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert set(metrics["aggregate"]) >= {"clipsim", "style_fidelity", "temporal_flicker"}
    assert "clipsim" in out  # the terminal table


@pytest.mark.parametrize("folder,message", [
    ("empty", "holds no videos"),
    ("broken", "none of the 2 videos can be read; first: "),
])
def test_evaluate_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, folder, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "broken" / "b.mp4").write_bytes(b"")
    code, out, err = run(["evaluate", f"videos={tmp_path / folder}", "metrics.clip.model=tiny",
                          "metrics=[temporal_flicker]", f"outputs_root={tmp_path / 'out'}"], capsys)
    assert code == 2 and "Traceback" not in err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").rglob("metrics.json"))


def test_train_then_generate_with_the_trained_motion_module(tmp_path, capsys):
    from stylevid.data.toy import write_toy_videos

    write_toy_videos(tmp_path / "videos", count=3, frames=8, size=32)
    train_dir = tmp_path / "train"
    code, _, err = run(["train", "motion_module", "model=tiny", "data=folder", f"data.video_folder={tmp_path / 'videos'}",
                        "data.frames=4", "data.stride=1", "data.size=32", "data.num_workers=0", "trainer.batch_size=1",
                        "trainer.max_steps=2", "trainer.lr=1e-2", "trainer.checkpoint_every=1", "trainer.log_every=1", f"output_dir={train_dir}"], capsys)
    assert code == 0, err
    # The trained module, loaded by generate, makes another video than the module training started from (zero-init
    # output projections: the image model's frames unchanged), so the trained weights are the ones sampled.
    import imageio.v3 as iio

    from stylevid.models.motion_module import motion_adapter_for_unet, save_motion_adapter
    from stylevid.models.tiny import tiny_unet

    untrained = motion_adapter_for_unet(tiny_unet(), num_attention_heads=8, max_seq_length=32)  # zero-init output
    save_motion_adapter(untrained, tmp_path / "untrained")
    videos = {}
    for name, module in (("trained", train_dir / "motion_module"), ("untrained", tmp_path / "untrained")):
        code, _, err = run(["generate", "method=animatediff", "model=tiny", "prompt=a red square moving right", "frames=4", "steps=3",
                            "height=64", "width=64", f"motion.path={module}", f"output_dir={tmp_path / (name + '_video')}"], capsys)
        assert code == 0, err
        result = json.loads((tmp_path / (name + "_video") / "result.json").read_text())
        assert result["method"] == "animatediff" and result["motion"]["path"] == str(module)
        videos[name] = iio.imread(tmp_path / (name + "_video") / "video.mp4", plugin="FFMPEG").astype(np.float64)
    assert np.abs(videos["trained"] - videos["untrained"]).mean() > 0.5
    code, _, err = run(["train", "motion_module", "model=tiny", "data=folder", f"data.video_folder={tmp_path / 'nothing'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
