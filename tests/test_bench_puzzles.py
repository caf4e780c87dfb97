"""The `puzzles` benchmark (lmsleep.continual.bench.puzzles_bench) at a tiny setting: seconds, not results."""
import argparse
import json

import pytest
import torch

from lmsleep.continual.bench import load, puzzles_bench as pb, runner
from lmsleep.continual.lora import LoRAAdapters
from lmsleep.tasks import puzzles
from lmsleep.tasks.example import TRAINED_ONLY

TINY = ["--length", "4", "--colors", "3", "--demos", "2", "--base-steps", "4", "--problems", "2", "--copies", "2",
        "--candidates", "3", "--ft-steps", "2", "--rest-problems", "2", "--generator-steps", "2",
        "--seeding-steps", "1"]


def parse(argv, tmp_path):
    parser = argparse.ArgumentParser()
    runner.add_common_arguments(parser, str(tmp_path / "out"))
    pb.add_arguments(parser)
    return parser.parse_args([*argv, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    return parse(TINY, tmp_path_factory.mktemp("puzzles"))


def test_registered_under_its_name():
    assert load("puzzles") is pb
    assert pb.PRIMARY in pb.COLUMNS and set(pb.PERCENT) <= set(pb.COLUMNS)


def test_run_seed_reports_every_system_and_the_base_gate(tiny_args):
    ticks = []
    result = pb.run_seed(tiny_args, 0, lambda n=1: ticks.append(n))
    assert set(result["systems"]) == set(pb.SYSTEMS)
    for system, metrics in result["systems"].items():
        assert 0 <= metrics["success"] <= metrics["pass_at_5"] <= 1, system
        assert metrics["wall_s"] >= 0
    for system in ("seal", "sleep"):
        assert 0 <= result["systems"][system]["dream_correct"] <= result["systems"][system]["dream_valid"] <= 1
    assert {"in_context_held_out", "in_context_train", "steps"} <= set(result["base"])
    assert result["base"]["steps"] == 4
    assert len(ticks) == pb.units(tiny_args)
    held_out = {f"{rule} {params}" for rule, params in puzzles.tasks(pb.world(pb.sizes(tiny_args), 2))}
    assert set(result["tasks"]) <= held_out
    json.dumps(result)  # a seed file must hold it


def test_runner_writes_files_and_resume_skips_a_finished_seed(tiny_args, monkeypatch):
    args = argparse.Namespace(**{**vars(tiny_args), "seeds": [0]})
    runner.run(pb, args, argv=["puzzles", "--seeds", "1"])
    out = runner.Path(args.out)
    for name in ("seed-0.json", "results.json", "puzzles.png", "report.md"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "in_context" in report and "Base (shared by every seed" in report
    monkeypatch.setattr(pb, "run_seed", lambda *a: pytest.fail("a finished seed was run again"))
    runner.run(pb, args, argv=["puzzles", "--seeds", "1"])


@pytest.mark.parametrize("flags, field", [
    (["--copies", "4", "--candidates", "3"], "--copies"),
    (["--demos", "1"], "--demos"),
    (["--ft-steps", "0"], "--ft-steps"),
    (["--lr", "0"], "--lr"),
    (["--length", "1"], "length"),
])
def test_bad_flags_name_the_field(tmp_path, flags, field):
    with pytest.raises(ValueError, match=field):
        pb.sizes(parse([*TINY, *flags], tmp_path))


def test_demo_loss_trains_on_demonstrations_without_scoring_them():
    plain = puzzles.generate(puzzles.Options(demos=2, length=4, colors=3), 3, 1)
    taught = puzzles.generate(puzzles.Options(demos=2, length=4, colors=3, demo_loss=1), 3, 1)
    for a, b in zip(plain, taught):
        assert a.tokens == b.tokens and a.target_text == b.target_text
        demos = len(puzzles.VOCABULARY.encode("".join(f"{x}>{y};" for x, y in b.raw["demos"])))
        assert b.loss_mask[: demos - 1] == [1] * (demos - 1) and a.loss_mask[: demos - 1] == [0] * (demos - 1)
        assert b.answer_id[: demos - 1] == [TRAINED_ONLY] * (demos - 1)
        assert [i for i in b.answer_id if i >= 0] == [i for i in a.answer_id if i >= 0]


def test_leave_one_out_keeps_the_layout_and_asks_each_demonstration():
    raw = {"demos": [["0120", "0210"], ["1100", "0011"], ["2000", "0002"]], "test": ["0012", "2100"]}
    tokens, targets, mask = pb.leave_one_out(raw)
    test = pb.test_query(raw)
    assert tokens.shape == (3, test[0].shape[1]) and targets.shape == tokens.shape
    for i, (x, y) in enumerate(raw["demos"]):
        text = pb.VOCAB.decode(torch.cat([tokens[i], targets[i, -1:]]).tolist())
        context, _, asked = text.partition(puzzles.SEP)
        assert asked == f"{x}>{y}" and f"{x}>{y};" not in context
        assert pb.VOCAB.decode(targets[i][mask[i].bool()].tolist()) == y


def test_dream_data_scores_the_dreamt_output_and_parse_checks_rows():
    s = {"length": 4, "colors": 3}
    context = torch.tensor([pb.VOCAB.encode("0120>0210;" + puzzles.SEP)])
    dream = torch.tensor(pb.VOCAB.encode("1200>0021"))
    tokens, targets, mask = pb.dream_data(context, dream, 4)
    assert pb.VOCAB.decode(targets[0][mask[0].bool()].tolist()) == "0021"
    assert pb.parse_dream(dream.tolist(), s) == ("1200", "0021")
    assert pb.parse_dream(pb.VOCAB.encode("1300>0031"), s) is None  # color 3 is outside 3 colors
    assert pb.parse_dream(pb.VOCAB.encode("120>00210"), s) is None


def test_copies_solve_is_exact_match_and_a_zero_adapter_changes_nothing(tiny_args):
    model, _ = pb.pretrained(pb.sizes(tiny_args), tiny_args.cache_dir)
    raw = puzzles.generate(pb.world(pb.sizes(tiny_args), 2), 1, 3)[0].raw
    tokens, targets, mask = pb.test_query(raw)
    with torch.no_grad():
        predicted = model(tokens).argmax(-1)
    right = (targets.clone(), predicted.clone())
    for answer in right:  # the model's own answer counts as solved, a wrong one does not
        fixed = torch.where(mask.bool(), answer, targets)
        expected = bool(((predicted == fixed) | ~mask.bool()).all())
        assert pb.copies_solve(model, None, [(tokens, fixed, mask)]) == [expected]
    assert pb.copies_solve(model, None, [(tokens, predicted, mask)]) == [True]
    zero = LoRAAdapters.init(model, 2, rank=2, alpha=4.0)  # B = 0: both copies are the model itself
    assert pb.copies_solve(model, zero, [(tokens, predicted, mask)] * 2) == [True, True]


def test_consolidation_trains_only_a_new_expert_and_leaves_the_teacher(tiny_args):
    s = pb.sizes(tiny_args)
    model, _ = pb.pretrained(s, tiny_args.cache_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw = puzzles.generate(pb.world(s, 2), 1, 5)[0].raw
    student, report = pb.consolidated(model, raw, {**s, "seeding_steps": 3}, seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = {k for k, v in student.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.endswith((".A", ".B", ".pool_router", ".active")) for k in changed)
    assert len(report.losses) == 3


def test_estimate_counts_base_training_until_it_is_cached(tmp_path):
    args = parse(TINY, tmp_path)
    args.seeds = [0]
    uncached = pb.estimate(args)
    pb.pretrained(pb.sizes(args), args.cache_dir)
    assert pb.estimate(args) < uncached


def test_a_dream_is_rewarded_only_when_its_copy_solves_and_beats_the_demonstrations_alone():
    # copies: three dreams, then the leave-one-out-only copy (test loss 1.0)
    assert pb.dream_rewards([True, True, False, True], [0.5, 1.5, 0.2, 1.0]) == [1, 0, 0]
    assert pb.dream_rewards([True, True, True, False], [0.9, 0.8, 1.0, 1.0]) == [1, 1, 0]
