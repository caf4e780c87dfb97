"""What every task generator returns, and the helpers a training loop uses on it.

An `Example` is a next-token-prediction sequence of T positions. Per-position lists (all length T):

    tokens     the model input
    targets    the token to predict at each position (the next token of the full sequence)
    loss_mask  1 where the target is an answer token, 0 elsewhere
    bucket     the answer's difficulty (rule110: t, depo: k, math: ops) where loss_mask is 1, -1 elsewhere
    answer_id  which answer (0, 1, ...) the target belongs to where it is scored, -1 elsewhere (-2 where
               the target is trained on but not scored: `Trained` text such as a question to be written);
               an answer may span several tokens (e.g. a two-letter depo node name)

All examples generated from one options set have the same T and the same number of answers, so they
stack into a batch without padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

from .vocab import CHARACTERS, Vocabulary

NOT_AN_ANSWER = -1
TRAINED_ONLY = -2  # answer_id of text with loss that is not scored (`Trained`)

# Generating examples needs no torch; the tensor helpers below import it when called, so that
# `lmsleep data` starts at once.
if TYPE_CHECKING:
    import torch


class Answer(NamedTuple):
    """A piece of a sequence that the model is scored on, with its difficulty bucket."""

    text: str
    bucket: int


class Trained(NamedTuple):
    """A piece of a sequence with loss that is not scored (e.g. a question, so that a model learns to ask)."""

    text: str


@dataclass(frozen=True)
class Example:
    tokens: list[int]
    targets: list[int]
    loss_mask: list[int]
    bucket: list[int]
    answer_id: list[int]
    raw: dict  # JSON-serialisable structure the example was built from; the task's solve() reads it
    input_text: str  # the vocabulary's decode(tokens)
    target_text: str  # the answers in order, separated by spaces

    def __len__(self) -> int:
        return len(self.tokens)


def make_example(pieces: Sequence[str | Answer | Trained], raw: dict, vocabulary: Vocabulary = CHARACTERS) -> Example:
    """Concatenate text pieces, each encoded with `vocabulary`, into one sequence; the `Answer` pieces
    become the loss positions that are scored, `Trained` pieces loss positions that are not.

    Position i reads sequence[i] and predicts sequence[i + 1], so an answer token at sequence position j
    is scored at position j - 1 (e.g. the SEP before a label predicts the label).
    """
    sequence, bucket, answer_id, answers = [], [], [], []
    for piece in pieces:
        if isinstance(piece, Answer):
            ids = vocabulary.encode(piece.text)
            bucket += [piece.bucket] * len(ids)
            answer_id += [len(answers)] * len(ids)
            answers.append(piece.text)
        elif isinstance(piece, Trained):
            ids = vocabulary.encode(piece.text)
            bucket += [NOT_AN_ANSWER] * len(ids)
            answer_id += [TRAINED_ONLY] * len(ids)
        else:
            ids = vocabulary.encode(piece)
            bucket += [NOT_AN_ANSWER] * len(ids)
            answer_id += [NOT_AN_ANSWER] * len(ids)
        sequence += ids
    assert answer_id[0] < 0, "a sequence cannot start with an answer: nothing predicts it"
    tokens = sequence[:-1]
    return Example(
        tokens=tokens,
        targets=sequence[1:],
        loss_mask=[int(a != NOT_AN_ANSWER) for a in answer_id[1:]],
        bucket=bucket[1:],
        answer_id=answer_id[1:],
        raw=raw,
        input_text=vocabulary.decode(tokens),
        target_text=" ".join(answers),
    )


def masked_targets(example: Example) -> list[int]:
    """The answer tokens of an example, in order (the targets where loss_mask is 1)."""
    return [target for target, scored in zip(example.targets, example.loss_mask) if scored]


def batch(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Stack examples into LongTensors tokens, targets, loss_mask, bucket, answer_id, each [n, T]."""
    lengths = sorted({len(example) for example in examples})
    if len(lengths) != 1:
        raise ValueError(f"examples must all have the same length to be batched, got lengths {lengths}")
    import torch

    keys = ("tokens", "targets", "loss_mask", "bucket", "answer_id")
    return {key: torch.tensor([getattr(example, key) for example in examples], dtype=torch.long) for key in keys}


def score(predicted: torch.Tensor, batched: dict[str, torch.Tensor]) -> dict:
    """Answer accuracies of the predicted next tokens `predicted` [n, T] (e.g. logits.argmax(-1)) on the
    tensors `batched` from batch().

    An answer is right when all of its tokens are. Returns
      exact:       fraction of examples whose answers are all right (rule110's "exact accuracy")
      answer:      fraction of all answers that are right
      per_answer:  [n_answers] accuracy of the i-th answer (rule110's per-label accuracy)
      per_bucket:  {bucket: accuracy of the answers in that bucket} (per t, per k, per op count)
    """
    import torch

    token_right = (predicted == batched["targets"]) | (batched["loss_mask"] == 0)  # [n, T]
    n_answers = int(batched["answer_id"].max()) + 1
    right, bucket = [], []  # per answer: [n]
    for answer in range(n_answers):
        mine = batched["answer_id"] == answer
        right.append((token_right | ~mine).all(dim=1))
        bucket.append(torch.where(mine, batched["bucket"], NOT_AN_ANSWER).amax(dim=1))
    right, bucket = torch.stack(right, dim=1).float(), torch.stack(bucket, dim=1)  # [n, n_answers]
    return {
        "exact": right.min(dim=1).values.mean().item(),
        "answer": right.mean().item(),
        "per_answer": right.mean(dim=0).tolist(),
        "per_bucket": {int(b): right[bucket == b].mean().item() for b in bucket.unique().tolist()},
    }


def answer_accuracy(model, batched: dict[str, torch.Tensor]) -> float:
    """The one evaluator of answers: the fraction of answers in `batched` (batch()'s tensors) that `model`
    predicts right, greedy and teacher-forced, in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return score(model(batched["tokens"]).argmax(-1), batched)["answer"]
    finally:
        model.train(was_training)
