"""The `puzzles` benchmark (lmsleep.continual.bench.puzzles_bench, its systems in puzzles_systems) at a tiny
setting: seconds, not results."""
import argparse
import ast
import json
from pathlib import Path

import pytest
import torch

from lmsleep.continual.bench import load, puzzles_bench as pb, puzzles_systems as ps, runner
from lmsleep.continual.levels import level_modules
from lmsleep.continual.lora import LoRAAdapters
from lmsleep.tasks import puzzles
from lmsleep.tasks.example import TRAINED_ONLY

TINY = ["--length", "4", "--colors", "3", "--demos", "2", "--base-steps", "4", "--problems", "2", "--copies", "2",
        "--candidates", "3", "--ft-steps", "2", "--rest-problems", "2", "--generator-steps", "2",
        "--seeding-steps", "1"]
SIZES = {"length": 4, "colors": 3, "demos": 2, "copies": 2, "candidates": 3, "ft_steps": 2, "lr": 1e-2, "seal_lr": 1e-3,
         "rank": 2, "generator_steps": 2, "seeding_steps": 1}


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
    s = pb.sizes(tiny_args)
    assert set(result["systems"]) == set(pb.SYSTEMS)
    for system, metrics in result["systems"].items():
        assert 0 <= metrics["success"] <= metrics["pass_at_5"] <= 1, system
    for system in ("seal", "sleep"):
        assert 0 <= result["systems"][system]["dream_correct"] <= result["systems"][system]["dream_valid"] <= 1
        assert result["systems"][system]["wall_s"] > result["systems"]["in_context"]["wall_s"]
    assert len(result["seeding"]) == s["problems"] * s["copies"]  # one consolidation per sleep copy, none for seal
    assert all(r["divergence_after"] >= 0 for r in result["seeding"])
    assert len(result["rest_em"]) == s["rest_rounds"]
    assert {"in_context_held_out", "in_context_train", "steps"} <= set(result["base"])
    assert result["base"]["steps"] == 4
    assert len(ticks) == pb.units(tiny_args)
    held_out = {f"{rule} {params}" for rule, params in puzzles.tasks(pb.world(s, 2))}
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
    (["--seal-lr", "-1"], "--seal-lr"),
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
    tokens, targets, mask = ps.leave_one_out(raw)
    test = ps.test_query(raw)
    assert tokens.shape == (3, test[0].shape[1]) and targets.shape == tokens.shape
    for i, (x, y) in enumerate(raw["demos"]):
        text = ps.VOCAB.decode(torch.cat([tokens[i], targets[i, -1:]]).tolist())
        context, _, asked = text.partition(puzzles.SEP)
        assert asked == f"{x}>{y}" and f"{x}>{y};" not in context
        assert ps.VOCAB.decode(targets[i][mask[i].bool()].tolist()) == y


def test_the_learner_reads_the_demonstrations_and_the_closed_book_test_has_its_blank_in_their_place():
    raw = {"demos": [["0120", "0210"], ["1100", "0011"]], "test": ["0012", "2100"]}
    demos = ps.demonstrations(raw)
    config = ps.learner_config(SIZES, 0, "sleep")
    assert ps.VOCAB.decode(demos[0].tolist()) == "0120>0210;1100>0011;" and config.prompt == [ps.SEP]
    asked, closed = ps.test_query(raw), ps.closed_book_query(raw)
    c = demos.shape[1]
    assert all(torch.equal(a[:, c:], b[:, c:]) for a, b in zip(asked, closed))  # the same question after C
    assert torch.equal(asked[0][:, :c], demos) and (closed[0][0, :c] == config.blank).all()
    assert ps.parse_dream(ps.VOCAB.encode("1200>0021"), SIZES) == ("1200", "0021")
    assert ps.parse_dream(ps.VOCAB.encode("1300>0031"), SIZES) is None  # color 3 is outside 3 colors
    assert ps.parse_dream(ps.VOCAB.encode("120>00210"), SIZES) is None
    raw = {**raw, "rule": "reverse", "params": {}}
    assert ps.follows_rule(raw, ("1200", "0021")) and not ps.follows_rule(raw, ("1200", "1200"))


def test_copies_solve_is_exact_match_and_a_zero_adapter_changes_nothing(tiny_args):
    model, _ = pb.pretrained(pb.sizes(tiny_args), tiny_args.cache_dir)
    raw = puzzles.generate(pb.world(pb.sizes(tiny_args), 2), 1, 3)[0].raw
    tokens, targets, mask = ps.test_query(raw)
    with torch.no_grad():
        predicted = model(tokens).argmax(-1)
    right = (targets.clone(), predicted.clone())
    for answer in right:  # the model's own answer counts as solved, a wrong one does not
        fixed = torch.where(mask.bool(), answer, targets)
        expected = bool(((predicted == fixed) | ~mask.bool()).all())
        assert ps.copies_solve(model, None, [(tokens, fixed, mask)]) == [expected]
    assert ps.copies_solve(model, None, [(tokens, predicted, mask)]) == [True]
    zero = LoRAAdapters.init(model, 2, rank=2, alpha=4.0)  # B = 0: both copies are the model itself
    assert ps.copies_solve(model, zero, [(tokens, predicted, mask)] * 2) == [True, True]


def active_experts(model) -> int:
    return sum(len(m.active_slots()) for m in level_modules(model, 0))


def test_a_sleep_copy_runs_the_learner_and_trains_only_its_new_expert(tiny_args):
    s = pb.sizes(tiny_args)
    model, _ = pb.pretrained(s, tiny_args.cache_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw = puzzles.generate(pb.world(s, 2), 1, 5)[0].raw
    learner, records = ps.sleep_once(model, raw, s, 1, None, "sleep")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is untouched
    assert active_experts(model) == 0 and active_experts(learner.model) == len(model.blocks)
    assert records["consolidation"]["trigger"] == "context reset" and len(records["consolidation"]["unlocked"]) == 2
    assert records["dreaming"]["learnt"] == {**records["dreaming"]["learnt"], "into": "expert", "dreams": 1}
    assert len(records["dreaming"]["chosen"]) == 1 and learner.context is None and learner.sleeps == 2
    changed = {k for k, v in learner.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(".levels.0." in k and not k.endswith(".base.0.weight") for k in changed), changed


def test_a_seal_copy_has_no_consolidation_and_learns_its_dream_into_the_model(tiny_args):
    s = pb.sizes(tiny_args)
    model, _ = pb.pretrained(s, tiny_args.cache_dir)
    raw = puzzles.generate(pb.world(s, 2), 1, 5)[0].raw
    learner, records = ps.sleep_once(model, raw, s, 1, None, "seal")
    assert records["consolidation"]["consolidation"] == "off" and active_experts(learner.model) == 0
    assert records["dreaming"]["learnt"]["into"] == "model" and records["dreaming"]["learnt"]["dreams"] == 1
    changed = [k for k, v in learner.model.state_dict().items() if not torch.equal(model.state_dict()[k], v)]
    assert any("attn" in k or "embed" in k for k in changed)  # every parameter, not an expert


def test_the_generator_trains_on_training_tasks_only(tiny_args):
    s = pb.sizes(tiny_args)
    held_out = {f"{rule} {params}" for rule, params in puzzles.tasks(pb.world(s, 2))}
    for round_ in range(3):
        problems = ps.generator_problems(s, 0, round_)
        assert len(problems) == s["rest_problems"]
        assert not {f"{raw['rule']} {raw['params']}" for raw in problems} & held_out


def test_tau_rewards_a_copy_only_when_it_solves_the_test_and_then_for_a_lower_loss():
    raw = {"demos": [["0120", "0210"], ["1100", "0011"]], "test": ["0012", "2100"]}
    tokens, targets, mask = ps.test_query(raw)
    tau = ps.measure(raw)

    def answering(confidence: float, wrong: bool = False):
        logits = torch.zeros(1, tokens.shape[1], ps.VOCAB.size)
        logits[0, torch.arange(tokens.shape[1]), (targets[0] + int(wrong)) % ps.VOCAB.size] = confidence
        return lambda _: logits
    sure, unsure, wrong = tau(answering(9.0)), tau(answering(2.0)), tau(answering(9.0, wrong=True))
    assert wrong == 0.0 and 1 < unsure < sure <= 2


def test_the_bench_drives_the_learner_and_composes_no_stage_itself():
    """Sleep and SEAL-style go through ContinualLearner: nothing is imported from the stage modules, and lora's
    finetune serves only the test-time fine-tuning baseline."""
    for module in (pb, ps):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.split(".")[-1] in ("seeding", "dreaming", "selection")], module
    users = {f.name for f in ast.walk(ast.parse(Path(ps.__file__).read_text())) if isinstance(f, ast.FunctionDef)
             and any(isinstance(n, ast.Name) and n.id == "finetune" for n in ast.walk(f))}
    assert users == {"ttt"}


def test_estimate_counts_base_training_until_it_is_cached(tmp_path):
    args = parse(TINY, tmp_path)
    args.seeds = [0]
    uncached = pb.estimate(args)
    pb.pretrained(pb.sizes(args), args.cache_dir)
    assert pb.estimate(args) < uncached


def test_the_paper_s_order_is_a_verdict_on_mean_success():
    def summary(**means):
        return {name: {"success": {"mean": value}} for name, value in means.items()}
    holds, mean = pb.verdict(summary(in_context=0.1, ttt=0.2, seal=0.3, sleep=0.4))
    assert holds and mean["sleep"] == 0.4
    assert not pb.verdict(summary(in_context=0.1, ttt=0.35, seal=0.3, sleep=0.4))[0]
