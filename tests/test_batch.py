"""prompts=FILE: one video per row into one sweep directory, sharded across torchrun ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from stylevid.errors import UserInputError
from stylevid.generate import read_prompt_rows, run_generate

TINY = ["model=tiny", "frames=2", "steps=4", "height=64", "width=64"]


def config(*overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def test_csv_rows_override_prompt_seed_and_style(tmp_path, style_image_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(f"prompt,seed,style\na red fox,7,{style_image_path}\na blue whale,,\n")
    batch = run_generate(config("method=stylet2v0", f"prompts={prompts}", f"style={style_image_path}", *TINY, f"output_dir={tmp_path / 'b'}"))
    results = [json.loads((batch / name / "result.json").read_text()) for name in ("0000", "0001")]
    assert [(r["prompt"], r["seed"]) for r in results] == [("a red fox", 7), ("a blue whale", 0)]
    assert json.loads((batch / "batch.json").read_text())["runs"] == ["0000", "0001"]


def test_every_video_of_a_batch_records_the_shared_model_loading(tmp_path):
    """The model is loaded once for the batch; each result.json keeps that time and the tiny model's seed."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue whale\n")
    batch = run_generate(config("method=t2v_zero", f"prompts={prompts}", *TINY, "frames=1", "model.seed=5", f"output_dir={tmp_path / 'b'}"))
    results = [json.loads((batch / name / "result.json").read_text()) for name in ("0000", "0001")]
    loading = {r["timings_s"]["loading model"] for r in results}
    assert len(loading) == 1 and loading.pop() > 0  # the same, shared load in both records
    assert all(r["model"] == {"name": "tiny", "path": None, "seed": 5} for r in results)
    assert all(r["timings_s"]["all frames"] < r["timings_s"]["total_generate"] for r in results)  # per video, not summed


def test_bad_prompt_files(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        read_prompt_rows(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserInputError, match="no prompts"):
        read_prompt_rows(str(empty))
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,speed\nx,1\n")
    with pytest.raises(UserInputError, match="unknown columns speed"):
        read_prompt_rows(str(bad))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("prompt,seed\nx,abc\n")
    with pytest.raises(UserInputError, match="row 1: seed"):
        read_prompt_rows(str(seeds))
    missing_style = tmp_path / "p.csv"
    missing_style.write_text("prompt,style\nx,/no/such.png\n")
    with pytest.raises(UserInputError, match="style image not found"):
        run_generate(config("method=stylet2v0", f"prompts={missing_style}", *TINY, f"outputs_root={tmp_path / 'o'}"))
    assert not (tmp_path / "o").exists()


def torchrun(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port, so parallel or back-to-back launches never collide
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stylevid", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-6000:]


def test_two_ranks_share_generation_and_evaluation_and_rank_zero_gathers(tmp_path):
    from stylevid.evaluate import run_evaluate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "batch"
    torchrun("generate", "method=t2v_zero", f"prompts={prompts}", *TINY, f"output_dir={out}")
    batch = json.loads((out / "batch.json").read_text())
    assert batch["world_size"] == 2 and batch["ranks"] == {"0": ["0000", "0002"], "1": ["0001"]}
    assert [json.loads((out / r / "result.json").read_text())["prompt"] for r in batch["runs"]] == ["one", "two", "three"]

    metrics = ["metrics=[clipsim,temporal_flicker]", "metrics.clip.model=tiny"]
    torchrun("evaluate", f"sweep={out}", *metrics, f"output_dir={tmp_path / 'ranks2'}")
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        single = run_evaluate(compose("evaluate", overrides=[f"sweep={out}", *metrics, f"output_dir={tmp_path / 'ranks1'}"]))
    two = json.loads((tmp_path / "ranks2" / "metrics.json").read_text())
    one = json.loads((single / "metrics.json").read_text())
    assert two["world_size"] == 2 and len(two["videos"]) == 3
    assert [v["video"] for v in two["videos"]] == [v["video"] for v in one["videos"]]
    for sharded, whole in zip(two["videos"], one["videos"]):  # equal up to float32 summation order (threads)
        assert sharded["metrics"] == pytest.approx(whole["metrics"], rel=1e-5, abs=1e-6)
