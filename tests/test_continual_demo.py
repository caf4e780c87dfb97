"""`lmsleep continual demo` end to end at a toy size (the real demo's numbers are in results/continual.md)."""
import json

from lmsleep.cli import main
from lmsleep.continual import demo


def test_the_demo_runs_end_to_end_and_logs_its_sleeps(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "SEEDING", {**demo.SEEDING, "steps": 2, "batch_size": 2, "sample_length": 6})
    monkeypatch.setattr(demo, "DREAMING", {**demo.DREAMING, "dreams": 3, "dream_length": 4, "steps": 1,
                                           "generator_steps": 1})
    out = tmp_path / "run"
    argv = ["continual", "demo", "--out", str(out), "--base-steps", "3", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for words in ("the passage:", "knowledge seeding", "dreaming", "closed-book accuracy", "sleep log:"):
        assert words in printed
    sleeps = [json.loads(line)["sleep"]["trigger"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sleeps == ["context reset", "dreaming"]
    assert (out / "learner.safetensors").is_file()
