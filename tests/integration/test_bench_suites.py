"""Benchmark helpers and a quick heart suite on the real data."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from support.federation import shared_data_dir

from scripts.benchmarks.core import (
    SUITES,
    BenchmarkResult,
    MeanSD,
    Values,
    markdown_table,
    suite_function,
    write_result,
)
from scripts.benchmarks.federation import federate
from scripts.benchmarks.suites import (
    HEART_METHODS,
    TreeMemory,
    _run_config_string,
    heart,
    mean_sd,
    mean_std,
    model_float32_bytes,
    sent_dtypes,
    traffic_per_round,
)


def test_every_declared_suite_registers_its_function():
    for name in SUITES:
        assert callable(suite_function(name)), name


def test_listing_the_suites_imports_neither_torch_nor_flower():
    code = (
        "import argparse, sys\n"
        "from scripts.benchmarks import core\n"
        "parser = argparse.ArgumentParser()\n"
        "core.add_arguments(parser)\n"
        "text = parser.format_help()\n"
        "assert 'vertical' in text and 'secure aggregation' in text, text\n"
        "heavy = {'torch', 'flwr', 'monai'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mean_std_and_plus_minus():
    assert mean_std([0.7, 0.8, 0.9]) == pytest.approx((0.8, 0.1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([0.6, float("nan"), 0.8]) == pytest.approx((0.7, np.sqrt(0.02)))
    assert str(mean_sd([0.7, 0.8, 0.9])) == "0.800 ± 0.100"
    assert str(mean_sd([float("nan")])) == "n/a"


def test_typed_cells_are_numbers_in_json_and_text_in_markdown(tmp_path):
    rows = [
        {
            "run": "a",
            "acc": MeanSD(0.75, 0.02),
            "seeds": Values((0.7, 0.8)),
            "ci": Values((0.6, 0.9), sep="-"),
            "flagged": Values((), fmt=""),
        }
    ]
    summary = {"pair": Values((5.57e-4, 7.13e-4), fmt=".2e", sep="/")}
    text = write_result(BenchmarkResult("unit", rows, summary), tmp_path, 1.0)
    assert "| a | 0.750 ± 0.020 | 0.700 0.800 | 0.600-0.900 | - |" in text
    assert "- pair: 5.57e-04/7.13e-04" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["rows"][0]["acc"] == {"mean": 0.75, "sd": 0.02}
    assert payload["rows"][0]["seeds"] == [0.7, 0.8]
    assert payload["rows"][0]["flagged"] == []
    assert payload["summary"]["pair"] == [5.57e-4, 7.13e-4]


def test_markdown_table_and_results_files(tmp_path):
    rows = [{"method": "fedavg", "acc": 0.75}, {"method": "pooled", "acc": 0.8, "x": 1}]
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| method | acc | x |"
    assert "| pooled | 0.8000 | 1 |" in table
    result = BenchmarkResult(
        "unit", rows, summary={"best": 0.8}, details={"per_seed": [[0.1, 0.2]]}
    )
    text = write_result(result, tmp_path, 1.0)
    assert "| fedavg | 0.7500 |  |" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["details"] == {"per_seed": [[0.1, 0.2]]}
    assert payload["summary"]["best"] == 0.8


def test_run_config_string_quotes_strings():
    text = _run_config_string(
        {
            "dataset": "wdbc",
            "num-server-rounds": 3,
            "report": False,
            "learning-rate": 0.05,
        }
    )
    assert text == "dataset='wdbc' num-server-rounds=3 report=false learning-rate=0.05"


def test_tree_memory_sees_a_child_process():
    code = (
        "import time; x = bytearray(300_000_000); x[::4096] = b'1' * len(x[::4096]); "
        "time.sleep(2.5)"
    )
    with TreeMemory(interval=0.2) as memory:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert memory.peak_rss >= 280_000_000
    assert memory.peak_pss >= 250_000_000
    assert memory.peak_processes >= 1


def test_upload_is_the_float32_model_plus_small_overhead():
    run = federate({"num-server-rounds": 1, "fraction-evaluate": 0.0}, 2)
    size = model_float32_bytes(run.model)
    up = traffic_per_round(run.grid, "up")
    assert sent_dtypes(run.grid) == ["float32"]
    assert size <= up <= size + 4096  # arrays as float32 + metrics and site name


@pytest.mark.slow
def test_heart_quick_has_every_method(tmp_path):
    data = shared_data_dir()
    if not (data / "heart-disease" / "processed.cleveland.data").is_file():
        pytest.skip(f"heart-disease files not found in {data}")
    args = argparse.Namespace(data_root=data, quick=True, seeds=1, out=tmp_path)
    result = heart(args)
    assert [row["method"] for row in result.rows] == list(HEART_METHODS)
    hospitals = {"cleveland", "hungarian", "switzerland", "va"}
    for method, figures in result.details["methods"].items():
        assert 0.4 < figures["pooled_accuracy"]["mean"] <= 1.0, method
        assert set(figures["hospitals"]) == hospitals
    assert result.summary["best_federated_method"] in (
        "fedavg",
        "fedprox",
        "fedyogi",
        "fedavg+finetune",
    )
    for name in result.plots:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_dp_step_times_the_default_models_and_splits_the_dp_step():
    from models import default_model
    from scripts.benchmarks.dp_step import default_row, dp_step_rows

    rows = dp_step_rows(steps=3)
    assert [(r["model"], r["grad_sampler"]) for r in rows] == [
        (default_model("tabular"), "layers"),
        (default_model("tabular"), "opacus"),
        (default_model("imaging"), "layers"),
        (default_model("imaging"), "opacus"),
    ]
    assert default_row(rows, "imaging") is rows[2]
    for row in rows:
        assert row["plain_step_s"] > 0 and row["dp_step_s"] > 0
        assert row["ratio"] == pytest.approx(row["dp_step_s"] / row["plain_step_s"])
        parts = row["dp_forward_s"] + row["dp_backward_s"] + row["dp_optimizer_s"]
        # medians of parts need not add up exactly, but they time the same steps
        assert 0.5 * row["dp_step_s"] < parts < 2 * row["dp_step_s"]
