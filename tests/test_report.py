"""`lmsleep report`: summaries over seeds, figures with their spread, both folder layouts, and every
committed results folder that keeps its runs regenerates its summary.json and report.md exactly."""
import json
import shutil
import statistics
from pathlib import Path

import pytest

from lmsleep import report as report_module
from lmsleep.cli import main

ROOT = Path(__file__).resolve().parent.parent

# Final accuracy per (group, seed) of the synthetic sweep; the N′ and bucket values derive from it.
FINAL = {("sleep-N1", 0): 0.25, ("sleep-N1", 1): 0.75, ("sleep-N4", 0): 0.5, ("sleep-N4", 1): 1.0}
PASSES = (1, 2, 4, 8)


def _result(accuracy: float) -> dict:
    """One evaluation entry: buckets 1..3 at accuracy - 0.1, accuracy, accuracy + 0.1 (mean = accuracy)."""
    buckets = {str(b): accuracy + 0.1 * (b - 2) for b in (1, 2, 3)}
    return {"exact": accuracy, "answer": accuracy, "per_bucket": buckets,
            "loss": 1.0 - accuracy, "loss_per_bucket": {b: 1.0 - v for b, v in buckets.items()}}


def _write_run(directory: Path, group: str, seed: int, steps: int = 100) -> None:
    """A run as `lmsleep sweep` leaves it: sweep-config.json and metrics.jsonl with two evaluations, a
    training log line and the N′ evaluation after the last step."""
    final = FINAL[group, seed]
    passes = int(group.rsplit("-N", 1)[1])
    wall = 10.0 * passes + seed  # per 50 steps
    records = [
        {"step": 50, "loss": 2.0, "tokens": 1000, "wall_s": wall, "flops": 1e9 * passes},
        {"step": 50, "tokens": 1000, "wall_s": wall, "flops": 1e9 * passes, "eval": {f"N{passes}": _result(final / 2)}},
        {"step": steps, "tokens": 2000, "wall_s": 2 * wall, "flops": 2e9 * passes,
         "eval": {f"N{passes}": _result(final)}},
        {"step": steps, "tokens": 2000, "wall_s": 2 * wall, "flops": 2e9 * passes,
         "final_eval": {f"N{n}": _result(final / n) for n in PASSES}},
    ]
    directory.mkdir(parents=True)
    (directory / "sweep-config.json").write_text(json.dumps({"task": "rule110", "steps": steps, "seed": seed}))
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _synthetic_sweep(directory: Path) -> Path:
    for group, seed in FINAL:
        _write_run(directory / f"{group}-s{seed}", group, seed)
    return directory


def test_describe_is_the_mean_and_the_sample_std():
    """One summary for both papers' reports (lmsleep.report and the paper-2 runner): std with n − 1."""
    assert report_module.describe([0.25, 0.75]) == {"mean": 0.5, "std": pytest.approx(0.3535534), "n": 2,
                                                    "values": [0.25, 0.75]}
    assert report_module.describe([2])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        report_module.describe([])


def test_report_summarises_seeds_and_writes_figures(tmp_path):
    sweep = _synthetic_sweep(tmp_path / "sweep")
    assert main(["report", str(sweep)]) == 0
    rows = {row["group"]: row for row in json.loads((sweep / "summary.json").read_text())}
    assert sorted(rows) == ["sleep-N1", "sleep-N4"]
    for group in rows:
        values = [FINAL[group, s] for s in (0, 1)]
        row = rows[group]
        assert row["seeds"] == 2 and row["metric"] == "exact" and row["complete"] is True
        assert row["values"] == values
        assert row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))  # sample std: 0.354 in both groups
        assert row["steps"] == 100 and row["tokens"] == 2000
    assert rows["sleep-N4"]["wall_s"] == pytest.approx(2 * (40 + 41) / 2)
    assert rows["sleep-N1"]["flops"] == pytest.approx(2e9)
    report = (sweep / "report.md").read_text()
    assert "| sleep-N4 | 2 | 0.750 ± 0.354 | 0.500, 1.000 |" in report
    for figure in ("curves.png", "difficulty.png", "passes.png"):
        assert (sweep / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{figure}]({figure})" in report
    assert not [p.name for p in sweep.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind


def test_spread_figures_have_integer_ticks_and_min_max_bars(tmp_path, monkeypatch):
    """passes.png and difficulty.png: ticks at the measured N′ / buckets only, a bar per point from the
    lowest to the highest seed, and the seed count in each legend entry."""
    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        return path.name

    monkeypatch.setattr(report_module, "_save", keep)
    sweep = _synthetic_sweep(tmp_path / "sweep")
    runs = report_module.load_runs(sweep)
    assert report_module.plot(runs, "exact", sweep) == ["curves.png", "difficulty.png", "passes.png"]

    for name, xs, seeds_of in (
        ("passes.png", list(PASSES), lambda group, x: [FINAL[group, s] / x for s in (0, 1)]),
        ("difficulty.png", [1, 2, 3], lambda group, x: [FINAL[group, s] + 0.1 * (x - 2) for s in (0, 1)]),
    ):
        ax = figures[name].axes[0]
        assert list(ax.get_xticks()) == xs, name
        labels = ax.get_legend_handles_labels()[1]
        assert len(labels) == 2 and all(label.endswith("(2 seeds)") for label in labels), labels
        assert len(ax.containers) == 2  # one errorbar container per group
        for container, group in zip(ax.containers, ("sleep-N1", "sleep-N4")):
            line, _, (bars,) = container.lines
            # The group's line is nudged sideways by less than a quarter step; each x keeps its place.
            assert [round(x) for x in line.get_xdata()] == xs
            assert list(line.get_ydata()) == pytest.approx([statistics.fmean(seeds_of(group, x)) for x in xs])
            for segment, x in zip(bars.get_segments(), xs):
                assert sorted(segment[:, 1]) == pytest.approx([min(seeds_of(group, x)), max(seeds_of(group, x))])


def test_results_layout_reads_runs_subfolder_and_matches_sweep_layout(tmp_path):
    """results/<sweep>/runs/<run>/ gives the same summary as runs/<sweep>/<run>/, written beside runs/."""
    plain = _synthetic_sweep(tmp_path / "plain")
    kept = tmp_path / "results" / "plain"
    _synthetic_sweep(kept / "runs")
    assert main(["report", str(plain)]) == 0
    assert main(["report", str(kept)]) == 0
    assert (kept / "summary.json").read_bytes() == (plain / "summary.json").read_bytes()
    assert (kept / "report.md").read_text() == (plain / "report.md").read_text()
    assert not (kept / "runs" / "summary.json").exists()


def test_report_out_keeps_only_metrics_and_config(tmp_path):
    """`lmsleep report runs/<sweep> --out results/<sweep>` copies what the report reads, not checkpoints
    or logs, and the copy regenerates the same summary."""
    sweep = _synthetic_sweep(tmp_path / "runs" / "tiny")
    (sweep / "sweep.json").write_text('{"name": "tiny"}\n')
    for run in sweep.iterdir():
        if run.is_dir():
            (run / "checkpoint").mkdir()
            (run / "checkpoint" / "training.pt").write_bytes(b"weights")
            (run / "train.log").write_text("log\n")
    kept = tmp_path / "results" / "tiny"
    assert main(["report", str(sweep), "--out", str(kept)]) == 0
    assert main(["report", str(sweep)]) == 0
    assert sorted(p.name for p in (kept / "runs").iterdir()) == sorted(f"{g}-s{s}" for g, s in FINAL)
    assert {p.name for p in (kept / "runs").rglob("*")} - {f"{g}-s{s}" for g, s in FINAL} == {
        "metrics.jsonl", "sweep-config.json"}
    assert (kept / "sweep.json").read_text() == '{"name": "tiny"}\n'
    assert (kept / "summary.json").read_bytes() == (sweep / "summary.json").read_bytes()
    assert main(["report", str(sweep), "--out", str(sweep)]) == 2
    # A second sweep reported into the same folder adds its runs and keeps both sweep files.
    other = tmp_path / "runs" / "other"
    _write_run(other / "matched-blocks-N4-s0", "sleep-N4", 0)
    (other / "sweep.json").write_text('{"name": "other"}\n')
    assert main(["report", str(other), "--out", str(kept)]) == 0
    assert (kept / "sweep.json").read_text() == '{"name": "tiny"}\n'
    assert (kept / "sweep-other.json").read_text() == '{"name": "other"}\n'
    groups = [row["group"] for row in json.loads((kept / "summary.json").read_text())]
    assert groups == ["matched-blocks-N4", "sleep-N1", "sleep-N4"]


def test_report_errors_name_the_folder(tmp_path, capsys):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err


KEPT = sorted(path.parent for path in (ROOT / "results").glob("**/runs") if path.is_dir())


def test_some_results_folders_keep_their_runs():
    assert KEPT, "no results/**/runs/ folder: nothing in results/ can be regenerated"


@pytest.mark.parametrize("folder", KEPT, ids=[str(p.relative_to(ROOT)) for p in KEPT])
def test_committed_results_regenerate_exactly(folder, tmp_path):
    """`lmsleep report results/<sweep>` on a copy reproduces the committed summary.json and report.md."""
    copy = tmp_path / folder.name
    shutil.copytree(folder / "runs", copy / "runs")
    assert main(["report", str(copy)]) == 0
    assert json.loads((copy / "summary.json").read_text()) == json.loads((folder / "summary.json").read_text())
    assert (copy / "summary.json").read_bytes() == (folder / "summary.json").read_bytes()
    assert (copy / "report.md").read_text() == (folder / "report.md").read_text()
    for figure in (copy / "report.md").read_text().split("![")[1:]:
        assert (folder / figure.split("]")[0]).is_file(), f"{folder} lacks the figure {figure.split(']')[0]}"


def test_paper_says_which_results_folders_keep_their_runs():
    """results/paper1.md's table "Which results regenerate" lists every results folder once, with "yes"
    exactly where the folder keeps runs/ (update the row when a folder gains its per-run files)."""
    rows = {}
    for line in (ROOT / "results" / "paper1.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`results/") and cells[1] in ("yes", "no"):
            assert cells[0] not in rows, f"{cells[0]} is listed twice"
            rows[cells[0]] = cells[1]
    folders = sorted(path.parent for path in (ROOT / "results").glob("**/summary.json"))
    expected = {f"`{folder.relative_to(ROOT)}/`": "yes" if (folder / "runs").is_dir() else "no" for folder in folders}
    assert rows == expected
