"""The hybrid model's forward is the sleep algorithm: N = 1 is the plain hybrid, consolidation chunks run N
passes, only S (and sliding KV) crosses windows, gradients reach everything."""
import pytest
import torch

from lmsleep import SleepConfig, SleepLM

from helpers import random_tokens, tiny_model


def plain_hybrid_forward(model: SleepLM, tokens: torch.Tensor) -> torch.Tensor:
    """Independent restatement of a plain windowed hybrid: every block once per window, then evict."""
    retain = model.config.retained_tokens
    memory = [block.empty_memory() for block in model.blocks]
    outputs = []
    for start in range(0, tokens.shape[1], model.config.window):
        h = model.embed(tokens[:, start : start + model.config.window])
        for i, block in enumerate(model.blocks):
            h, memory[i] = block(h, memory[i])
        outputs.append(model.head(model.norm(h)))
        memory = [m.evict(retain) for m in memory]
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_one_pass_is_the_plain_hybrid(eviction):
    model = tiny_model(eviction=eviction, sleep_passes=1)
    tokens = random_tokens(model, 2, 25)
    with torch.no_grad():
        expected = plain_hybrid_forward(model, tokens)
        torch.testing.assert_close(model(tokens), expected)
        mask = torch.zeros_like(tokens)
        mask[:, -3:] = 1
        torch.testing.assert_close(model(tokens, loss_mask=mask), expected)


def test_evaluating_at_another_n_equals_a_model_trained_at_that_n():
    model1 = tiny_model(sleep_passes=1)
    model3 = tiny_model(sleep_passes=3)
    model3.load_state_dict(model1.state_dict())
    tokens = random_tokens(model1, 2, 22)
    with torch.no_grad():
        torch.testing.assert_close(model1(tokens, passes=3), model3(tokens))
        torch.testing.assert_close(model3(tokens, passes=1), model1(tokens))


def count_block_calls(model: SleepLM) -> list[int]:
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("passes", [1, 2, 4])
def test_consolidation_chunks_run_n_passes_and_prediction_chunks_one(passes):
    # Looped range = blocks 1..2 of AGAGA; 3 consolidation windows (mask zero) and 1 prediction window.
    model = tiny_model(layout="AGAGA", loop_start=1, loop_end=3, sleep_passes=passes)
    calls = count_block_calls(model)
    tokens = random_tokens(model, 1, 4 * 7)
    mask = torch.zeros_like(tokens)
    mask[:, 21:] = 1
    with torch.no_grad():
        model(tokens, loss_mask=mask)
    # before: once per window; looped: N per consolidation window + 1 for the prediction window;
    # after: wake (logits) + once more on the final features when N > 1, per consolidation window.
    after_runs = 3 * (2 if passes > 1 else 1) + 1
    assert calls == [4, 3 * passes + 1, 3 * passes + 1, after_runs, after_runs]


def test_outputs_and_state_change_with_n():
    model = tiny_model(sleep_passes=1)
    tokens = random_tokens(model, 2, 21)
    with torch.no_grad():
        by_n = [model(tokens, passes=n) for n in (1, 2, 3)]
        # The first window is predicted before any sleep: identical whatever N.
        for logits in by_n[1:]:
            torch.testing.assert_close(logits[:, :7], by_n[0][:, :7])
        # Later windows read a state written N times: they must differ.
        assert (by_n[1][:, 7:] - by_n[0][:, 7:]).abs().max() > 1e-4
        assert (by_n[2][:, 7:] - by_n[1][:, 7:]).abs().max() > 1e-4
        # The fast state after sleeping on one window differs from a single pass.
        memory = model.empty_memory()
        _, h1, woke = model.wake(tokens[:, :7], memory)
        slept = model.sleep(h1, woke, memory, passes=3)
        for i, kind in enumerate(model.config.layout):
            if kind == "G":
                assert (slept[i].state - woke[i].state).abs().max() > 1e-4


def test_only_fast_state_crosses_a_hard_window_boundary():
    attention_only = tiny_model(layout="AA", eviction="hard")
    hybrid = tiny_model(layout="AG", eviction="hard")
    tokens = random_tokens(hybrid, 1, 14)
    changed = tokens.clone()
    changed[:, 2] = (changed[:, 2] + 1) % hybrid.config.vocab_size  # a token of window 1
    with torch.no_grad():
        a, b = attention_only(tokens), attention_only(changed)
        torch.testing.assert_close(a[:, 7:], b[:, 7:])  # evicted: window 2 cannot see it
        h, g = hybrid(tokens), hybrid(changed)
        assert (h[:, 7:] - g[:, 7:]).abs().max() > 1e-6  # the fast state carries it


def test_sliding_window_sees_exactly_the_last_l_tokens():
    model = tiny_model(layout="AA", eviction="sliding")  # a sliding-window transformer, L = 7
    tokens = random_tokens(model, 1, 30)
    with torch.no_grad():
        base = model(tokens)
        for changed_pos in (3, 9, 15):
            changed = tokens.clone()
            changed[:, changed_pos] = (changed[:, changed_pos] + 1) % model.config.vocab_size
            delta = (model(changed) - base).abs().amax(dim=(0, 2))
            # Position p (through two attention layers) sees tokens p-12..p; layer 1 alone sees p-6..p.
            reach = changed_pos + 2 * (model.config.window - 1)
            assert delta[changed_pos:reach + 1].min() > 0
            assert delta[reach + 1:].max() == 0 and delta[:changed_pos].max() == 0


def test_full_attention_baseline_sees_everything():
    model = SleepLM(SleepConfig.full_attention(vocab_size=23, d_model=32, n_heads=2, head_dim=8, mlp_hidden=48, window=7)).double()
    assert model.config.layout == "AAAA" and model.config.eviction == "none"
    tokens = random_tokens(model, 1, 30)
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 23
    with torch.no_grad():
        assert ((model(changed) - model(tokens)).abs().amax(dim=(0, 2)) > 0).all()


@pytest.mark.parametrize("loop", [(0, None), (1, 3)], ids=["full_loop", "partial_loop"])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_gradient_reaches_every_parameter_through_all_passes(loop, eviction):
    model = tiny_model(layout="AGAG", loop_start=loop[0], loop_end=loop[1], sleep_passes=3, eviction=eviction).train()
    tokens = random_tokens(model, 2, 24)
    mask = torch.zeros_like(tokens)
    mask[:, 21:] = 1  # only the last (partial) window predicts: every gradient flows through sleep
    model.loss(tokens, tokens.roll(-1, 1), mask).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"no gradient reaches {name}"


def test_gradient_flows_through_the_extra_passes():
    """d loss / d window-1 embeddings must change with N: the passes are in the graph, not detached."""
    grads = []
    for passes in (1, 3):
        model = tiny_model(sleep_passes=passes).train()
        tokens = random_tokens(model, 1, 10)
        mask = torch.zeros_like(tokens)
        mask[:, 7:] = 1
        model.loss(tokens, tokens.roll(-1, 1), mask).backward()
        grads.append(model.embed.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max() > 1e-6


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for use_checkpoint in (False, True):
        model = tiny_model(sleep_passes=3, layout="GAGA", loop_start=1, loop_end=3).train()
        tokens = random_tokens(model, 2, 23)
        mask = torch.zeros_like(tokens)
        mask[:, 14:] = 1
        loss = model.loss(tokens, tokens.roll(-1, 1), mask, use_checkpoint=use_checkpoint)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], msg=name)


def test_loss_only_counts_answer_positions():
    model = tiny_model(sleep_passes=2)
    tokens = random_tokens(model, 2, 16)
    targets = tokens.roll(-1, 1)
    mask = torch.zeros_like(tokens)
    mask[:, 15] = 1
    with torch.no_grad():
        logits = model(tokens, loss_mask=mask)
        expected = torch.nn.functional.cross_entropy(logits[:, 15], targets[:, 15])
        torch.testing.assert_close(model.loss(tokens, targets, mask), expected)
        other = targets.clone()
        other[:, :15] = (other[:, :15] + 1) % model.config.vocab_size  # unmasked targets do not matter
        torch.testing.assert_close(model.loss(tokens, other, mask), expected)
