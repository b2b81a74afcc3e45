"""scripts/benchmark_image_prompt.py: a --tiny run with tiny sizes measures every case on identical work (the same
frames, size and steps; the exemplar pass is one more UNet call per step), its ratios are the printed times' ratios,
the LLM refinement step is timed on its own line, and bad input is one line with exit code 2."""

import contextlib
import io
import json

import pytest

from scripts import benchmark_image_prompt as bench

STEPS, FRAMES, TOKENS = 2, 3, 8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark_image_prompt") / "figures.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = bench.main(["--tiny", "--repeat", "2", "--steps", str(STEPS), "--frames", str(FRAMES),
                           "--llm-tokens", str(TOKENS), "--json", str(out)])
    return code, printed.getvalue(), json.loads(out.read_text())


def test_every_case_is_measured_on_the_same_work(tiny_run):
    code, printed, record = tiny_run
    assert code == 0
    rows = record["rows"]
    assert list(rows) == ["animatediff", "image_prompt", "coarse"]
    assert record["options"] | {"device": "cpu"} == {
        "device": "cpu", "model": "tiny", "repeat": 2, "frames": FRAMES, "steps": STEPS, "size": 64, "seed": 0,
        "prompt": "a star moving right", "subject": "star", "llm_tokens": TOKENS}
    for name, row in rows.items():
        assert (row["frames"], row["height"], row["width"], row["steps"], row["seed"]) == (FRAMES, 64, 64, STEPS, 0), name
        assert row["guidance_scale"] == rows["animatediff"]["guidance_scale"] > 1
        assert row["denoising_s"] > 0 and row["total_s"] > 0 and row["peak_mib"] >= 0, name
        assert len(row["sampling_runs_s"]) == 2 and row["sampling_s"] == sorted(row["sampling_runs_s"])[1]
        # the run of median sampling time, all its stages: the columns add up
        assert row["sampling_s"] == row["prepare_s"] + row["denoising_s"] and row["total_s"] > row["sampling_s"]
        assert row["peak_measure"] in ("VmHWM reset", "ru_maxrss")
    assert rows["animatediff"]["method"] == "animatediff" and rows["animatediff"]["prepare_s"] == 0
    # the CLI defaults: fine + position encoding; the coarse case turns the fine stage off only
    assert rows["image_prompt"]["fine"] is True and rows["image_prompt"]["position_encoding"] is True
    assert rows["coarse"]["fine"] is False and rows["coarse"]["position_encoding"] is True
    assert rows["image_prompt"]["prepare_s"] > 0 and rows["coarse"]["prepare_s"] > 0
    # the video UNet once per step (both guidance rows in one batch); the exemplar pass one more call per step
    assert rows["animatediff"]["unet_calls"] == rows["coarse"]["unet_calls"] == STEPS
    assert rows["image_prompt"]["unet_calls"] == 2 * STEPS
    for name in rows:
        assert name in printed


def test_ratios_are_the_printed_times_ratios(tiny_run):
    _, printed, record = tiny_run
    rows, ratios = record["rows"], record["ratios"]
    base = rows["animatediff"]
    for case in ("image_prompt", "coarse"):
        assert ratios[f"{case}_time"] == pytest.approx(rows[case]["sampling_s"] / base["sampling_s"])
        assert ratios[f"{case}_denoising"] == pytest.approx(rows[case]["denoising_s"] / base["denoising_s"])
        peak = rows[case]["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else None
        assert ratios[f"{case}_peak"] == pytest.approx(peak)
    assert record["target"] == 1.3 and record["met"] == (ratios["image_prompt_time"] <= 1.3)
    # the table's sampling column, as printed, gives the printed ratio (to the printing's rounding)
    cells = [line.split() for line in printed.splitlines()]
    table = {row[0]: row for row in cells if len(row) == 9 and row[0] in rows}
    sampling = {name: float(cells[6]) for name, cells in table.items()}
    assert sampling == {name: pytest.approx(row["sampling_s"], abs=5e-4) for name, row in rows.items()}
    verdict = "met" if record["met"] else "NOT met"
    line = f"image_prompt / animatediff, sampling time: {ratios['image_prompt_time']:.3f} (target <= 1.3: {verdict})"
    assert line in printed
    # each printed time is rounded by at most 5e-4 s, which moves I / A by at most 5e-4 (1 + I / A) / (A - 5e-4)
    ratio = ratios["image_prompt_time"]
    assert ratio == pytest.approx(sampling["image_prompt"] / sampling["animatediff"],
                                  abs=5e-4 * (1 + ratio) / (sampling["animatediff"] - 5e-4) + 1e-6)
    assert f"coarse only (method.fine=false) / animatediff, sampling time: {ratios['coarse_time']:.3f}" in printed
    peak = ratios["image_prompt_peak"]
    assert f"peak memory: {'n/a' if peak is None else f'{peak:.3f}'}" in printed


def test_the_llm_step_is_timed_on_its_own_line(tiny_run):
    _, printed, record = tiny_run
    llm = record["llm"]
    assert llm["backend"] == "transformers" and llm["error"] is None and llm["max_new_tokens"] == TOKENS
    assert llm["first_s"] > 0 and llm["refine_s"] > 0 and len(llm["refine_runs_s"]) == 2
    assert llm["refined_words"] == TOKENS  # the tiny LM's end token is suppressed: every answer has the same length
    lines = [line for line in printed.splitlines() if line.startswith("LLM refinement step")]
    assert len(lines) == 1 and f"{llm['refine_s']:.3f} s" in lines[0] and "no target" in lines[0]
    assert "llm" not in record["rows"]  # not a row of the table, not in any ratio


@pytest.mark.parametrize("args, message", [
    (["--tiny", "--repeat", "0"], "--repeat must be >= 1, got 0"),
    (["--tiny", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["--tiny", "--size", "60"], "--size must be a positive multiple of 8, got 60"),
    ([], "the toy image_prompt weights are not built"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "TOY_MANIFEST", tmp_path / "image_prompt" / "manifest.json")  # never built here
    assert bench.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
