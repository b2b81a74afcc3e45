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
        assert row["status"] == "measured", (row["name"], row["reason"])
        # the long-video row is about memory: one timed run of each length (see long_video_row)
        assert row["repeats"] == (1 if row["name"] == "long_video" else written["options"]["repeats"])
        for name, run in row["runs"].items():
            assert len(run["times_s"]) == row["repeats"], name  # the time budget was never short here
            assert all(math.isfinite(t) and t > 0 for t in run["times_s"] + run["warmup_s"]), name
            assert run["time_s"] == statistics.median(run["times_s"])
            assert run["peak_mib"] is None  # no resettable peak on the CPU: n/a, not a made-up figure
    # The image-prompt step's own time (CLIP layers, mapper, composed text, exemplar latent), one per timed run
    image_prompt = next(row for row in written["rows"] if row["name"] == "image_prompt")["runs"]["stylevid image_prompt"]
    assert 0 < image_prompt["stages_s"]["image prompt"] < image_prompt["time_s"]


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
    # image_prompt: the video call and one exemplar pass per step, replayed exactly by its bare loop
    image_prompt = rows["image_prompt"]
    assert image_prompt["runs"]["stylevid animatediff"]["model_calls"] == {"unet": steps}
    assert image_prompt["runs"]["stylevid image_prompt"]["model_calls"] == {"unet": 2 * steps}
    same = [check for check in image_prompt["checks"] if check["quantity"] == "work_digest"]
    assert len(same) == 1 and same[0]["pass"]


def smoke_context() -> device_benchmark.Context:
    components = device_benchmark.Components(device_benchmark.smoke_configs(), torch.device("cpu"), torch.float32,
                                             channels_last=False, compile_unet=False)
    return device_benchmark.Context(components, device_benchmark.WORK["smoke"], torch.device("cpu"), torch.float32,
                                    repeats=1, warmups=1, deadline=float("inf"))


def test_image_prompt_makes_animatediffs_video_calls_and_one_exemplar_pass_per_step():
    """The ratio to animatediff compares like with like: the same video calls (batch, CFG doubling, timesteps, text
    shapes), plus the fine stage's exemplar pass: the conditional video's image prompt alone, one frame, at the step's
    timestep."""
    ctx = smoke_context()
    plan = ROWS["image_prompt"](ctx)
    runs = {run.name: run for run in plan.runs}
    animatediff, image_prompt = runs["stylevid animatediff"], runs["stylevid image_prompt"]
    for run in (animatediff, image_prompt):
        device_benchmark.warm_up(run, ctx)
    size, frames, steps = device_benchmark.WORK["smoke"]["animatediff"]
    video = [call for call in image_prompt.calls if call.bound["sample"].shape[2] == frames]
    exemplar = [call for call in image_prompt.calls if call.bound["sample"].shape[2] != frames]
    assert len(animatediff.calls) == len(video) == len(exemplar) == steps
    assert [call.work() for call in video] == [call.work() for call in animatediff.calls]
    for video_call, exemplar_call in zip(video, exemplar):
        batch, channels, _, height, width = video_call.bound["sample"].shape
        assert batch == 2  # CFG: [unconditional, conditional]
        assert exemplar_call.bound["sample"].shape == (1, channels, 1, height, width)
        assert exemplar_call.bound["timestep"].value == video_call.bound["timestep"].value


def test_train_image_prompt_trains_every_parameter_of_the_joint_stage(smoke):
    """The mapper plus a K, V copy of every spatial attention layer of the UNet (cross: coarse; self: the exemplar
    projections, fine) and two gates per self-attention layer, counted here from the modules, not through the
    adapter."""
    from stylevid.models.image_prompt import ImagePromptMapper, default_clip_layers

    work = next(row for row in smoke[0]["rows"] if row["name"] == "train_image_prompt")["work"]
    components = smoke_context().components
    count = lambda modules: sum(p.numel() for module in modules for p in module.parameters())  # noqa: E731
    spatial = {name: module for name, module in components.animatediff.unet.named_modules()
               if name.endswith((".attn1", ".attn2")) and ".motion_modules." not in name}
    assert len(spatial) > 2 and all(".attentions." in name for name in spatial)  # the image model's transformers
    encoder = components.image_encoder[0].config
    mapper = ImagePromptMapper(vision_dim=encoder.hidden_size, text_dim=components.pipe.text_encoder.config.hidden_size,
                               clip_layers=default_clip_layers(encoder.num_hidden_layers),
                               **device_benchmark.smoke_configs()["image_prompt_mapper"])
    assert work["stage"] == "joint"
    gates = 2 * sum(name.endswith(".attn1") for name in spatial)
    assert work["trained_parameters"] == count([mapper]) + count(m for a in spatial.values() for m in (a.to_k, a.to_v)) + gates


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
    result = main(["--smoke", "--rows", "train_videogen_base,train_motion_module", "--repeats", "1", "--out", str(tmp_path / "b.json")])
    assert [row["name"] for row in result["rows"]] == ["train_videogen_base", "train_motion_module"]
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
    # the image-prompt mapper is the one `stylevid train image_prompt` makes
    target = device_benchmark.train_config("image_prompt").target
    assert device_benchmark.SD15["image_prompt_mapper"] == {"hidden_dim": target.mapper_width, "num_tokens": target.num_tokens}
