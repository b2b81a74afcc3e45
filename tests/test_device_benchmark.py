"""scripts/device_benchmark.py --smoke: the GPU benchmark's code path on the CPU with tiny configs, so it cannot rot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def benchmark():
    spec = importlib.util.spec_from_file_location("device_benchmark", ROOT / "scripts" / "device_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_rows_compare_identical_work_and_their_ratios_are_the_timed_ones(tmp_path):
    out = tmp_path / "device_benchmark.json"
    result = benchmark().main(["--smoke", "--rows", "t2v_zero", "animatediff", "--repeats", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    assert {"gpu", "versions", "options", "date"} <= set(written)
    assert [row["name"] for row in written["rows"]] == ["t2v_zero", "animatediff"]
    for row in written["rows"]:
        assert row["status"] == "measured", row
        runs = row["runs"]
        assert all(run["time_s"] > 0 for run in runs.values())
        calls = {name: run["model_calls"] for name, run in runs.items()}
        assert len({json.dumps(c, sort_keys=True) for c in calls.values()}) == 1, calls  # the same model calls
        assert calls[next(iter(calls))]["unet"] > 0
        for check in row["checks"]:
            if check["quantity"] == "time_s":  # a printed ratio is the ratio of the two timed runs
                expected = runs[check["numerator"]]["time_s"] / runs[check["denominator"]]["time_s"]
                assert check["value"] == pytest.approx(expected)
            if check["target"] == "identical":
                assert check["pass"] is True, check


def test_an_unknown_row_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark().main(["--smoke", "--rows", "nonsense"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown row") and "\n" not in err
