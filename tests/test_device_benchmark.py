"""scripts/device_benchmark.py: its --smoke run (the GPU benchmark's code path on the CPU, tiny configs) and what its
figures rest on: the bare loop makes exactly the pipeline's UNet calls, the ratios are the printed times' ratios,
the SD 1.5 configs are SD 1.5's."""

import json
import math
import statistics

import pytest
import torch

from scripts import device_benchmark
from scripts.device_benchmark import ROWS, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_benchmark") / "device_benchmark.json"
    result = main(["--smoke", "--out", str(out)])
    return result, json.loads(out.read_text())


def test_smoke_measures_every_row_and_writes_the_record(smoke):
    result, written = smoke
    assert written["rows"] == json.loads(json.dumps(result["rows"], default=str))
    assert written["gpu"] == "cpu" and written["options"]["preset"] == "smoke" and written["options"]["dtype"] == "fp32"
    assert written["versions"]["torch"] == torch.__version__ and written["versions"]["diffusers"]
    assert written["date"] and written["elapsed_s"] > 0
    assert [row["name"] for row in written["rows"]] == list(ROWS)
    for row in written["rows"]:
        if row["name"] == "image_prompt":  # not a stylevid method yet: skipped, saying why
            assert row["status"] == "skipped" and "image_prompt" in row["reason"]
            continue
        assert row["status"] == "measured", (row["name"], row["reason"])
        # the long-video row is about memory: one timed run of each length (see long_video_row)
        assert row["repeats"] == (1 if row["name"] == "long_video" else written["options"]["repeats"])
        for name, run in row["runs"].items():
            assert len(run["times_s"]) == row["repeats"], name  # the time budget was never short here
            assert all(math.isfinite(t) and t > 0 for t in run["times_s"] + run["warmup_s"]), name
            assert run["time_s"] == statistics.median(run["times_s"])
            assert run["peak_mib"] is None  # no resettable peak on the CPU: n/a, not a made-up figure


def test_ratios_are_the_times_ratios_as_printed(smoke):
    result, _ = smoke
    printed = device_benchmark.table(result)
    checked = 0
    for row in result["rows"]:
        for check in row.get("checks", []):
            if check["quantity"] != "time_s":
                continue
            runs = row["runs"]
            assert check["value"] == pytest.approx(runs[check["numerator"]]["time_s"] / runs[check["denominator"]]["time_s"])
            if check["limit"] is not None:
                assert check["pass"] == (check["value"] <= check["limit"])
            assert f"| {row['name']} | {check['name']} | | | | {check['value']:.3f} |" in printed
            checked += 1
    assert checked >= 15


def test_stylevid_and_its_peers_make_the_same_model_calls(smoke):
    from stylevid.methods.t2v_zero import default_step_counts

    rows = {row["name"]: row for row in smoke[0]["rows"]}
    for name in ("t2v_zero", "animatediff", "animatediff_controlnet"):
        same = [check for check in rows[name]["checks"] if check["quantity"] == "work_digest"]
        assert len(same) == 2 and all(check["pass"] for check in same), name
    # Text2Video-Zero: frame 1 alone from T to t0 (steps - t0 - 1 calls), then all frames from t1 (t1 + 1 calls)
    size, frames, steps = device_benchmark.WORK["smoke"]["t2v"]
    t0, t1 = default_step_counts(steps)
    assert rows["t2v_zero"]["runs"]["stylevid t2v_zero"]["model_calls"] == {"unet": steps - t0 - 1 + t1 + 1}
    steps = device_benchmark.WORK["smoke"]["animatediff"][2]
    assert rows["animatediff"]["runs"]["stylevid animatediff"]["model_calls"] == {"unet": steps}
    assert rows["animatediff_controlnet"]["runs"]["stylevid animatediff + ControlNet"]["model_calls"] == {
        "unet": steps, "controlnet": steps}


@pytest.mark.parametrize("row_name", ["t2v_zero", "animatediff"])
def test_bare_loop_makes_exactly_the_pipelines_unet_calls(row_name):
    """Counted here with the test's own hook, independently of the script's recorder."""
    components = device_benchmark.Components(device_benchmark.smoke_configs(), torch.device("cpu"), torch.float32,
                                             channels_last=False, compile_unet=False)
    ctx = device_benchmark.Context(components, device_benchmark.WORK["smoke"], torch.device("cpu"), torch.float32,
                                   repeats=1, warmups=1, deadline=float("inf"))
    plan = ROWS[row_name](ctx)
    stylevid_run = next(run for run in plan.runs if run.name.startswith("stylevid"))
    bare = next(run for run in plan.runs if run.name.startswith("bare loop"))
    unet = stylevid_run.models["unet"]
    batches = []
    handle = unet.register_forward_pre_hook(lambda module, args, kwargs: batches.append(
        (tuple((args or (kwargs["sample"],))[0].shape), tuple(kwargs["encoder_hidden_states"].shape))), with_kwargs=True)
    try:
        device_benchmark.warm_up(stylevid_run, ctx)  # the pipeline's calls (recorded for the replay)
        pipeline_batches, batches[:] = list(batches), []
        device_benchmark.warm_up(bare, ctx)
    finally:
        handle.remove()
    assert pipeline_batches and batches == pipeline_batches
    if row_name == "t2v_zero":  # CFG doubling: frame 1 alone in 2 rows, then all frames in 2 x frames rows
        frames = device_benchmark.WORK["smoke"]["t2v"][1]
        assert {shape[0][0] for shape in batches} == {2, 2 * frames}


def test_rows_selects_rows_in_the_given_order(tmp_path):
    result = main(["--smoke", "--rows", "image_prompt,train_motion_module", "--repeats", "1", "--out", str(tmp_path / "b.json")])
    assert [row["name"] for row in result["rows"]] == ["image_prompt", "train_motion_module"]
    runs = result["rows"][1]["runs"]
    assert set(runs) == {"gradient checkpointing off", "gradient checkpointing on (the target's)"}
    assert all(len(run["times_s"]) == 1 for run in runs.values())


def test_a_spent_time_budget_skips_rows_and_says_so(tmp_path):
    result = main(["--smoke", "--rows", "train_motion_module", "--time-budget", "1e-9", "--out", str(tmp_path / "b.json")])
    assert result["rows"][0]["status"] == "skipped" and "time-budget" in result["rows"][0]["reason"]


@pytest.mark.parametrize("argv", [
    ["--smoke", "--rows", "t2v_zero", "nonsense"],
    ["--smoke", "--dtype", "fp8"],
    ["--smoke", "--repeats", "0"],
    ["--smoke", "--device", "cpu:x"],
    ["--device", "cpu"],  # SD 1.5 scale on a CPU
])
def test_bad_input_is_one_line_and_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "b.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "b.json").exists()


def test_sd15_configs_are_sd15s():
    """Built on the meta device (no memory): the parameter counts of runwayml/stable-diffusion-v1-5's UNet, VAE and
    CLIP ViT-L/14 text encoder, and the v1-5-2 motion module is the one stylevid trains for that UNet."""
    from diffusers import MotionAdapter

    from stylevid.models.motion_module import motion_adapter_for_unet

    components = device_benchmark.Components(device_benchmark.SD15, torch.device("meta"), torch.float16,
                                             channels_last=False, compile_unet=False)
    pipe = components.pipe
    count = lambda module: sum(parameter.numel() for parameter in module.parameters())  # noqa: E731
    assert (count(pipe.unet), count(pipe.vae), count(pipe.text_encoder)) == (859_520_964, 83_653_863, 123_060_480)
    assert pipe.unet.device.type == "meta" and pipe.unet.dtype == torch.float16  # built where it runs, then cast
    assert pipe.vae.config.scaling_factor == 0.18215 and pipe.tokenizer.model_max_length == 77
    adapter = MotionAdapter.from_config(device_benchmark.SD15["motion_adapter"])
    with torch.device("meta"):
        trained = motion_adapter_for_unet(pipe.unet)
    keys = ("block_out_channels", "motion_layers_per_block", "motion_num_attention_heads", "motion_norm_num_groups",
            "motion_max_seq_length", "use_motion_mid_block", "motion_transformer_layers_per_block")
    assert {key: adapter.config[key] for key in keys} == {key: trained.config[key] for key in keys}
