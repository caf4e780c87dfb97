"""Sweeps expand the grid (baselines included), run resumably, and the report shows what the runs logged."""
import json

import pytest

from lmsleep.cli import main
from lmsleep.sweep import QUICK, expand, load_sweep, run_state

TINY = {
    "name": "tiny",
    "base": {"task": "rule110", "task_options": {"t_min": 1, "t_max": 2, "bits": 6, "strings": 2},
             "model": {"layout": "AG", "d_model": 32, "mlp_hidden": 64, "n_heads": 2, "head_dim": 8,
                       "n_fast_heads": 2, "fast_key_dim": 8, "fast_value_dim": 8},
             "steps": 4, "batch_size": 8, "warmup": 1, "eval_every": 2, "eval_size": 16, "log_every": 2,
             "checkpoint_every": 2},
    "grid": {"model": ["sleep", "matched-blocks"], "passes": [1, 2], "seed": [0]},
    "final_eval_passes": [1, 2, 3],
}


def test_grid_expansion_builds_the_baselines():
    sweep = {**TINY, "grid": {"model": ["sleep", "full-attention", "sliding-window", "matched-blocks", "matched-steps"],
                              "passes": [1, 3], "seed": [0, 1]}}
    runs = dict(expand(sweep))
    assert runs["sleep-N3-s1"].model_config().sleep_passes == 3
    assert runs["full-attention-s0"].model_config().eviction == "none"
    assert runs["full-attention-s0"].model_config().layout == "AA"
    assert runs["sliding-window-s0"].model_config().eviction == "sliding"
    assert runs["matched-blocks-N3-s0"].model_config().layout == "AGAGAG"
    assert runs["matched-blocks-N3-s0"].model_config().sleep_passes == 1
    assert runs["matched-steps-N3-s0"].steps == 3 * runs["sleep-N3-s0"].steps
    assert runs["full-attention-s0"].final_eval_passes is None
    assert len(runs) == 2 * (2 + 2 + 2 + 1 + 1)  # baselines once per seed, whatever N


def test_matched_steps_stretches_the_curriculum_with_the_schedule():
    stages = [{"until": 4, "task_options": {"k_max": 1}}, {"until": 10, "task_options": {"k_max": 2}}]
    base = {**TINY["base"], "task": "depo", "task_options": {"k_max": 4}, "steps": 10, "curriculum": stages}
    grid = {"model": ["sleep", "matched-steps"], "passes": [3]}
    runs = dict(expand({**TINY, "base": base, "grid": grid}))
    assert [s["until"] for s in runs["sleep-N3-s0"].curriculum] == [4, 10]
    stretched = runs["matched-steps-N3-s0"]
    assert stretched.steps == 30 and [s["until"] for s in stretched.curriculum] == [12, 30]
    assert stretched.stage_options(29).k_max == 2 and stretched.stage_options(11).k_max == 1


def test_dotted_grid_keys_and_bad_kinds():
    sweep = {**TINY, "grid": {"task_options.t_min": [1, 2], "seed": [0]}}
    names = [name for name, _ in expand(sweep)]
    assert names == ["sleep-N1-t_min1-s0", "sleep-N1-t_min2-s0"]
    with pytest.raises(ValueError, match="grid model must be one of"):
        expand({**TINY, "grid": {"model": ["lstm"]}})


def test_quick_default_is_a_valid_sweep():
    assert [name for name, _ in expand(load_sweep(None))] == ["sleep-N1-s0", "sleep-N4-s0"]
    assert QUICK["base"]["task"] == "rule110"


def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "sweep"
    assert main(["sweep", str(config), "--out", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "estimated time" in printed and "held-out exact accuracy" in printed
    runs = dict(expand(TINY))
    assert all(run_state(out / name, cfg) == "done" for name, cfg in runs.items())
    report = (out / "report.md").read_text()
    for name in ("sleep-N1", "sleep-N2", "matched-blocks-N2"):
        assert f"| {name} | 1 |" in report
    assert "N′=3" in report
    for figure in ("curves.png", "difficulty.png", "passes.png"):
        assert (out / figure).stat().st_size > 1000
    # The report's numbers are the runs' last evaluations.
    last = [json.loads(line) for line in (out / "sleep-N2-s0" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line][-1]
    assert f"{last['eval']['N2']['exact']:.3f} ± 0.000" in report
    # The gain table pairs N = 2 with N = 1 of the same seed, bucket by bucket.
    first = [json.loads(line) for line in (out / "sleep-N1-s0" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line][-1]
    gain = last["eval"]["N2"]["per_bucket"]["1"] - first["eval"]["N1"]["per_bucket"]["1"]
    assert f"| sleep-N2 − sleep-N1 | 1 | {gain:+.3f} ± 0.000 |" in report
    # A second call has nothing left to do.
    assert main(["sweep", str(config), "--out", str(out)]) == 0
    assert "4 already done, 0 to run" in capsys.readouterr().out


def test_sweep_errors(tmp_path):
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["sweep", str(bad)]) == 2
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_every_recorded_sweep_file_is_still_valid():
    """results/ cites these files with their commands: each must still expand into valid run configs."""
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "experiments").glob("*.json"))
    assert len(files) >= 10
    for path in files:
        runs = expand(load_sweep(str(path)))
        assert runs, path
        for _, cfg in runs:
            if cfg.init_from:
                assert (path.parent.parent / cfg.init_from / "model.safetensors").is_file(), path
