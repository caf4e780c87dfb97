"""The real-text task's prompts and scoring on a tiny chat model (no download)."""
import pytest
import torch

pytest.importorskip("transformers")

from hf_tiny import chat_tokenizer, llama  # noqa: E402

from lmsleep.continual import squad_qa  # noqa: E402
from lmsleep.tasks.squad import Passage, Question  # noqa: E402

PASSAGE = Passage("T", "Ada was born in Paris.", (Question("Where was Ada born?", "Paris"),
                                                  Question("Who was born in Paris?", "Ada")))


def test_the_layout_cuts_the_restate_turn_after_the_passage():
    tokenizer = chat_tokenizer()
    context, prompt = squad_qa.layout(tokenizer, PASSAGE)
    assert tokenizer.decode(context[0]) == "<user>Ada was born in Paris."
    assert tokenizer.decode(prompt[0]).startswith("\n\nList the facts") and tokenizer.decode(prompt[0]).endswith("<bot>")
    full = squad_qa.chat_ids(tokenizer, squad_qa.RESTATE.format(context=PASSAGE.context))
    assert torch.cat([context, prompt], dim=1)[0].tolist() == full


def test_answers_are_greedy_replies_to_left_padded_questions():
    torch.manual_seed(0)
    model, tokenizer = llama(), chat_tokenizer()
    questions = [q.question for q in PASSAGE.questions] + ["Why?"]
    together = squad_qa.answers(model, tokenizer, questions, PASSAGE.context, max_new_tokens=5)
    alone = [squad_qa.answers(model, tokenizer, [q], PASSAGE.context, max_new_tokens=5)[0] for q in questions]
    assert together == alone  # padding changes no reply
    assert squad_qa.answers(model, tokenizer, questions[:1], None, max_new_tokens=5) != [] and not model.training


def test_score_in_percent():
    got = squad_qa.score(["the Paris.", "Ada Lovelace was born there", "no"], ["Paris", "Ada Lovelace", "yes"])
    assert got["em"] == pytest.approx(100 / 3) and got["contains"] == pytest.approx(200 / 3)
    assert got["f1"] == pytest.approx(100 * (1 + 2 * (2 / 5) / (2 / 5 + 1)) / 3)  # P = 2/5, R = 1
    with pytest.raises(ValueError, match="one reply per reference"):
        squad_qa.score(["a"], [])
