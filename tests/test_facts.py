"""The facts world (tasks.facts, tasks.facts_text) and its cached pretrained base (continual.base)."""
import json
from dataclasses import asdict

import pytest
import torch

from lmsleep import cli
from lmsleep.continual import base
from lmsleep.io import load_model
from lmsleep.tasks import TASKS, batch, facts, masked_targets
from lmsleep.tasks.facts_text import ATTRIBUTES, STATEMENTS, question, value_first

V = facts.VOCABULARY
OPTIONS = [facts.Options(), facts.Options(entities=1, attributes=1, values=2, questions=1),
           facts.Options(entities=8, attributes=4, questions=32, context=0, pool=0),
           facts.Options(entities=3, attributes=2, questions=5, pool=2, value_first=0)]
IDS = ["default", "smallest", "largest-closed-book", "pool2-name-first"]


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_solver_matches_the_answers_and_the_layout_is_fixed(options):
    examples = facts.generate(options, 40, seed=3)
    assert {len(e) for e in examples} == {options.length} and options.window == options.length
    for example in examples:
        raw = json.loads(json.dumps(example.raw))  # the solver sees only the JSON raw
        answers = facts.solve(raw)
        assert V.encode(" ".join(answers)) == masked_targets(example)  # one word per answer, loss on it alone
        assert example.target_text == " ".join(answers) and len(answers) == options.questions
        assert V.encode(example.input_text) == example.tokens  # the vocabulary covers every example
        assert all(0 <= t < V.size for t in example.tokens + example.targets)
        assert len({p["name"] for p in raw["entities"]}) == options.entities
        assert (facts.passage_text(raw) in example.input_text) == bool(options.context)
    assert batch(examples)["tokens"].shape == (40, options.length)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_same_seed_same_examples_other_seed_other_examples(options):
    assert facts.generate(options, 6, seed=7) == facts.generate(options, 6, seed=7)
    assert facts.generate(options, 6, seed=7)[:2] == facts.generate(options, 2, seed=7)
    assert facts.generate(options, 6, seed=7) != facts.generate(options, 6, seed=8)


def test_worlds_are_deterministic_and_use_the_held_out_names():
    assert facts.world(5, 4) == facts.world(5, 4) != facts.world(6, 4)
    pretraining, held_out = set(facts.names(1)), set(facts.names(2))
    assert not pretraining & held_out and len(pretraining) == len(held_out) == len(facts.names(0)) // 2
    raw = facts.world(5, 30)
    assert {p["name"] for p in raw["entities"]} <= held_out
    for example in facts.generate(facts.Options(), 50, seed=1):
        assert {p["name"] for p in example.raw["entities"]} <= pretraining


def test_value_first_statements_and_paraphrased_questions_occur():
    raw = facts.world(0, 8, facts.Options(attributes=4, pool=2))
    templates = [STATEMENTS[s["attribute"]][s["template"]] for s in raw["statements"]]
    assert any(value_first(t) for t in templates) and not all(value_first(t) for t in templates)
    easy = facts.world(0, 8, facts.Options(attributes=4, pool=2, value_first=0))
    assert not any(value_first(STATEMENTS[s["attribute"]][s["template"]]) for s in easy["statements"])
    buckets = {b for e in facts.generate(facts.Options(), 20, seed=0) for b, m in zip(e.bucket, e.loss_mask) if m}
    assert buckets == {0, 1}  # answers to facts stated name first and value first
    # no question is written as its fact's statement: the passage's next tokens never answer it
    passage = facts.passage_text(raw)
    for q in facts.questions_of(raw):
        assert question(q["attribute"], q["template"], q["entity"]) not in passage


def test_passage_and_question_batches_for_a_learner():
    raw = facts.world(11, 3)
    assert V.decode(facts.passage_tokens(raw)) == facts.passage_text(raw)
    truth = {(p["name"], a, v) for p in raw["entities"] for a, v in p.items() if a != "name"}
    assert facts.read_facts(facts.passage_text(raw)) == truth and len(truth) == 9
    rows = facts.questions_of(raw)
    assert len(rows) == 9 * 3 and len(facts.questions_of(raw, paraphrases=False)) == 9
    in_context, closed_book = facts.in_context_batch(raw), facts.closed_book_batch(raw)
    assert in_context["tokens"].shape == closed_book["tokens"].shape == (27, in_context["tokens"].shape[1])
    assert torch.equal(in_context["targets"][in_context["loss_mask"].bool()],
                       closed_book["targets"][closed_book["loss_mask"].bool()])
    passage = len(facts.passage_tokens(raw))
    first = V.decode(closed_book["tokens"][0]).split()
    assert set(first[: passage]) == {"_"} and "|" in first
    assert V.decode(in_context["tokens"][0]).split()[-passage - 8 :] != first[-passage - 8 :]
    answers = V.decode(closed_book["targets"][closed_book["loss_mask"].bool()]).split()
    for q, answer in zip(rows, answers):
        assert facts.check_answer(raw, q["entity"], q["attribute"], answer)
        assert not facts.check_answer(raw, q["entity"], q["attribute"], "nothing")


def test_the_judge_reads_facts_in_any_template():
    assert facts.read_facts("_ | ka lu is red . the one in rome is named ka lu . what pet does bi mo have ? cat .") == {
        ("kalu", "color", "red"), ("kalu", "city", "rome"), ("bimo", "pet", "cat")}
    assert facts.judge("the red one is named ka lu .", "red is the color of ka lu .")
    assert facts.judge("what color is ka lu ? red .", "ka lu is red .")
    assert not facts.judge("ka lu is blue .", "ka lu is red .")
    assert not facts.judge("ka lu is red . bi mo is red .", "ka lu is red .")
    assert not facts.judge("ka lu is", "ka lu is")  # no complete fact: nothing to agree on
    assert not facts.judge("ka lu lives in red .", "ka lu is red .")  # a value of another attribute


def test_vocabulary_is_fixed_and_covers_every_value():
    assert V.identity.startswith("facts-") and V.size < 128
    for attribute, values in ATTRIBUTES.items():
        assert all(V.index(w) >= 0 for w in (attribute, *values))
    assert TASKS["facts"] is facts


@pytest.mark.parametrize("values,message", [
    ({"questions": 7}, "facts.Options.questions must be an integer in [1, 6] (at most entities × attributes"),
    ({"pool": 3}, "facts.Options.pool must be one of (0, 1, 2), got 3"),
    ({"attributes": 5}, "facts.Options.attributes must be an integer in [1, 4], got 5"),
    ({"context": "yes"}, "facts.Options.context must be an integer in [0, 1], got 'yes'"),
])
def test_bad_options_name_the_field(values, message):
    with pytest.raises(ValueError) as error:
        facts.Options(**values)
    assert message in str(error.value)


def test_data_cli_prints_json_lines(capsys):
    assert cli.main(["data", "facts", "--n", "2", "--seed", "4", "--entities", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert record["task"] == "facts" and len(record["raw"]["entities"]) == 3
        assert " ".join(facts.solve(record["raw"])) == record["target_text"]
        assert V.decode(record["tokens"]) == record["input_text"]


# ----- the cached base -----

TINY = {"layout": "A", "eviction": "none", "d_model": 16, "n_heads": 2, "head_dim": 8, "mlp_hidden": 32}


def test_pretrained_base_is_cached_and_loaded_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "HELD_OUT_SIZE", 64)
    model, report = base.pretrained_base(model_fields=TINY, cache_dir=tmp_path, steps=5, progress=False)
    assert report["steps"] == 5 and 0 <= report["in_context"] <= 1 and 0 <= report["closed_book"] <= 1
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and report["cache"] == str(entries[0])
    monkeypatch.setattr(base, "Trainer", None)  # loading must not train
    again, report_again = base.pretrained_base(model_fields=TINY, cache_dir=tmp_path, steps=5, progress=False)
    assert report["loaded"] is False and report_again["loaded"] is True
    assert {**report_again, "loaded": False} == report
    assert again.config == model.config and again.config.vocabulary == facts.VOCABULARY.identity
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert load_model(entries[0]).config == model.config


def test_a_cache_entry_of_another_config_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "HELD_OUT_SIZE", 64)
    _, first = base.pretrained_base(model_fields=TINY, cache_dir=tmp_path, steps=5, progress=False)
    _, other_steps = base.pretrained_base(model_fields=TINY, cache_dir=tmp_path, steps=6, progress=False)
    _, other_model = base.pretrained_base(model_fields={**TINY, "d_model": 32}, cache_dir=tmp_path, steps=5,
                                          progress=False)
    _, other_options = base.pretrained_base(facts.Options(questions=5), model_fields=TINY, cache_dir=tmp_path,
                                            steps=5, progress=False)
    caches = {first["cache"], other_steps["cache"], other_model["cache"], other_options["cache"]}
    assert len(caches) == 4


def test_the_cache_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSLEEP_CACHE_DIR", str(tmp_path))
    assert base.cache_root() == tmp_path / "bases"
    assert base.cache_root(tmp_path / "x") == tmp_path / "x"


def test_base_refuses_bad_arguments():
    with pytest.raises(ValueError, match="pool 1"):
        base.base_config(facts.Options(pool=2))
    with pytest.raises(TypeError, match="model_fields must be a dict"):
        base.base_config(model_fields=[("d_model", 8)])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        base.base_config(steps=0)
    with pytest.raises(ValueError, match="SleepConfig.d_model"):
        base.base_config(model_fields={"d_model": -1})
    assert base.base_config(model_fields={**TINY, "d_model": 32}).model["d_model"] == 32  # fields pass through


def test_options_round_trip_through_the_train_config():
    cfg = base.base_config()
    assert cfg.task == "facts" and cfg.task_options == asdict(base.OPTIONS) and cfg.min_lr_ratio == 1.0
    assert cfg.model_config().vocabulary == facts.VOCABULARY.identity
