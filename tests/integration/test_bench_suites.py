"""Benchmark helpers and a quick heart suite on the real data."""

import argparse
import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.federation import shared_data_dir

from app.config import RunConfig
from data.registry import get_dataset
from scripts.benchmarks.core import (
    SUITES,
    BenchmarkResult,
    MeanSD,
    Values,
    hospital_counts,
    markdown_table,
    repeat_count,
    suite_function,
    write_result,
)
from scripts.benchmarks.cost import model_float32_bytes, sent_dtypes, traffic_per_round
from scripts.benchmarks.federation import federate
from scripts.benchmarks.heart import HEART_METHODS, heart, heart_summary
from scripts.benchmarks.personalization import HEART_GLOBAL_RECIPES, HEART_PERSONALISED
from scripts.benchmarks.reporting import mean_sd, mean_std
from scripts.benchmarks.scale import (
    MedflowerFigures,
    RoundTimes,
    RunFigures,
    TreeMemory,
    combine_runs,
    scale_repeats,
)
from scripts.harness.inprocess import full_run_config, run_inprocess


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


def test_tree_memory_sees_a_child_process():
    code = (
        "import time; x = bytearray(300_000_000); x[::4096] = b'1' * len(x[::4096]); "
        "t = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
        "time.sleep(2)"
    )
    memory = TreeMemory(interval=0.2)
    assert math.isnan(memory.steal)  # nothing monitored yet
    with memory:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert 0.0 <= memory.steal < 1.0  # the machine's steal share over the run
    assert memory.peak_rss >= 280_000_000
    assert memory.peak_pss >= 250_000_000
    assert memory.peak_processes >= 1
    assert memory.cpu_s >= 0.5  # the busy loop, seen before the process ended


def test_upload_is_the_float32_model_plus_small_overhead(capsys):
    run = federate({"num-server-rounds": 1, "fraction-evaluate": 0.0}, 2)
    # a suite prints its table at the end: each run says on stderr that it is done
    (line,) = capsys.readouterr().err.splitlines()
    assert "run: fedavg on wdbc, 2 hospitals, 1 rounds, seed 42, " in line
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
    # personalised FL: each record scored by its hospital's model; the same run's
    # global model where the method has one
    assert result.summary["best_personalised_method"] in (
        "fedavg+finetune",
        *HEART_PERSONALISED,
    )
    assert result.summary["best_global_method"] in (
        "fedavg",
        "fedprox",
        "fedyogi",
        *HEART_GLOBAL_RECIPES,
    )
    # a quick one-seed run is not the goals' protocol: no goal flag is claimed
    assert result.summary["goals_judged"] is False
    assert not [k for k in result.summary if k.startswith("goal_")]
    methods = result.details["methods"]
    assert "global_pooled_accuracy" in methods["ditto"]
    assert "global_pooled_accuracy" not in methods["fenda"]
    for name in result.plots:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_judged_goals_drops_only_the_goal_flags_of_an_unjudged_run():
    from scripts.benchmarks.core import judged_goals

    summary = {"goal": "AUC >= 0.85", "goal_met": True, "auc": 0.9}
    assert judged_goals(summary, True) == {"goals_judged": True, **summary}
    assert judged_goals(summary, False) == {
        "goals_judged": False,
        "goal": "AUC >= 0.85",
        "auc": 0.9,
    }


def test_scale_goals_are_judged_only_at_the_sizes_they_name():
    from scripts.benchmarks.scale import _scale_summary

    def row(n, round_s, pss, ratio):
        return {
            "hospitals": n,
            "round_s": round_s,
            "peak_pss_gb": pss,
            "round_ratio": ratio,
            "first_round_ratio": ratio,
        }

    quick = _scale_summary([row(10, 0.5, 1.5, 2.0), row(20, 0.6, 1.6, 2.0)])
    assert not [k for k in quick if k.startswith("goal_")]
    full = _scale_summary([row(100, 2.0, 1.8, 1.4), row(1000, 22.0, 2.2, 1.4)])
    assert full["goal_memory_le_8gb"] and full["goal_round_ratio_100_le_1_5"]
    assert full["round_growth_100_to_1000"] == 11.0 and full["goal_growth_le_12"]


def test_heart_goals_are_judged_only_on_the_protocol():
    figures = {m: {"pooled_accuracy": {"mean": 0.81}} for m in HEART_METHODS}
    settings = {"num-server-rounds": 20, "local-epochs": 1}
    judged = heart_summary(figures, settings, 5)
    assert judged["goals_judged"] and judged["goal_best_federated_ge_0.80"]
    quick = heart_summary(figures, settings, 2, judged=False)
    assert not [k for k in quick if k.startswith("goal_")]
    assert quick["best_personalised_pooled_accuracy"] == 0.81


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


def test_results_sections_are_top_level_and_may_not_clash(tmp_path):
    sizes = [{"hospitals": 10, "round_s": 1.0}]
    write_result(BenchmarkResult("unit", sizes, sections={"sizes": sizes}), tmp_path, 1)
    assert json.loads((tmp_path / "results.json").read_text())["sizes"] == sizes
    with pytest.raises(ValueError, match="rows"):
        write_result(BenchmarkResult("unit", sizes, sections={"rows": []}), tmp_path, 1)


def test_scale_sizes_and_round_times():
    assert hospital_counts("10,100,1000") == (10, 100, 1000)
    for bad in ("10,x", "1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--hospitals"):
            hospital_counts(bad)
    # elapsed at the end of rounds 0..4: round 1 apart, then the median of the rest
    times = RoundTimes.from_elapsed([0.1, 20.1, 21.1, 24.1, 25.6])
    assert times.first_round_s == pytest.approx(20.0)
    assert times.round_s == pytest.approx(1.5)


def test_scale_repeats_are_combined_into_medians():
    assert scale_repeats(100, None) == 3 and scale_repeats(1000, None) == 1
    assert scale_repeats(1000, 2) == 2
    assert repeat_count("2") == 2
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="--repeats"):
            repeat_count(bad)
    runs = [
        MedflowerFigures(
            round_s=round_s,
            first_round_s=first,
            run_s=30.0,
            peak_pss_gb=pss,
            run_cpu_s=cpu,
            cpu_steal=0.01,
            peak_rss_gb=pss + 1,
            peak_processes=9,
            hospitals_reporting_min=reporting,
            final_accuracy=0.95,
        )
        for round_s, first, pss, reporting, cpu in (
            (2.0, 15.0, 2.1, 100, 60.0),
            (1.5, 19.0, 2.3, 99, 58.0),
            (2.4, 16.0, 2.0, 100, 61.0),
        )
    ]
    combined = combine_runs(runs)
    assert combined["round_s"] == 2.0 and combined["first_round_s"] == 16.0
    assert combined["run_cpu_s"] == 60.0
    assert combined["peak_pss_gb"] == 2.3  # memory: the largest run
    assert combined["hospitals_reporting_min"] == 99  # the fewest
    assert isinstance(combined["hospitals_reporting_min"], int)
    assert combined["round_s_runs"] == [2.0, 1.5, 2.4]  # every run kept, in order
    assert "run_cpu_s_runs" not in combined
    # the floor's figures: the same rules, under the floor_ names results.json holds
    floor = combine_runs(
        [
            RunFigures(1.0, 10.0, 20.0, 1.0, 30.0, 0.0),
            RunFigures(1.2, 9.0, 21.0, 1.1, 31.0, 0.0),
        ],
        prefix="floor_",
    )
    assert set(floor) == {
        "floor_round_s",
        "floor_round_s_runs",
        "floor_first_round_s",
        "floor_first_round_s_runs",
        "floor_run_s",
        "floor_peak_pss_gb",
        "floor_run_cpu_s",
        "floor_cpu_steal",
    }
    assert floor["floor_round_s"] == pytest.approx(1.1)
    assert floor["floor_peak_pss_gb"] == 1.1


def test_floor_app_returns_its_input_and_logs_each_round(caplog):
    from scripts.benchmarks.floor.floor_app import client, server

    config = {"num-server-rounds": 2, "array-sizes": "60,2", "num-examples": 4}
    with caplog.at_level(logging.INFO, logger="flwr"):
        grid = run_inprocess(server, client, num_hospitals=2, run_config=config)
    ups = [m for m in grid.traffic if m.direction == "up"]
    assert len(ups) == 2 * 2 * 2  # 2 rounds x train + evaluate x 2 hospitals
    trained = [m for m in grid.delivered if m.metadata.message_type == "train"]
    arrays = trained[-1].content["arrays"].to_numpy_ndarrays()
    assert [a.size for a in arrays] == [60, 2]
    lines = [r.getMessage() for r in caplog.records if "floor: round" in r.getMessage()]
    assert [line.split()[2] for line in lines] == ["0", "1", "2"]


def test_recommendation_baseline_does_not_depend_on_earlier_random_draws(tmp_path):
    # the pooled and local-only rows moved between identical invocations: the
    # model's initial weights came from torch's global generator, left in
    # whatever state the runs before had left it
    from scripts.benchmarks.recommendation import _centralised

    rng = np.random.default_rng(0)
    rows = ["user,item,rating,time"] + [
        f"p{u},i{rng.integers(30)},{rng.integers(1, 6)},{t}"
        for u in range(40)
        for t in range(6)
    ]
    (path := tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    config = full_run_config(
        task="recommendation",
        dataset="interactions",
        **{"data-path": str(path), "preset": "none", "num-server-rounds": 2},
    )
    cfg = RunConfig.from_run_config(config)
    site = get_dataset(cfg.data_spec()).pooled(2)
    first = _centralised(cfg, site, seed=3)
    torch.rand(17)  # another draw from the global generator in between
    assert _centralised(cfg, site, seed=3) == first
