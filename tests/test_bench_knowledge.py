"""The knowledge benchmark (continual.bench.knowledge) and the shared runner, at a tiny size: the files it
writes, resuming, its systems on their own, and bad flags."""
import argparse
import copy
import json

import pytest
import torch

from lmsleep.continual.bench import knowledge, knowledge_setup, knowledge_systems as ks, load, runner
from lmsleep.continual.bench.cli import add_arguments
from lmsleep.tasks import facts


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["knowledge", *argv])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny run (bases of 30 steps, 2 update steps) and its output directory."""
    root = tmp_path_factory.mktemp("bench")
    args = parse("--seeds", "2", "--steps", "2", "--base-steps", "30", "--generator-passages", "1", "--out", str(root / "out"),
                 "--cache-dir", str(root / "cache"), "--threads", "1")
    return args, runner.run(args.bench_run, args, argv=["knowledge", "--seeds", "2"])


def test_the_runner_writes_results_plot_report_and_seed_files(tiny):
    args, results = tiny
    out = args.out
    saved = json.loads(open(f"{out}/results.json").read())
    assert saved["seeds"] == [0, 1] and len(saved["per_seed"]) == 2
    expected = set(knowledge.systems(args))
    assert set(saved["summary"]) == expected
    for system, stats in saved["summary"].items():
        assert 0 <= stats["accuracy"]["mean"] <= 1 and stats["accuracy"]["n"] == 2
    report = open(f"{out}/report.md").read()
    assert "| sleep (2 levels) |" in report and "knowledge.png" in report and "lmsleep continual bench" in report
    assert open(f"{out}/knowledge.png", "rb").read(4) == b"\x89PNG"
    for seed in (0, 1):
        seed_file = json.loads(open(f"{out}/seed-{seed}.json").read())
        assert seed_file["seed"] == seed and seed_file["code"] == runner.code_version()  # which code computed it
        assert seed_file["cpu"] == runner.cpu_name() and "cores" in seed_file["cpu"]  # and on which CPU
    # the base row is the base: nothing learnt, nothing forgotten; in context is the ceiling
    base = saved["per_seed"][0]["systems"]["base"]
    assert base["forgetting"] == 0.0


def test_a_rerun_skips_finished_seeds_and_reruns_changed_arguments(tiny, monkeypatch, capsys):
    args, first = tiny
    calls = []
    original = knowledge.run_seed
    monkeypatch.setattr(knowledge, "run_seed", lambda a, seed, tick: calls.append(seed) or original(a, seed, tick))
    monkeypatch.setattr(runner, "code_version", lambda: "other")
    again = runner.run(knowledge, args, argv=["knowledge"])
    assert "computed by code" in capsys.readouterr().out  # reused, and said so
    assert calls == [] and runner.dumps(again["per_seed"]) == runner.dumps(first["per_seed"])
    changed = copy.copy(args)
    changed.seeds = [1]
    changed.forgetting_budget = 0.5  # other arguments: seed 1 is computed again
    runner.run(knowledge, changed, argv=["knowledge"])
    assert calls == [1]


def test_aggregate_is_mean_and_sample_std_over_seeds():
    summary = runner.aggregate([{"systems": {"a": {"x": 0.0, "y": float("nan")}}}, {"systems": {"a": {"x": 1.0}}}])
    assert summary["a"]["x"]["mean"] == 0.5 and summary["a"]["x"]["std"] == pytest.approx(0.5 ** 0.5)
    assert "y" not in summary["a"]  # a non-finite value is left out, not averaged


def test_rows_left_pad_and_score_only_from_the_start():
    tokens, targets, mask = ks.rows([torch.tensor([5, 6, 7]), torch.tensor([8, 9])], [1, 1])
    assert tokens.tolist() == [[5, 6], [ks.PAD, 8]]
    assert targets.tolist() == [[6, 7], [8, 9]]
    assert mask.tolist() == [[1, 1], [0, 1]]


def test_the_closed_book_layout_is_padding_where_the_passage_was():
    raw = facts.world(5, 1, facts.Options(entities=1, attributes=3, questions=3, pool=2))
    assert ks.blank(raw).shape[1] == ks.passage(raw).shape[1] + 1  # padding in the passage's place, then SEP
    assert ks.blank(raw)[0, :-1].eq(ks.PAD).all() and ks.blank(raw)[0, -1] == ks.SEP
    config = ks.learner_config(ks.Budget(), 0)  # the learner lays dreams out the same way: after blank + SEP
    assert config.prompt == [ks.SEP] and config.blank == ks.PAD


def test_finetune_systems_change_the_model_and_sleep_only_the_new_expert(tiny):
    args, _ = tiny
    from lmsleep.continual.base import pretrained_base

    base, _ = pretrained_base(knowledge.WORLD, {**knowledge.MODEL, "memory_levels": 2}, args.cache_dir, 30,
                              progress=False)
    raw = facts.world(9, 1, knowledge.WORLD.__class__(**{**knowledge.WORLD.__dict__, "pool": 2}))
    budget = ks.Budget(steps=2, dream_steps=2, seeding=knowledge_setup.SEEDING, dreaming=knowledge_setup.DREAMING)
    for name in ks.SFT_SYSTEMS:
        system = ks.system(name, base, 1e-3, budget, 0, None)
        system.learn(raw, 0)
        assert any(not torch.equal(a, b) for a, b in zip(system.model.parameters(), base.parameters())), name
        if name == "seal":  # the learner with consolidation off: no expert was unlocked
            assert all(not m.active.any() for m in system.model.modules() if hasattr(m, "active"))
    model = copy.deepcopy(base)
    ks.sleep(model, raw, budget, 0, None)
    moved = {n for (n, a), b in zip(model.named_parameters(), base.parameters()) if not torch.equal(a, b)}
    assert moved and all(".levels.0." in n and n.endswith((".A", ".B", ".pool_router")) for n in moved), moved


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "--steps"), ("--upward", "-1", "--upward"), ("--forgetting-budget", "2", "budget"),
])
def test_bad_flags_are_named(flag, value, message):
    args = parse(flag, value)
    with pytest.raises(ValueError, match=message):
        knowledge.units(args)


def test_bad_seeds_and_unknown_benchmarks_are_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
        runner.seed_list("0,0")
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
        runner.seed_list("x")
    assert runner.seed_list("3") == [0, 1, 2] and runner.seed_list("4,7") == [4, 7]
    with pytest.raises(ValueError, match="unknown benchmark"):
        load("nope")


def test_fidelity_counts_true_facts_covered_and_wrong_facts_stated():
    raw = facts.world(5, 1, facts.Options(entities=1, attributes=3, questions=3, pool=2))
    person = raw["entities"][0]
    name = person["name"]
    from lmsleep.tasks.facts_text import question

    right = f"{question('city', 0, name)} {person['city']} ."
    wrong_color = next(c for c in facts.ATTRIBUTES["color"] if c != person["color"])
    wrong = f"{question('color', 0, name)} {wrong_color} ."
    sequences = [torch.tensor([ks.SEP] + facts.VOCABULARY.encode(text)) for text in (right, wrong, "the is . ?")]
    result = ks.fidelity(ks.rows(sequences, [1, 1, 1]), raw)
    assert result == {"true": 1 / 3, "wrong": 1 / 2, "stated": 2.0}


def test_json_has_no_nan_and_tables_say_how_many_seeds_gave_a_value():
    text = runner.dumps({"a": [float("nan"), 1.0, {"b": float("inf")}]})
    assert json.loads(text) == {"a": [None, 1.0, {"b": None}]}
    summary = runner.aggregate([{"systems": {"s": {"x": 0.5}}}, {"systems": {"s": {"x": None}}}])
    assert runner.table(summary, ["x"], {"x"}, seeds=2).splitlines()[-1] == "| s | 50.0 ± — (n=1) |"


def test_every_ablation_is_a_switch_of_the_learner():
    # the random expert takes the low-rank pool too, so it is an ablation with one base expert per level
    names = knowledge.systems(parse())
    assert {"sleep − dreaming", "sleep − imitation", "sleep − expansion", "sleep − gradient selection",
            "sleep − random expert", "sleep − off path"} <= set(names)
    full = ks.learner_config(ks.Budget(), 0)
    for variant in ks.VARIANTS:
        config = ks.learner_config(ks.Budget(), 0, variant=variant)
        assert (config == full) == (variant == "sleep"), variant  # each ablation switches something
    assert ks.learner_config(ks.Budget(), 0, variant="no imitation").seeding_config().alpha == 1.0
    assert ks.learner_config(ks.Budget(), 0, variant="no gradient selection").dreaming_config().selection == "random"
    assert knowledge.systems(parse("--passages", "20"))[-1] == "sleep − off path"  # the continued setting's control


def test_verdicts_are_values():
    from lmsleep.continual.bench import knowledge_report as kr

    def summary(**rows):
        return {name: {k: {"mean": v} for k, v in metrics.items()} for name, metrics in rows.items()}

    good = summary(**{"sleep (2 levels)": {"accuracy": 0.5, "forgetting": 0.02}, "finetune": {"accuracy": 0.3, "forgetting": 0.1},
                      "finetune+restatements": {"accuracy": 0.4, "forgetting": 0.05}})
    assert kr.keeps_reading(good) == (True, {"forgetting": 0.02, "limit": 0.05})
    assert kr.beats_at_matched_forgetting(good)[0]
    worse = summary(**{"sleep (2 levels)": {"accuracy": 0.5, "forgetting": 0.08}, "finetune": {"accuracy": 0.3, "forgetting": 0.05},
                       "finetune+restatements": {"accuracy": 0.4, "forgetting": 0.05}})
    assert not kr.keeps_reading(worse)[0] and not kr.beats_at_matched_forgetting(worse)[0]  # more forgetting
    ablated = summary(**{"sleep (2 levels)": {"accuracy": 0.5}, "sleep − dreaming": {"accuracy": 0.4},
                         "sleep − imitation": {"accuracy": 0.6}})
    holds, changes = kr.worst_ablation(ablated)
    assert holds and changes == pytest.approx({"dreaming": -0.1, "imitation": 0.1})


def test_test_validation_training_and_probe_passages_never_coincide():
    ranges = [knowledge.TEST, knowledge.VALIDATION, knowledge.TRAINING, knowledge.PROBE, knowledge.PROBE_VALIDATION]
    span = knowledge.MAX_SEED * knowledge.MAX_PER_SEED
    assert all(b - a >= span for a, b in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError, match="--trials"):
        knowledge.units(parse("--trials", "100"))
    with pytest.raises(ValueError, match="--trials"):
        knowledge.units(parse("--passages", "5", "--trials", "2"))


def test_the_base_command_builds_the_base_the_benchmark_loads(tiny, capsys):
    from lmsleep.continual import bases_cli

    args, _ = tiny
    namespace = bases_cli.bench_arguments("facts", args.cache_dir)
    assert namespace.base_steps == knowledge.BASE_STEPS  # the benchmark's default base, not another
    namespace.base_steps = 30
    reports = knowledge.bases(namespace)
    assert all(report["loaded"] for report in reports.values())  # the tiny run above trained exactly these
