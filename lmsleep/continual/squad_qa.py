"""Knowledge incorporation on real text (issue 20): a chat model reads a SQuAD passage, sleeps or is fine-tuned,
and answers the passage's questions without it, scored with SQuAD's exact match and token F1.

The wording of every prompt lives here (one owner), each as a user turn of the model's chat template:

    READ      the passage, then the question: the in-context reader (the ceiling of what can be learnt)
    CLOSED    the question alone: closed-book, before and after learning
    RESTATE   the passage, then "list its facts": what the learner's teacher reads and continues (its context
              is the turn up to the passage's end, its prompt the rest), and what fine-tuning on the model's
              own restatements samples (SEAL-style)

`layout(tokenizer, passage)` splits the RESTATE turn into (context, prompt) token ids for the learner;
`answers` asks a batch of questions greedily (left-padded, transformers' generate); `score` gives EM and F1
in percent, and the share of replies that contain the reference (a chat model's replies are sentences).
"""
from __future__ import annotations

import torch

from ..tasks import squad

READ = "{context}\n\nAnswer from the passage above in a few words.\nQuestion: {question}"
CLOSED = "Answer in a few words.\nQuestion: {question}"
RESTATE = "{context}\n\nList the facts stated in the passage above, one per line."
MAX_ANSWER_TOKENS = 24


def chat_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as one user turn, followed by the assistant's turn opening."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    return list(ids)


def layout(tokenizer, passage: squad.Passage) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [1, c], prompt [1, p]): the RESTATE turn cut right after the passage, so that the teacher
    reads context + prompt and the student, without the context, reads the instruction alone."""
    full = chat_ids(tokenizer, RESTATE.format(context=passage.context))
    marker = chat_ids(tokenizer, RESTATE.format(context="\u0000"))
    head = next(i for i, (a, b) in enumerate(zip(full, marker)) if a != b)  # where the passage starts
    tail = next(i for i, (a, b) in enumerate(zip(reversed(full), reversed(marker))) if a != b)  # after it
    cut = len(full) - tail
    if not 0 < head < cut < len(full):
        raise ValueError("the chat template does not keep the passage as one span of tokens")
    return torch.tensor([full[:cut]]), torch.tensor([full[cut:]])


@torch.no_grad()
def answers(model, tokenizer, questions: list[str], passage: str | None = None, *, batch_size: int = 8,
            max_new_tokens: int = MAX_ANSWER_TOKENS) -> list[str]:
    """Greedy replies of `model` (a transformers causal LM) to `questions`, with `passage` in the prompt
    (READ) or without it (CLOSED)."""
    texts = [READ.format(context=passage, question=q) if passage is not None else CLOSED.format(question=q)
             for q in questions]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            rows = [chat_ids(tokenizer, text) for text in texts[start:start + batch_size]]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)
            replies += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    finally:
        model.train(was_training)
    return replies


def score(replies: list[str], references: list[str]) -> dict:
    """{"em", "f1", "contains"} in percent over the questions (SQuAD's normalisation)."""
    if len(replies) != len(references) or not replies:
        raise ValueError(f"score needs one reply per reference, got {len(replies)} and {len(references)}")
    n = len(replies)
    return {"em": 100 * sum(map(squad.exact_match, replies, references)) / n,
            "f1": 100 * sum(map(squad.f1, replies, references)) / n,
            "contains": 100 * sum(squad.normalize(r) in squad.normalize(p) for p, r in zip(replies, references)) / n}


def evaluate(model, tokenizer, passage: squad.Passage, *, in_context: bool, questions: int | None = None) -> dict:
    """The passage's (first `questions`) questions answered with or without it: score and every reply."""
    asked = passage.questions[:questions]
    replies = answers(model, tokenizer, [q.question for q in asked], passage.context if in_context else None)
    return {**score(replies, [q.answer for q in asked]), "replies": replies}
