"""lmsleep.continual.divergence against float64 references written from the definitions with plain
probabilities, at both endpoints and inside; masking; gradients reach only the student."""
import math

import pytest
import torch

from lmsleep.continual.divergence import forward_kl, generalized_jsd, reverse_kl

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]


def probabilities(logits, temperature=1.0):
    e = torch.exp(logits.double() / temperature)
    return e / e.sum(dim=-1, keepdim=True)


def kl(p, q):
    """Σ_v p_v log(p_v / q_v), skipping p_v = 0."""
    terms = p * torch.log(p / q)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def reference(student_logits, teacher_logits, beta, temperature=1.0):
    """Per-position F(T ‖ S) in TRL's convention, from the definitions."""
    s, t = probabilities(student_logits, temperature), probabilities(teacher_logits, temperature)
    if beta == 0:
        return kl(t, s)
    if beta == 1:
        return kl(s, t)
    m = beta * t + (1 - beta) * s
    return beta * kl(t, m) + (1 - beta) * kl(s, m)


def pair(shape=(2, 3, 7), scale=2.0, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(shape, generator=generator)).to(dtype)
    teacher = (scale * torch.randn(shape, generator=generator)).to(dtype)
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 2.5], ids=lambda t: f"tau{t}")
@pytest.mark.parametrize("beta", BETAS, ids=lambda b: f"beta{b}")
def test_each_value_equals_the_float64_reference(beta, temperature):
    student, teacher = pair()
    want = reference(student, teacher, beta, temperature)
    got = generalized_jsd(student, teacher, beta, temperature=temperature, reduction="none")
    assert got.shape == (2, 3) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(generalized_jsd(student, teacher, beta, temperature=temperature), want.mean())
    torch.testing.assert_close(generalized_jsd(student, teacher, beta, temperature=temperature, reduction="sum"),
                               want.sum())


def test_float32_and_bfloat16_inputs_match_the_reference():
    student, teacher = pair(dtype=torch.float32)
    for beta in BETAS:
        want = reference(student, teacher, beta).float()
        torch.testing.assert_close(generalized_jsd(student, teacher, beta, reduction="none"), want,
                                   rtol=1e-5, atol=1e-6)
    # bfloat16 logits are computed in float32 (the reference sees the same rounded logits).
    student, teacher = student.bfloat16(), teacher.bfloat16()
    got = generalized_jsd(student, teacher, 0.5, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference(student, teacher, 0.5).float(), rtol=1e-5, atol=1e-6)


def test_the_named_kls_are_the_endpoints():
    student, teacher = pair()
    torch.testing.assert_close(forward_kl(student, teacher), generalized_jsd(student, teacher, 0))
    torch.testing.assert_close(reverse_kl(student, teacher), generalized_jsd(student, teacher, 1))
    torch.testing.assert_close(forward_kl(student, teacher, reduction="none"), kl(probabilities(teacher),
                                                                                   probabilities(student)))
    torch.testing.assert_close(reverse_kl(student, teacher, reduction="none"), kl(probabilities(student),
                                                                                   probabilities(teacher)))


@pytest.mark.parametrize("beta", [0, 1, 0.0, 1.0], ids=["int0", "int1", "float0", "float1"])
def test_the_endpoints_are_not_zero_for_different_distributions(beta):
    student, teacher = pair()
    assert (generalized_jsd(student, teacher, beta, reduction="none") > 1e-2).all()


def test_forward_and_reverse_kl_differ():
    # A guard against an implementation that returns one KL for both ends.
    student, teacher = pair()
    assert not torch.allclose(forward_kl(student, teacher), reverse_kl(student, teacher))


def test_near_the_endpoints_jsd_scales_like_the_kl_it_approaches():
    """JSD(β) ≈ β·KL(T‖S) near 0 and ≈ (1−β)·KL(S‖T) near 1: the weighting of the two terms around M
    is TRL's (teacher term by β); swapped weights would not vanish at the ends."""
    student, teacher = pair(shape=(4, 5))
    small = 1e-5
    near_zero = generalized_jsd(student, teacher, small, reduction="none") / small
    near_one = generalized_jsd(student, teacher, 1 - small, reduction="none") / small
    torch.testing.assert_close(near_zero, forward_kl(student, teacher, reduction="none"), rtol=1e-3, atol=0)
    torch.testing.assert_close(near_one, reverse_kl(student, teacher, reduction="none"), rtol=1e-3, atol=0)


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.5])
def test_swapping_teacher_and_student_mirrors_beta(beta):
    student, teacher = pair()
    torch.testing.assert_close(generalized_jsd(student, teacher, beta, reduction="none"),
                               generalized_jsd(teacher, student, 1 - beta, reduction="none"))


def test_jsd_at_one_half_is_bounded_by_log_two():
    student, teacher = pair(scale=30.0)  # nearly disjoint one-hot distributions
    assert (generalized_jsd(student, teacher, 0.5, reduction="none") <= math.log(2) + 1e-12).all()


@pytest.mark.parametrize("beta", BETAS, ids=lambda b: f"beta{b}")
def test_zero_for_identical_distributions(beta):
    student, _ = pair()
    assert generalized_jsd(student, student.clone(), beta, reduction="none").abs().max() < 1e-12
    # logits that differ by a constant per position are the same distribution
    shifted = student + torch.tensor([[3.0], [-7.0], [0.5]], dtype=torch.float64)
    assert generalized_jsd(student, shifted, beta, reduction="none").abs().max() < 1e-12


@pytest.mark.parametrize("beta", BETAS, ids=lambda b: f"beta{b}")
def test_non_negative(beta):
    for seed in range(20):
        student, teacher = pair(shape=(8, 11), scale=0.1 + seed, seed=seed)
        assert generalized_jsd(student, teacher, beta, reduction="none").min() >= -1e-12


def test_a_teacher_with_impossible_tokens():
    """A -inf teacher logit (a top-k-filtered teacher) is probability 0: forward KL stays finite and
    skips it (0 · log 0 = 0), reverse KL becomes infinite where the student puts mass on it."""
    student, teacher = pair(shape=(3, 6))
    teacher[:, 0] = -math.inf
    student = student.requires_grad_(True)
    forward = forward_kl(student, teacher, reduction="none")
    torch.testing.assert_close(forward, reference(student.detach(), teacher, 0))
    forward.sum().backward()
    assert torch.isfinite(student.grad).all()
    assert torch.isfinite(generalized_jsd(student, teacher, 0.5)).all()
    assert torch.isinf(reverse_kl(student.detach(), teacher, reduction="none")).all()


# ----- masks -----

def test_mask_counts_only_the_marked_positions():
    student, teacher = pair(shape=(2, 4, 5))
    mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
    for beta in BETAS:
        want = reference(student, teacher, beta)
        got = generalized_jsd(student, teacher, beta, mask=mask, reduction="none")
        torch.testing.assert_close(got, torch.where(mask, want, torch.zeros_like(want)))
        torch.testing.assert_close(generalized_jsd(student, teacher, beta, mask=mask), want[mask].mean())
        torch.testing.assert_close(generalized_jsd(student, teacher, beta, mask=mask, reduction="sum"),
                                   want[mask].sum())


@pytest.mark.parametrize("beta", BETAS, ids=lambda b: f"beta{b}")
def test_uncounted_positions_change_neither_value_nor_gradient(beta):
    student, teacher = pair(shape=(2, 4, 5))
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    garbage_student, garbage_teacher = student.clone(), teacher.clone()
    garbage_student[~mask] = 1e4 * torch.randn_like(student[~mask])
    garbage_teacher[~mask] = -1e4
    values = []
    for s, t in ((student, teacher), (garbage_student, garbage_teacher)):
        s = s.clone().requires_grad_(True)
        loss = generalized_jsd(s, t, beta, mask=mask)
        loss.backward()
        assert (s.grad[~mask] == 0).all()
        values.append((loss.detach(), s.grad[mask]))
    torch.testing.assert_close(values[0][0], values[1][0])
    torch.testing.assert_close(values[0][1], values[1][1])


def test_a_mask_that_counts_nothing_is_refused_for_the_mean():
    student, teacher = pair(shape=(2, 3, 4))
    nothing = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask counts no position"):
        generalized_jsd(student, teacher, 0.5, mask=nothing)
    assert generalized_jsd(student, teacher, 0.5, mask=nothing, reduction="sum") == 0


# ----- gradients -----

@pytest.mark.parametrize("beta", BETAS, ids=lambda b: f"beta{b}")
def test_gradient_reaches_only_the_student(beta):
    student, teacher = pair(shape=(2, 3, 6), dtype=torch.float32)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    generalized_jsd(student, teacher, beta).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().max() > 0


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0], ids=lambda b: f"beta{b}")
def test_gradient_passes_gradcheck_in_float64(beta):
    student, teacher = pair(shape=(2, 3, 5))
    mask = torch.tensor([[True, True, False], [True, False, True]])
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: generalized_jsd(s, teacher, beta, mask=mask, temperature=1.5), (student,))
    assert torch.autograd.gradcheck(
        lambda s: generalized_jsd(s, teacher, beta, reduction="none"), (student,))


# ----- bad input -----

@pytest.mark.parametrize("kwargs,error,field", [
    (dict(beta=-0.1), ValueError, "beta"),
    (dict(beta=1.5), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(beta="0.5"), TypeError, "beta"),
    (dict(beta=True), TypeError, "beta"),
    (dict(beta=0.5, temperature=0.0), ValueError, "temperature"),
    (dict(beta=0.5, temperature=-1.0), ValueError, "temperature"),
    (dict(beta=0.5, reduction="batchmean"), ValueError, "reduction"),
    (dict(beta=0.5, mask=torch.ones(2, 3)), TypeError, "mask"),
    (dict(beta=0.5, mask=[[True] * 3] * 2), TypeError, "mask"),
    (dict(beta=0.5, mask=torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, field):
    student, teacher = pair(shape=(2, 3, 4))
    with pytest.raises(error, match=field):
        generalized_jsd(student, teacher, **kwargs)


@pytest.mark.parametrize("student,teacher,error,field", [
    (torch.zeros(2, 4), torch.zeros(2, 5), ValueError, "same shape"),
    (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4), TypeError, "student_logits"),
    (torch.zeros(2, 4), [[0.0] * 4] * 2, TypeError, "teacher_logits"),
    (torch.zeros(()), torch.zeros(()), ValueError, "student_logits"),
    (torch.zeros(2, 0), torch.zeros(2, 0), ValueError, "vocab"),
    (torch.zeros(0, 4), torch.zeros(0, 4), ValueError, "no positions"),
])
def test_bad_logits_are_refused_by_name(student, teacher, error, field):
    with pytest.raises(error, match=field):
        generalized_jsd(student, teacher, 0.5)
