"""lmsleep.continual.rewards: r_abs, judges and the mixed reward on hand-computed examples, and the
REINFORCE gradient with the group-mean baseline against the hand-derived one."""
import numpy as np
import pytest
import torch

from lmsleep.continual.rewards import (ExactJudge, group_advantages, r_abs, reinforce_loss, reward, task_judge,
                                       token_ids, trim)

# (completion, reference, z0, r_abs) worked out by hand: lev is the fewest single-token edits.
HAND = [
    ([1, 2, 3], [1, 2, 4], 1, 2 / 3),          # one substitution, max length 3
    ([1, 2, 3], [1, 2, 4], 0, 0.0),            # ... over the threshold
    ([1, 2, 3], [1, 2, 4], None, 2 / 3),       # z0 = 3 / 2: lev 1 passes
    ([1, 2, 3], [1, 2, 3], 0, 1.0),            # identical
    ([], [], 0, 1.0),                          # empty vs empty
    ([], [], None, 1.0),
    ([1, 2, 3], [], 5, 0.0),                   # three deletions, max length 3: 1 - 3/3
    ([], [7, 8], 2, 0.0),
    ([1, 2, 3, 4], [2, 3, 4, 5], None, 0.5),   # delete 1, insert 5: lev 2 <= 4/2, max length 4
    ([1, 2, 3, 4], [2, 3, 4, 5], 1.9, 0.0),    # lev 2 > 1.9
    ([1, 2, 3, 4, 5, 6], [1, 2, 3], 3, 0.5),   # three insertions, max length 6
    ([1, 2, 3, 4, 5, 6], [1, 2, 3], None, 0.0),  # z0 = half the REFERENCE's length = 1.5 < 3
    ([1, 2, 3], [1, 2, 3, 4, 5, 6], None, 0.5),  # z0 = 3: lev 3 passes
    ([1, 2], [2, 1], 2, 0.0),                  # a transposition is two edits (Levenshtein, not Damerau)
    ([5, 1, 2, 3, 4], [1, 2, 3, 4], 1, 0.8),   # one insertion at the front, max length 5
    ([9, 2, 9, 4, 9], [1, 2, 3, 4, 5], 3, 0.4),  # three substitutions
    ([100000, 2], [100000, 3], 1, 0.5),        # large token ids are tokens like any other
]


@pytest.mark.parametrize("completion,reference,z0,want", HAND)
def test_r_abs_on_hand_computed_examples(completion, reference, z0, want):
    assert r_abs(completion, reference, z0) == pytest.approx(want, abs=1e-12)


def test_r_abs_takes_tuples_tensors_and_numpy_ids():
    want = r_abs([1, 2, 3], [1, 2, 4], 1)
    assert r_abs((1, 2, 3), torch.tensor([1, 2, 4]), 1) == want
    assert r_abs(torch.tensor([1, 2, 3], dtype=torch.int32), [np.int64(1), np.int64(2), np.int64(4)], 1) == want
    assert r_abs([1, 2, 3], [1, 2, 4], 1.0) == want


def test_trim_cuts_at_the_first_stop_and_strips_pads():
    assert trim([0, 0, 5, 6, 0, 7, 9, 8, 8], stop_ids=[9], pad_ids=[0]) == [5, 6, 0, 7]
    assert trim([9, 5], stop_ids=[9]) == []
    assert trim([5, 6], stop_ids=[9], pad_ids=[0]) == [5, 6]
    assert trim(torch.tensor([0, 0]), pad_ids=[0]) == []


# ----- judges -----

def test_exact_judge():
    judge = ExactJudge()
    assert judge([1, 2, 3], [1, 2, 3]) is True
    assert judge([1, 2, 3], [1, 2, 4]) is False
    assert judge([1, 2, 3, 0], [1, 2, 3]) is False  # no pad ids given: a trailing 0 is a token
    stripping = ExactJudge(stop_ids=[9], pad_ids=[0])
    assert stripping.stop_ids == (9,) and stripping.pad_ids == (0,)
    assert stripping([1, 2, 3, 9, 4, 4], [1, 2, 3, 0, 0]) is True
    assert stripping([1, 2, 3, 9], [1, 2]) is False


def test_task_judge_uses_the_checker_on_ids_or_on_decoded_text():
    same_last = task_judge(lambda completion, reference: completion[-1:] == reference[-1:])
    assert same_last([1, 2, 3], [7, 3]) is True
    assert same_last([1, 2, 3], [7, 4]) is False
    letters = "abcdefgh"
    decode = lambda ids: "".join(letters[i] for i in ids)  # noqa: E731
    same_answer = task_judge(lambda c, r: c.split("=")[-1] == r.split("=")[-1] if "=" in c else False,
                             decode=lambda ids: decode(ids).replace("h", "="))
    assert same_answer([0, 7, 2], [1, 7, 2]) is True     # "a=c" vs "b=c": the answer c is the same
    assert same_answer([0, 7, 3], [1, 7, 2]) is False
    assert same_answer([0, 1, 2], [1, 7, 2]) is False    # no answer written
    assert "task_judge" in same_last.__name__


@pytest.mark.parametrize("bad", [None, 3, "exact", [1, 2]], ids=["None", "int", "str", "list"])
def test_a_judge_that_is_not_callable_is_a_type_error(bad):
    with pytest.raises(TypeError, match="judge must be callable"):
        reward([1], [1], judge=bad)
    with pytest.raises(TypeError, match="checker must be callable"):
        task_judge(bad)
    if bad is not None:  # decode=None means the checker reads token ids
        with pytest.raises(TypeError, match="decode must be callable"):
            task_judge(lambda c, r: True, decode=bad)


@pytest.mark.parametrize("verdict", [1, 0.5, None, "yes"], ids=["int", "float", "None", "str"])
def test_a_judge_that_does_not_return_a_bool_is_refused(verdict):
    with pytest.raises(TypeError, match="judge must return a bool"):
        reward([1], [1], judge=lambda c, r: verdict)


def test_a_judge_cannot_alter_what_r_abs_sees():
    def greedy_judge(completion, reference):
        completion[:] = reference
        return False
    completion = [1, 2, 3]
    assert reward(completion, [1, 2, 4], z0=1, judge=greedy_judge) == pytest.approx(0.5 * 2 / 3)
    assert completion == [1, 2, 3]


# ----- the mixed reward -----

@pytest.mark.parametrize("gamma,judge,want", [
    (0.5, ExactJudge(), 0.5 * 0 + 0.5 * 2 / 3),
    (0.0, ExactJudge(), 2 / 3),
    (1.0, ExactJudge(), 0.0),
    (0.25, lambda c, r: True, 0.25 * 1 + 0.75 * 2 / 3),
    (1.0, lambda c, r: True, 1.0),
    (0.5, lambda c, r: np.bool_(True), 0.5 + 0.5 * 2 / 3),
], ids=["default", "gamma0", "gamma1-exact", "gamma.25-agrees", "gamma1-agrees", "numpy-bool"])
def test_reward_mixes_judge_and_edit_distance(gamma, judge, want):
    assert reward([1, 2, 3], [1, 2, 4], gamma=gamma, z0=1, judge=judge) == pytest.approx(want, abs=1e-12)


def test_reward_defaults():
    assert reward([1, 2, 3], [1, 2, 3]) == 1.0                           # exact: 0.5 * 1 + 0.5 * 1
    assert reward([1, 2, 3], [1, 2, 4]) == pytest.approx(1 / 3)          # z0 = 1.5, exact judge says no
    assert reward([1, 2, 3, 4, 5, 6], [1, 2, 3]) == 0.0                  # lev 3 > 1.5
    assert reward([1, 2, 3, 9, 5], [1, 2, 3], judge=ExactJudge(stop_ids=[9])) == pytest.approx(0.5)


@pytest.mark.parametrize("call,error,field", [
    (lambda: r_abs([1], [1], -1), ValueError, "z0"),
    (lambda: r_abs([1], [1], -0.5), ValueError, "z0"),
    (lambda: r_abs([1], [1], float("nan")), ValueError, "z0"),
    (lambda: r_abs([1], [1], "1"), TypeError, "z0"),
    (lambda: reward([1], [1], z0=-2), ValueError, "z0"),
    (lambda: reward([1], [1], gamma=1.5), ValueError, "gamma"),
    (lambda: reward([1], [1], gamma=-0.1), ValueError, "gamma"),
    (lambda: reward([1], [1], gamma="0.5"), TypeError, "gamma"),
    (lambda: r_abs("abc", [1], 1), TypeError, "completion_ids"),
    (lambda: r_abs([1], "abc", 1), TypeError, "reference_ids"),
    (lambda: r_abs([1.0, 2.0], [1], 1), TypeError, "completion_ids"),
    (lambda: r_abs([True], [1], 1), TypeError, "completion_ids"),
    (lambda: r_abs(torch.tensor([[1, 2]]), [1], 1), TypeError, "completion_ids"),
    (lambda: r_abs(torch.tensor([1.0, 2.0]), [1], 1), TypeError, "completion_ids"),
    (lambda: ExactJudge(stop_ids=["x"]), TypeError, "ExactJudge.stop_ids"),
])
def test_bad_reward_inputs_are_refused_by_name(call, error, field):
    with pytest.raises(error, match=field):
        call()


def test_token_ids_returns_plain_ints():
    ids = token_ids("ids", torch.tensor([3, 4]))
    assert ids == [3, 4] and all(type(i) is int for i in ids)


# ----- REINFORCE with the group-mean baseline -----

def test_group_advantages_subtract_each_groups_mean():
    advantages = group_advantages([1.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0], group_size=4)
    torch.testing.assert_close(advantages, torch.tensor([0.5, -0.5, 0, 0, -0.25, -0.25, -0.25, 0.75],
                                                        dtype=torch.float64))
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2),
                               torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64))


def test_reinforce_gradient_on_free_log_probabilities():
    # groups (1, 0) and (0.5, 0.5): advantages (0.5, -0.5) and (0, 0); loss = -(1/4) Σ a_i θ_i
    theta = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    loss = reinforce_loss(theta, rewards, group_size=2)
    assert loss.item() == pytest.approx(-(0.5 * -1.0 - 0.5 * -2.0) / 4)
    loss.backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-0.125, 0.125, 0.0, 0.0]))


def test_reinforce_gradient_through_a_policy_equals_the_hand_derived_one():
    """log π(ŷ_i) = Σ_t log softmax(z_t)[ŷ_i,t] for a policy of free logits z [T, V] shared by all
    completions; d/dz_t of −(1/n) Σ_i a_i log π(ŷ_i) = −(1/n) Σ_i a_i (onehot(ŷ_i,t) − softmax(z_t))."""
    steps, vocab, n, group = 3, 5, 6, 3
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(steps, vocab, dtype=torch.float64, generator=generator, requires_grad=True)
    completions = torch.tensor([[0, 1, 2], [0, 1, 3], [4, 4, 4], [0, 1, 2], [0, 1, 2], [3, 1, 2]])
    rewards = [reward(c, [0, 1, 2], z0=3) for c in completions]
    assert rewards == pytest.approx([1, 1 / 3, 0, 1, 1, 1 / 3])
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, completions.T).sum(dim=0)  # [n]
    reinforce_loss(logprobs, rewards, group_size=group).backward()

    r = torch.tensor(rewards, dtype=torch.float64).view(n // group, group)
    advantages = (r - r.mean(dim=1, keepdim=True)).view(n)
    probs = torch.softmax(logits.detach(), dim=-1)
    want = torch.zeros(steps, vocab, dtype=torch.float64)
    for i in range(n):
        onehot = torch.nn.functional.one_hot(completions[i], vocab).double()
        want -= advantages[i] * (onehot - probs) / n
    torch.testing.assert_close(logits.grad, want)


def test_a_group_with_equal_rewards_contributes_no_gradient():
    logprobs = torch.tensor([-1.0, -2.0, -3.0, -0.5, -1.5, -2.5], requires_grad=True)
    reinforce_loss(logprobs, [0.3, 0.3, 0.3, 1.0, 0.0, 0.2], group_size=3).backward()
    assert (logprobs.grad[:3] == 0).all()
    assert (logprobs.grad[3:] != 0).all()
    # the same rewards shifted by a constant per group give the same gradient (the baseline removes it)
    shifted = logprobs.detach().clone().requires_grad_(True)
    reinforce_loss(shifted, [5.3, 5.3, 5.3, -1.0, -2.0, -1.8], group_size=3).backward()
    torch.testing.assert_close(shifted.grad, logprobs.grad)


def test_rewards_carry_no_gradient():
    logprobs = torch.tensor([-1.0, -2.0], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    reinforce_loss(logprobs, rewards, group_size=2).backward()
    assert rewards.grad is None and logprobs.grad is not None


@pytest.mark.parametrize("logprobs,rewards,group_size,error,field", [
    (torch.zeros(6), [0.0] * 6, 4, ValueError, "group_size"),
    (torch.zeros(4), [0.0] * 4, 1, ValueError, "group_size"),
    (torch.zeros(4), [0.0] * 4, 0, ValueError, "group_size"),
    (torch.zeros(4), [0.0] * 4, 2.0, TypeError, "group_size"),
    (torch.zeros(4), [0.0] * 6, 2, ValueError, "logprobs"),
    (torch.zeros(2, 2), [0.0] * 4, 2, ValueError, "logprobs"),
    (torch.zeros(4, dtype=torch.long), [0.0] * 4, 2, TypeError, "logprobs"),
    ([0.0] * 4, [0.0] * 4, 2, TypeError, "logprobs"),
    (torch.zeros(4), [0.0, float("nan"), 0.0, 0.0], 2, ValueError, "rewards"),
    (torch.zeros(4), torch.zeros(2, 2), 2, ValueError, "rewards"),
    (torch.zeros(0), [], 2, ValueError, "rewards"),
    (torch.zeros(2), ["a", "b"], 2, TypeError, "rewards"),
])
def test_bad_reinforce_inputs_are_refused_by_name(logprobs, rewards, group_size, error, field):
    with pytest.raises(error, match=field):
        reinforce_loss(logprobs, rewards, group_size)
