"""Benchmarks `sequential` and `levels` (issue 13) at a tiny setting: the smaller, named languages world,
the base grown to k levels, each system's mechanism, run_seed's structure, the runner's files and resume,
and clear errors for bad flags."""
import argparse
import json

import pytest
import torch

from lmsleep.continual import base as base_cache
from lmsleep.continual.bench import levels_bench, load, runner, sequential
from lmsleep.continual.bench import sequential_report as report, sequential_systems as systems
from lmsleep.continual.bench import sequential_world as world
from lmsleep.tasks import languages

TINY = ["--languages", "2", "--steps", "2", "--wake", "2", "--batch", "4", "--train", "8", "--test", "8",
        "--base-steps", "8"]
TUNING = ["--grid", "1", "--fisher-rows", "4"]  # sequential's only (levels does not tune)
SEEDING = dict(systems.SEEDING)  # the benchmark's own (the tests shrink it)


def parse(module, extra=(), cache=None):
    parser = argparse.ArgumentParser()
    runner.add_common_arguments(parser, "unused")
    module.add_arguments(parser)
    tuning = TUNING if module is sequential else []
    return parser.parse_args([*TINY, *tuning, *(["--cache-dir", str(cache)] if cache else []), *extra])


@pytest.fixture(autouse=True)
def short_sleeps(monkeypatch):
    """Consolidation samples token by token: tiny replay keeps these tests at seconds."""
    monkeypatch.setattr(systems, "SEEDING", {**systems.SEEDING, "batch_size": 2, "sample_length": 4,
                                             "unrelated_length": 4})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bases")


@pytest.fixture(scope="module")
def base(cache):
    return world.base(parse(sequential, cache=cache))[0]


def test_the_small_world_restricts_the_lexicon_names_the_language_and_trains_the_sentence():
    small = languages.Options(language=3, nouns=2, verbs=1, adjectives=1, named=1, english_loss=1)
    e = languages.generate(small, 5, seed=0)
    assert {len(x) for x in e} == {small.window} and small.window < languages.Options().window
    assert set(e[0].raw["lexicon"]) == {"cat", "dog", "sees", "big"}
    name = languages.name(3)
    assert f"book {name} :" in e[0].input_text and f"| {name} : the" in e[0].input_text
    closed = languages.generate(languages.Options(language=3, context=0, nouns=2, verbs=1, adjectives=1, named=1), 1, 0)[0]
    assert "book" not in closed.input_text and f"| {name} :" in closed.input_text  # the name says which language
    sep = e[0].tokens.index(languages.VOCABULARY.encode("|")[0])
    assert all(e[0].loss_mask[sep:]) and not any(e[0].loss_mask[: sep])  # the sentence is trained too
    assert languages.solve(e[0].raw) == [e[0].target_text]
    with pytest.raises(ValueError, match="nouns"):
        languages.Options(nouns=1)


def test_grown_model_computes_what_the_base_computes(base):
    grown = world.with_levels(base, 3, pool=6)
    assert grown.config.memory_levels == 3 and grown.config.expert_pool == 6
    tokens = world.examples(0, 4, 0, 1)["tokens"]
    with torch.no_grad():
        assert torch.allclose(grown(tokens), base(tokens), atol=1e-5)
    with pytest.raises(ValueError, match="1-level"):
        world.with_levels(grown, 2, pool=6)
    # the gating is the grown model's, whatever the (cached) base was saved with
    gated = [m.gating for b in grown.blocks for m in b.mlp.levels]
    assert grown.config.expert_gating == world.GATING == "sigmoid" and set(gated) == {"sigmoid"}
    assert world.with_levels(base, 2, pool=6, gating="sum").blocks[0].mlp.levels[1].gating == "sum"


def test_accuracy_scores_syllables_not_the_stop(base):
    data = world.examples(0, 8, 0, 1)
    perfect = dict(data)

    class Oracle(torch.nn.Module):
        def forward(self, tokens):
            return torch.nn.functional.one_hot(data["targets"][: len(tokens)], base.config.vocab_size).float()

    assert world.accuracy(Oracle(), perfect) == 1.0
    stop = languages.VOCABULARY.encode(".")[0]

    class OnlyStop(torch.nn.Module):
        def forward(self, tokens):
            return torch.nn.functional.one_hot(torch.full_like(tokens, stop), base.config.vocab_size).float()

    assert world.accuracy(OnlyStop(), data) == 0.0


def test_in_context_asks_every_language_after_the_latest_book(base):
    one, other = world.examples(0, 6, 1, 1), world.examples(1, 6, 1, 1)
    spliced = world.with_book(other, one)
    cut = world.book_length()
    assert torch.equal(spliced["tokens"][:, :cut], one["tokens"][:, :cut])
    assert torch.equal(spliced["tokens"][:, cut:], other["tokens"][:, cut:])
    system = systems.InContext(base)
    system.books = {0: one, 1: other}
    system.learn(1, None)
    assert system.accuracy(1, None, other) == world.accuracy(base, other)


def test_replay_mixes_earlier_languages_and_ewc_anchors_on_them(base, monkeypatch):
    args = parse(sequential)
    calls = []
    monkeypatch.setattr(systems, "sft", lambda model, data, **kw: calls.append((data, kw)))
    replay = systems.FineTune(base, "replay", 1e-3, args, 0)
    first, second = world.examples(0, 8, 0, 0), world.examples(1, 8, 0, 0)
    replay.learn(0, first)
    replay.learn(1, second)
    assert len(calls[0][0]["tokens"]) == 8 and len(calls[1][0]["tokens"]) == 16
    assert torch.equal(calls[1][0]["tokens"][8:], first["tokens"])
    calls.clear()
    ewc = systems.FineTune(base, "ewc", 1e-3, args, 0)
    ewc.learn(0, first)
    assert calls[0][1]["penalty"] is None and ewc.fisher is not None
    ewc.learn(1, second)
    penalty = calls[1][1]["penalty"]
    assert isinstance(penalty, systems.EWC) and penalty.lam == systems.EWC_LAMBDA
    assert penalty(ewc.model).item() == 0.0  # anchored at the weights after language 0 (sft was stubbed)


def test_sleep_consolidates_each_book_into_level_one_and_sends_it_up(base):
    args = parse(sequential)
    system = systems.Sleep(base, 2, systems.periods_for(2, args.wake), 1e-2, args, 0)
    sets = {j: {"in_context": world.examples(j, 8, 0, 1)} for j in range(2)}
    system.learn(0, sets[0])
    level1 = [b.mlp.levels[0].active_slots() for b in system.model.blocks]
    assert all(len(s) == 1 for s in level1) and system.learner.context is None
    system.learn(1, sets[1])
    # at language 1's wake, level 1 was due: its expert (book 0) went to level 2; book 1 is in level 1
    assert all(len(b.mlp.levels[0].active_slots()) == 1 for b in system.model.blocks)
    assert all(len(b.mlp.levels[1].active_slots()) >= 1 for b in system.model.blocks)
    assert system.update_steps == 2 * args.steps and system.sleep_steps >= args.steps
    # the learner's own sleep, consolidation only, with unrelated replay from "book" training the gates
    config = system.learner.config
    assert config.unrelated == world.BOOK and not config.dream and not config.imitation
    assert [r["trigger"] for r in system.records] == ["context reset"] * 2
    assert all(0 <= r["opens_on_unrelated"] <= 1 and 0 <= r["opens_on_content"] <= 1 for r in system.records)
    assert set(sequential.sleep_metrics(system)) == {"sleep_steps", "opens_on_content", "opens_on_unrelated"}


def test_the_unrelated_prompt_starts_every_example_and_its_replay_is_a_whole_example():
    tokens = world.examples(3, 4, 0, 1)["tokens"]
    assert world.BOOK == tokens[:1, :1].tolist()[0] and (tokens[:, 0] == world.BOOK[0]).all()
    assert len(world.BOOK) + SEEDING["unrelated_length"] == world.example_length() == tokens.shape[1] + 1


def test_periods():
    assert systems.periods_for(1, 4) == [4]
    assert systems.periods_for(3, 4) == [4, 8, 16]
    assert systems.periods_for(3, 4, slowest=2) == [4, 8, 32]


def test_run_seed_structure(cache):
    args = parse(sequential, ["--systems", "finetune,in-context,sleep-1"], cache)
    ticks = []
    result = sequential.run_seed(args, 0, lambda n=1: ticks.append(n))
    assert set(result["systems"]) == {"finetune", "in-context", "sleep-1"}
    for name, m in result["systems"].items():
        assert {"ACC", "BWT", "FWT", "forgetting", "last", "lr"} <= set(m)
        assert len(result["R"][name]) == 2 and all(len(row) == 2 for row in result["R"][name])
        assert all(0 <= v <= 1 for row in result["R"][name] for v in row)
    assert result["systems"]["sleep-1"]["update_steps"] == result["systems"]["finetune"]["update_steps"] == 4
    assert 0 <= result["systems"]["sleep-1"]["opens_on_unrelated"] <= 1 and result["gating"] == "sigmoid"
    assert sum(ticks) == sequential.units(args)
    assert {"in_context", "closed_book"} <= set(result["base"]) and len(result["b"]) == 2


def test_runner_writes_files_and_resume_skips_the_finished_seed(cache, tmp_path, monkeypatch):
    args = parse(sequential, ["--systems", "finetune", "--seeds", "1", "--out", str(tmp_path)], cache)
    runner.run(sequential, args, ["sequential"])
    for name in ("seed-0.json", "results.json", "sequential.png", "report.md"):
        assert (tmp_path / name).is_file()
    assert "ACC" in (tmp_path / "report.md").read_text() and "in-context accuracy" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["finetune"]["ACC"]["n"] == 1
    monkeypatch.setattr(sequential, "run_seed", lambda *a: pytest.fail("a finished seed ran again"))
    runner.run(sequential, args, ["sequential"])


@pytest.mark.parametrize("flag,value,match", [("--systems", "finetune,magic", "--systems"),
                                              ("--languages", "1", "--languages"), ("--grid", "0", "--grid"),
                                              ("--steps", "0", "--steps")])
def test_bad_flags_name_the_flag(flag, value, match):
    with pytest.raises(ValueError, match=match):
        sequential.estimate(parse(sequential, [flag, value]))


def test_tasks_is_the_number_of_languages_and_the_estimate_grows_with_it():
    eight = parse(sequential, ["--tasks", "8"])
    assert eight.languages == 8 and sequential.units(eight) > sequential.units(parse(sequential))
    assert sequential.estimate(eight) > sequential.estimate(parse(sequential, ["--tasks", "4"]))
    # Sleep's estimate counts its book consolidations, the upward ones, the wake steps and the R rows
    args = parse(sequential, ["--tasks", "8", "--steps", "10", "--wake", "4", "--test", "16"])
    periods = systems.periods_for(2, 4)
    assert sequential.consolidations(periods, 8, 4) == 8 + 8
    assert sequential.seeding_step_seconds(2) > sequential.seeding_step_seconds(1)
    seconds = sequential.SECONDS
    assert sequential.sequence_seconds("sleep-2", args, 8) == pytest.approx(
        16 * (10 * sequential.seeding_step_seconds(2) + seconds["consolidation"]) + 8 * 4 * seconds["wake_step"]
        + 64 * 16 * seconds["test_row"])


def test_the_base_is_known_cached_or_not_before_anything_runs(base, cache, tmp_path):
    configs = sequential.base_configs(parse(sequential, cache=cache))
    assert list(configs) == ["languages"] and base_cache.cached(configs["languages"], cache)
    assert not base_cache.cached(configs["languages"], tmp_path)
    assert levels_bench.base_configs(parse(levels_bench, cache=cache)) == configs  # one base for both
    full = world.base_config()
    assert base_cache.training_seconds(full) == pytest.approx(
        full.steps / configs["languages"].steps * base_cache.training_seconds(configs["languages"]))
    assert 60 < base_cache.training_seconds(full) < 1800  # 3000 steps took 7 minutes on 2 cores


def test_levels_bench_configurations_and_run(cache):
    args = parse(levels_bench, ["--levels", "1,2", "--slowest", "1,2"], cache)
    names = [c[0] for c in levels_bench.configurations(args)]
    assert names == ["L1 slowest×1", "L1 slowest×2", "L2 slowest×1", "L2 slowest×2"]
    assert levels_bench.estimate(args) > 0
    args = parse(levels_bench, ["--levels", "2", "--slowest", "1"], cache)
    result = levels_bench.run_seed(args, 0, lambda n=1: None)
    assert set(result["systems"]) == {"L2 slowest×1"} and result["periods"]["L2 slowest×1"] == [2, 4]
    assert len(result["R"]["L2 slowest×1"]) == 2
    with pytest.raises(ValueError, match="--levels"):
        levels_bench.configurations(parse(levels_bench, ["--levels", "5"]))
    assert load("levels") is levels_bench and load("sequential") is sequential


def stat(mean, std=0.0):
    return {"mean": mean, "std": std, "n": 3, "values": [mean] * 3}


def test_forgetting_verdict_reads_forgetting_beside_what_was_learnt():
    learnt, nothing = [[0.8, 0.0], [0.0, 0.8]], [[0.05, 0.0], [0.0, 0.05]]
    per_seed = [{"base": {"in_context": 0.99, "closed_book": 0.02}, "R": {"finetune": learnt, "sleep-1": nothing},
                 "systems": {"finetune": {"lr": 0.01}, "sleep-1": {"lr": 0.1}}}]
    summary = {"finetune": {"forgetting": stat(0.8), "ACC": stat(0.4)},
               "sleep-1": {"forgetting": stat(0.05), "ACC": stat(0.025)}}
    assert report.peak(learnt) == 0.8
    holds, n = report.halves_forgetting(summary, per_seed, ["sleep-1"])
    assert not holds and n["halves"] and not n["useful"]  # vacuous: it learnt nothing
    assert (n["system"], n["forgetting_sleep"], n["learnt_sleep"], n["learnt_finetune"]) == ("sleep-1", 0.05, 0.05, 0.8)
    assert report.forgetting_sentence(holds, n) in sequential.notes(summary, per_seed)
    summary["sleep-1"]["ACC"] = stat(0.5)
    per_seed[0]["R"]["sleep-1"] = [[0.8, 0.0], [0.75, 0.25]]
    holds, n = report.halves_forgetting(summary, per_seed, ["sleep-1"])
    assert holds and n["learnt_sleep"] == 0.8 and n["acc_sleep"] == 0.5
    summary["sleep-1"]["forgetting"] = stat(0.41)  # more than half of fine-tuning's 0.8
    holds, n = report.halves_forgetting(summary, per_seed, ["sleep-1"])
    assert not holds and not n["halves"] and n["useful"]


def test_replay_target_needs_the_accuracy_and_less_forgetting():
    summary = {"replay": {"ACC": stat(0.6, 0.05), "forgetting": stat(0.1)},
               "sleep-1": {"ACC": stat(0.62, 0.02), "forgetting": stat(0.05)},
               "sleep-2": {"ACC": stat(0.3), "forgetting": stat(0.0)}}
    holds, n = report.reaches_replay(summary, ["sleep-1", "sleep-2"])
    assert holds and n["system"] == "sleep-1" and (n["acc_sleep"], n["acc_replay"]) == (0.62, 0.6)
    summary["sleep-1"]["forgetting"] = stat(0.1)  # as much as replay: not less
    holds, n = report.reaches_replay(summary, ["sleep-1", "sleep-2"])
    assert not holds and n["reaches"] and not n["less_forgetting"]
    summary["sleep-1"]["ACC"] = stat(0.59)
    holds, n = report.reaches_replay(summary, ["sleep-1"])
    assert not holds and not n["reaches"] and not n["less_forgetting"]


def test_levels_verdict_needs_more_than_noise():
    acc = lambda m, sd: {"ACC": stat(m, sd)}
    assert levels_bench.more_levels_help({"L1 slowest×1": acc(0.1, 0.0), "L1 slowest×2": acc(0.2, 0.0)}) is None
    holds, n = levels_bench.more_levels_help({"L1 slowest×1": acc(0.0, 0.0), "L2 slowest×1": acc(0.03, 0.02)})
    assert not holds and n["monotone"] and not n["resolved"]
    holds, n = levels_bench.more_levels_help({"L1 slowest×1": acc(0.1, 0.01), "L1 slowest×2": acc(0.05, 0.0),
                                              "L2 slowest×1": acc(0.3, 0.02)})
    assert holds and n["best"] == {1: (0.1, 0.01), 2: (0.3, 0.02)}  # the best period of each level count
    holds, n = levels_bench.more_levels_help({"L1 slowest×1": acc(0.3, 0.01), "L2 slowest×1": acc(0.1, 0.02)})
    assert not holds and not n["monotone"]
    per_seed = [{"base": {"in_context": 0.99, "closed_book": 0.02}, "periods": {"L1 slowest×1": [4]},
                 "R": {"L1 slowest×1": [[0.1, 0.0], [0.0, 0.1]]}, "lr": 0.1, "gating": "sigmoid"}]
    text = levels_bench.notes({"L1 slowest×1": acc(0.3, 0.01), "L2 slowest×1": acc(0.1, 0.02)}, per_seed)
    assert levels_bench.levels_sentence(holds, n) in text and report.DIAGNOSIS not in text  # gated: not its story


def rows(data: dict) -> set:
    return {tuple(r.tolist()) for r in data["tokens"]}


def test_no_test_row_is_a_training_row():
    """The world has 48 sentences: the split gives each language distinct training and test sentences,
    closed-book and with the book, for the default sizes and every seed and language a run uses."""
    args = parse(sequential, ["--train", "32", "--test", "16"])
    for seed in range(3):
        for j in [*range(4), *world.VALIDATION]:
            sets = world.language_sets(j, seed, args.train, args.test)
            assert len(rows(sets["train"])) == 32 and len(rows(sets["closed"])) == 16
            assert not rows(sets["train"]) & rows(sets["closed"])
            assert not rows(sets["in_context"]) & rows(sets["test_in_context"])
    assert world.split(0, 0, 32, 16) != world.split(0, 1, 32, 16)  # each seed its own split


def test_sequence_trains_and_tests_on_disjoint_rows():
    args = parse(sequential)
    seen = {"train": set(), "closed": set()}

    class Recorder:
        update_steps = 0

        def learn(self, language, data):
            seen["train"] |= rows(data)

        def accuracy(self, language, closed, in_context):
            seen["closed"] |= rows(closed)
            return 0.0

    sequential.sequence(Recorder(), [0, 1], args, seed=0)
    assert len(seen["train"]) == 16 and len(seen["closed"]) == 16 and not seen["train"] & seen["closed"]


def test_too_many_rows_for_the_world_name_the_flags():
    for extra in (["--train", "40", "--test", "16"], ["--test", "49", "--train", "1"]):
        with pytest.raises(ValueError, match="--train .* --test .* 48 distinct"):
            sequential.estimate(parse(sequential, extra))
        with pytest.raises(ValueError, match="--train .* --test"):
            levels_bench.estimate(parse(levels_bench, extra))


def test_validation_languages_are_not_test_base_or_gate_languages():
    tests = set(range(8))  # --languages is at most 8: test languages 0..7
    pretraining = set(range(world.PRETRAIN.language, world.PRETRAIN.language + world.PRETRAIN.languages))
    gate = set(range(world.HELD_OUT_FIRST, world.HELD_OUT_FIRST + 100))
    validation = set(world.VALIDATION)
    assert not validation & tests and not validation & pretraining and not validation & gate
    assert not tests & pretraining and not tests & gate
    with pytest.raises(ValueError, match="--languages"):
        sequential.estimate(parse(sequential, ["--languages", "9"]))


@pytest.mark.parametrize("flag,value", [("--systems", "sleep-1"), ("--grid", "2"), ("--validation", "1"),
                                        ("--fisher-rows", "4")])
def test_levels_does_not_offer_flags_it_would_ignore(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse(levels_bench, [flag, value])
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_levels_settings_note_is_its_own():
    text = levels_bench.settings_note(0.1)
    assert "0.1" in text and "no tuning" in text and "disjoint" in text
    assert "EWC" not in text and "--grid" not in text and "--validation" not in text
    assert "--grid" in sequential.settings_note() and "EWC" in sequential.settings_note()
