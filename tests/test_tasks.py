"""Task generators vs their independent reference solvers, determinism, layout, the `lmsleep data` CLI."""
import json

import pytest
import torch

from lmsleep import cli
from lmsleep.tasks import TASKS, batch, decode, depo, encode, masked_targets, rule110, score, symbolic_math
from lmsleep.tasks.vocab import CHARS, PAD_ID, SEP_ID, VOCAB_SIZE

CASES = [  # (task, options)
    ("rule110", rule110.Options()),
    ("rule110", rule110.Options(strings=3, bits=11, t_min=1, t_max=9)),
    ("rule110", rule110.PAPER),
    ("depo", depo.Options()),
    ("depo", depo.Options(nodes_min=5, nodes_max=20, window=7, queries=3, k_min=2, k_max=4)),
    ("depo", depo.PAPER),
    ("math", symbolic_math.Options()),
    ("math", symbolic_math.Options(ops_min=5, ops_max=5, distractors=0, modulus=5, window=16)),
    ("math", symbolic_math.Options(ops_min=1, ops_max=12, distractors=14, modulus=2, window=50)),
]
IDS = ["rule110-default", "rule110-t1to9", "rule110-paper", "depo-default", "depo-ranges", "depo-paper",
       "math-default", "math-5ops-nodistractor", "math-26vars-mod2"]


def answer_count(options) -> int:
    """Answers per example: one label per string, one node per query, one value."""
    if isinstance(options, rule110.Options):
        return options.strings
    if isinstance(options, depo.Options):
        return options.queries
    return 1


def tokens_per_answer(options) -> int:
    return options.name_length if isinstance(options, depo.Options) else 1


@pytest.mark.parametrize("seed", [0, 1, 12345], ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("task,options", CASES, ids=IDS)
def test_solver_matches_the_targets_at_the_loss_positions(task, options, seed):
    module = TASKS[task]
    for example in module.generate(options, 20, seed):
        answers = module.solve(json.loads(json.dumps(example.raw)))  # the solver sees only the JSON raw
        assert encode("".join(answers)) == masked_targets(example)
        assert example.target_text == " ".join(answers)


@pytest.mark.parametrize("task,options", CASES, ids=IDS)
def test_layout_is_fixed_and_self_consistent(task, options):
    examples = TASKS[task].generate(options, 30, seed=3)
    assert len({len(example) for example in examples}) == 1
    for example in examples:
        T = len(example)
        assert len(example.targets) == len(example.loss_mask) == len(example.bucket) == len(example.answer_id) == T
        assert example.tokens[1:] == example.targets[:-1]  # targets are the next tokens
        assert example.input_text == decode(example.tokens)
        assert all(0 <= token < VOCAB_SIZE for token in example.tokens + example.targets)
        scored = [i for i in range(T) if example.loss_mask[i]]
        assert all(example.bucket[i] >= 1 and example.answer_id[i] >= 0 for i in scored)
        assert all(example.bucket[i] == -1 and example.answer_id[i] == -1 for i in range(T) if i not in scored)
        assert sorted(set(example.answer_id) - {-1}) == list(range(answer_count(options)))
        assert sum(example.loss_mask) == answer_count(options) * tokens_per_answer(options)
    batched = batch(examples)
    assert set(batched) == {"tokens", "targets", "loss_mask", "bucket", "answer_id"}
    assert all(tensor.shape == (30, len(examples[0])) and tensor.dtype == torch.long for tensor in batched.values())


@pytest.mark.parametrize("task,options", CASES, ids=IDS)
def test_same_seed_same_examples_other_seed_other_examples(task, options):
    generate = TASKS[task].generate
    assert generate(options, 8, seed=7) == generate(options, 8, seed=7)
    assert generate(options, 8, seed=7)[:3] == generate(options, 3, seed=7)
    assert generate(options, 8, seed=7) != generate(options, 8, seed=8)


def test_the_vocabulary_is_small_and_round_trips():
    assert VOCAB_SIZE == len(CHARS) == len(set(CHARS)) < 64
    assert (PAD_ID, SEP_ID) == (0, 1)
    text = "_|0123456789>,:;?=+-*abcxyz"
    assert decode(encode(text)) == text
    with pytest.raises(ValueError, match="'A' is not in the task vocabulary"):
        encode("A")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 46\]"):
        decode([VOCAB_SIZE])


# Rule 110

def test_rule110_table_by_hand():
    # Wolfram's rule 110: 111->0 110->1 101->1 100->0 011->1 010->1 001->1 000->0; on a periodic row of
    # three cells the middle cell's neighbourhood is the row itself.
    by_hand = {"111": "0", "110": "1", "101": "1", "100": "0", "011": "1", "010": "1", "001": "1", "000": "0"}
    for neighbourhood, next_state in by_hand.items():
        assert rule110.evolve(neighbourhood, 1)[1] == next_state


def test_rule110_two_steps_by_hand():
    # 10010 (periodic): neighbourhoods 010 100 001 010 101 -> 10111; then 110 101 011 111 111 -> 11100
    assert rule110.evolve("10010", 1) == "10111"
    assert rule110.evolve("10010", 2) == "11100"
    assert rule110.solve({"strings": ["10010", "00000"], "t": 2}) == ["1", "0"]


def test_rule110_layout_one_window_per_string_then_sep_and_labels():
    options = rule110.Options(strings=4, bits=8, t_min=2, t_max=5)
    for example in rule110.generate(options, 10, seed=0):
        L, n = options.window, options.strings
        assert len(example) == n * L + n
        assert example.input_text[: n * L] == "".join(example.raw["strings"])
        assert example.tokens[n * L] == SEP_ID
        assert example.loss_mask == [0] * (n * L) + [1] * n  # SEP predicts label 1, label i predicts i + 1
        assert example.answer_id[n * L:] == list(range(n))
        assert set(example.bucket[n * L:]) == {example.raw["t"]}


def test_score_gives_exact_per_label_and_per_bucket_accuracy():
    examples = rule110.generate(rule110.Options(strings=4, bits=8, t_min=1, t_max=2), 16, seed=0)
    batched = batch(examples)
    perfect = score(batched["targets"], batched)
    assert perfect["exact"] == perfect["answer"] == 1.0 and perfect["per_answer"] == [1.0] * 4
    assert set(perfect["per_bucket"]) == {1, 2}
    predicted = batched["targets"].clone()
    label_2 = batched["answer_id"] == 1
    zero, one = encode("01")
    predicted[label_2] = zero + one - predicted[label_2]  # flip label 2 of every example
    wrong_label_2 = score(predicted, batched)
    assert wrong_label_2["exact"] == 0.0 and wrong_label_2["answer"] == 0.75
    assert wrong_label_2["per_answer"] == [1.0, 0.0, 1.0, 1.0]


# Depo

def test_depo_default_graph_spans_three_windows_and_queries_start_on_a_boundary():
    options = depo.Options()
    assert options.graph_length >= 3 * options.window and options.graph_length % options.window == 0
    for example in depo.generate(options, 5, seed=0):
        graph, queries = example.input_text[: options.graph_length], example.input_text[options.graph_length:]
        assert graph.strip("_").count(",") == len(example.raw["edges"]) == 12
        assert queries[0].isdigit()  # the first query's k
        assert sum(example.loss_mask) == options.queries
        assert sum(example.loss_mask[: options.graph_length]) == 0


def test_depo_edges_form_one_cycle_and_bucket_is_k():
    options = depo.Options(nodes_min=6, nodes_max=9, window=8, queries=10, k_min=1, k_max=5)
    for example in depo.generate(options, 20, seed=4):
        successor = dict(example.raw["edges"])
        node, seen = example.raw["edges"][0][0], set()
        while node not in seen:
            seen.add(node)
            node = successor[node]
        assert len(seen) == len(successor) == len(example.raw["edges"])
        scored = [i for i, m in enumerate(example.loss_mask) if m]
        assert [example.bucket[i] for i in scored] == [query["k"] for query in example.raw["queries"]]
        assert all(example.input_text[i] == ":" for i in scored)


def test_depo_two_letter_names_give_two_token_answers():
    options = depo.Options(nodes_min=30, nodes_max=40, window=50, queries=4, k_max=16)
    assert options.name_length == 2
    for example in depo.generate(options, 5, seed=0):
        assert sum(example.loss_mask) == 2 * options.queries
        assert [a for a in example.answer_id if a >= 0] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert example.input_text[options.graph_length:][:2] == "%02d" % example.raw["queries"][0]["k"]


# Math

@pytest.mark.parametrize("ops", [1, 2, 4, 8], ids=lambda o: f"ops{o}")
def test_math_difficulty_is_the_op_count_of_the_dependency_path(ops):
    options = symbolic_math.Options(ops_min=ops, ops_max=ops, distractors=6)
    for example in symbolic_math.generate(options, 25, seed=ops):
        raw = example.raw
        (question,) = raw["questions"]
        assert len(symbolic_math.dependency_path(raw, question["query"])) == question["ops"] == ops
        assert len(raw["definitions"]) == options.definitions
        assert [example.bucket[i] for i, m in enumerate(example.loss_mask) if m] == [ops]


def test_math_question_first_then_context_then_sep_and_answer():
    options = symbolic_math.Options()
    for example in symbolic_math.generate(options, 10, seed=2):
        text = example.input_text.lstrip("_")
        assert text.startswith("?" + example.raw["questions"][0]["query"] + ";")
        assert example.tokens[-1] == SEP_ID and (len(example) - 1) % options.window == 0
        assert example.loss_mask == [0] * (len(example) - 1) + [1]
        assert 0 <= example.raw["questions"][0]["answer"] < options.modulus


def test_math_several_questions_each_have_their_own_path_answer_and_bucket():
    options = symbolic_math.Options(ops_min=1, ops_max=4, distractors=3, modulus=5, window=16, questions=4)
    assert options.definitions == 19
    for example in symbolic_math.generate(options, 40, seed=7):
        raw, questions = example.raw, example.raw["questions"]
        paths = [symbolic_math.dependency_path(raw, q["query"]) for q in questions]
        assert [len(p) for p in paths] == [q["ops"] for q in questions]
        assert sum(len(p) for p in paths) == len(set().union(*paths))  # no variable on two paths
        assert len(raw["definitions"]) == 19
        assert example.input_text.lstrip("_").startswith("".join(f"?{q['query']};" for q in questions))
        # the answers, in question order, each after a SEP and scored with its own op count
        # input tokens: the last answer is only a target
        assert len(example) == -(-(3 * 4 + 6 * 19) // 16) * 16 + 2 * 4 - 1
        assert decode(example.tokens[-7::2]) == "||||"
        assert example.target_text == " ".join(str(q["answer"]) for q in questions)
        assert [example.bucket[i] for i, m in enumerate(example.loss_mask) if m] == [q["ops"] for q in questions]
        assert [a for a in example.answer_id if a >= 0] == [0, 1, 2, 3]


def test_math_one_question_is_the_original_layout():
    one = symbolic_math.generate(symbolic_math.Options(), 3, seed=1)
    assert all(e.loss_mask == [0] * (len(e) - 1) + [1] for e in one)


def test_math_ops_range_covers_all_buckets():
    examples = symbolic_math.generate(symbolic_math.Options(ops_min=1, ops_max=8), 200, seed=0)
    assert {example.raw["questions"][0]["ops"] for example in examples} == set(range(1, 9))


# Bad options

BAD = [  # (options class, kwargs, message)
    (rule110.Options, {"t_min": 0}, r"rule110\.Options\.t_min must be an integer in \[1, 4096\], got 0"),
    (rule110.Options, {"t_min": 5, "t_max": 4}, r"rule110\.Options\.t_max must be an integer in \[5, 4096\]"),
    (rule110.Options, {"bits": "8"}, r"rule110\.Options\.bits must be an integer"),
    (depo.Options, {"nodes_max": 700}, r"depo\.Options\.nodes_max must be an integer in \[12, 676\]"),
    (depo.Options, {"k_max": 12}, r"depo\.Options\.k_max must be an integer in \[1, 11\]"),
    (depo.Options, {"queries": 0}, r"depo\.Options\.queries must be an integer >= 1"),
    (symbolic_math.Options, {"modulus": 11}, r"math\.Options\.modulus must be one of \(2, 3, 5, 7\)"),
    (symbolic_math.Options, {"ops_max": 20, "distractors": 7}, r"math\.Options\.distractors .* \[0, 6\]"),
    (symbolic_math.Options, {"ops_min": True}, r"math\.Options\.ops_min must be an integer"),
]


@pytest.mark.parametrize("options_class,kwargs,message", BAD, ids=[
    "rule110-t0", "rule110-tmin>tmax", "rule110-bits-str", "depo-too-many-nodes", "depo-k>=n", "depo-no-queries",
    "math-modulus", "math-too-many-vars", "math-bool",
])
def test_bad_options_raise_a_clear_error(options_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        options_class(**kwargs)


def test_batch_refuses_examples_of_different_lengths():
    short = rule110.generate(rule110.Options(bits=5), 1, seed=0)
    long = rule110.generate(rule110.Options(bits=6), 1, seed=0)
    with pytest.raises(ValueError, match="same length"):
        batch(short + long)


# CLI

@pytest.mark.parametrize("argv", [
    ["rule110", "--t", "4", "--bits", "6", "--strings", "3"],
    ["depo", "--nodes", "9", "--queries", "3", "--k-max", "5", "--window", "12"],
    ["math", "--ops", "3", "--distractors", "2"],
], ids=["rule110", "depo", "math"])
def test_cli_prints_json_lines(capsys, argv):
    assert cli.main(["data", *argv, "--n", "3", "--seed", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    module = TASKS[argv[0]]
    for line in lines:
        record = json.loads(line)
        assert record["task"] == argv[0]
        assert {"input_text", "target_text", "tokens", "raw"} <= set(record)
        assert decode(record["tokens"]) == record["input_text"]
        assert " ".join(module.solve(record["raw"])) == record["target_text"]
    first = json.loads(lines[0])
    if argv[0] == "rule110":
        assert first["raw"]["t"] == 4 and len(first["raw"]["strings"]) == 3
    if argv[0] == "math":
        assert [q["ops"] for q in first["raw"]["questions"]] == [3]


@pytest.mark.parametrize("argv,message", [
    (["depo", "--k-max", "20"], "depo.Options.k_max must be an integer in [1, 11] (from k_min to nodes_min − 1), got 20"),
    (["math", "--modulus", "4"], "math.Options.modulus must be one of (2, 3, 5, 7), got 4"),
    (["rule110", "--n", "-1"], "generate.n must be an integer >= 0, got -1"),
], ids=["depo-k", "math-modulus", "negative-n"])
def test_cli_bad_options_exit_2_with_the_message(capsys, argv, message):
    assert cli.main(["data", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["rule110", "--nodes", "5"], ["chess"], ["depo", "--k", "x"]],
                         ids=["flag-of-another-task", "unknown-task", "not-an-int"])
def test_cli_unknown_flags_are_argparse_errors(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", *argv])
    assert exit_info.value.code == 2


def test_math_answers_are_uniform_at_every_op_count():
    """Without care, products with a zero make 0 the likeliest answer: a prior learnable without reasoning."""
    options = symbolic_math.Options(ops_min=1, ops_max=8, modulus=7)
    examples = symbolic_math.generate(options, 2800, seed=3)
    counts = {}
    for example in examples:
        (question,) = example.raw["questions"]
        assert symbolic_math.solve(example.raw) == [str(question["answer"])]
        counts[question["answer"]] = counts.get(question["answer"], 0) + 1
    assert sorted(counts) == list(range(7))
    assert max(counts.values()) < 1.2 * 400 and min(counts.values()) > 0.8 * 400
