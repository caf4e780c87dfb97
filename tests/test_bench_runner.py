"""The paper-2 benchmark runner with a stand-in benchmark: the summary is describe's (sample std), a missing
plot dependency is said before any seed runs and costs only the plot, and a first-time base is counted in
the estimate and trained, before the seeds, by the benchmark's own `bases`."""
import argparse
import json
import statistics
import sys
import types

import pytest

from lmsleep.continual.bench import runner


def stand_in(calls: list, configs=None):
    """A benchmark module: one system whose metric x is the seed."""
    bench = types.SimpleNamespace(NAME="standin", HELP="a stand-in", PRIMARY="x", COLUMNS=["x"])
    bench.add_arguments = lambda parser: None
    bench.units = lambda args: 1
    bench.estimate = lambda args: 10.0

    def run_seed(args, seed, tick):
        calls.append(("seed", seed))
        tick()
        return {"systems": {"s": {"x": float(seed)}}}

    bench.run_seed = run_seed
    if configs is not None:
        bench.base_configs = lambda args: configs
        bench.bases = lambda args: calls.append(("bases",)) or {}
    return bench


def arguments(tmp_path, seeds="3"):
    parser = argparse.ArgumentParser()
    runner.add_common_arguments(parser, str(tmp_path / "out"))
    return parser.parse_args(["--seeds", seeds, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])


def test_the_summary_is_the_mean_and_sample_std(tmp_path):
    results = runner.run(stand_in([]), arguments(tmp_path), ["standin"])
    x = results["summary"]["s"]["x"]
    assert x["values"] == [0.0, 1.0, 2.0] and x["std"] == pytest.approx(statistics.stdev([0, 1, 2])) == 1.0
    assert "| s | 1.0 ± 1.0 |" in (tmp_path / "out" / "report.md").read_text()


def test_without_matplotlib_the_run_says_so_first_and_keeps_its_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    calls = []
    bench = stand_in(calls)
    bench.run_seed = lambda args, seed, tick: calls.append(capsys.readouterr().err) or {"systems": {"s": {"x": 1.0}}}
    runner.run(bench, arguments(tmp_path, "1"), ["standin"])
    said = [line for line in calls[0].splitlines() if "matplotlib" in line]  # before the first seed ran
    assert len(said) == 1 and said[0].startswith("warning:") and "pip install 'lmsleep[plot]'" in said[0]
    out = tmp_path / "out"
    assert (out / "results.json").is_file() and (out / "seed-0.json").is_file() and not (out / "standin.png").exists()
    assert "No plot: matplotlib is not installed (pip install 'lmsleep[plot]')." in (out / "report.md").read_text()


def test_a_first_time_base_is_in_the_estimate_and_trained_before_the_seeds(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner.base_cache, "cached", lambda cfg, cache_dir: cfg == "cached one")
    monkeypatch.setattr(runner.base_cache, "training_seconds", lambda cfg: 150.0)
    bench = stand_in(calls, {"languages": "new one", "facts": "cached one"})
    runner.run(bench, arguments(tmp_path, "2"), ["standin"])
    said = capsys.readouterr().out
    # 2 seeds × 10 s + 150 s for the one base not cached
    assert "about 2 min 50 s for the remaining 2 on 2 cores (10 s per seed, plus 2 min 30 s the first time to train the languages base)" in said
    assert calls == [("bases",), ("seed", 0), ("seed", 1)]
    calls.clear()
    monkeypatch.setattr(runner.base_cache, "cached", lambda cfg, cache_dir: True)
    (tmp_path / "out" / "seed-1.json").unlink()
    runner.run(bench, arguments(tmp_path, "2"), ["standin"])
    assert calls == [("seed", 1)] and "first time" not in capsys.readouterr().out


def test_nothing_to_run_trains_no_base(tmp_path, monkeypatch):
    calls = []
    bench = stand_in(calls, {"languages": "new one"})
    monkeypatch.setattr(runner.base_cache, "cached", lambda cfg, cache_dir: True)
    runner.run(bench, arguments(tmp_path, "1"), ["standin"])
    monkeypatch.setattr(runner.base_cache, "cached", lambda cfg, cache_dir: False)
    calls.clear()
    runner.run(bench, arguments(tmp_path, "1"), ["standin"])  # seed 0 is done: no work, no base
    assert calls == []
    assert json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["s"]["x"]["n"] == 1


def test_no_benchmark_composes_the_sleep_itself():
    """Issue 18: every benchmark's Sleep and SEAL-style systems drive the learner; none imports the sleep's stage
    functions (so the benchmarks measure what users run)."""
    import ast
    import pathlib

    import lmsleep.continual.bench as bench_package

    stages = {"prepare_student", "consolidate", "snapshot", "train_expert", "existing_experts", "rest_em",
              "reward_round", "propose", "sample_dreams", "rest_em_data", "rewards_for", "importance", "select",
              "dream"}
    found = {}
    for path in pathlib.Path(bench_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in (
                    "seeding", "dreaming", "selection", "learner_stages"):
                names = {alias.name for alias in node.names} & stages
                if names:
                    found[path.name] = sorted(names)
    assert found == {}
