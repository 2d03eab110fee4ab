import math

import pytest
import torch
import torch.nn.functional as F

from kdtune.losses import kd_loss

STUDENT = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.0, 0.5, 4.0]]
TARGETS = [1, 2]


def softmax(row, t=1.0):
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def hand_kd(student, teacher, targets, t, alpha, ls=0.0):
    """The Hinton et al. loss written out with plain floats."""
    n, k = len(student), len(student[0])
    kl = ce = 0.0
    for s_row, t_row, y in zip(student, teacher, targets):
        p, q = softmax(t_row, t), softmax(s_row, t)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        log_q1 = [math.log(v) for v in softmax(s_row)]
        # Label smoothing: target is (1 - ls) one-hot + ls / k uniform.
        ce += -sum(((1 - ls) * (c == y) + ls / k) * log_q1[c] for c in range(k))
    return alpha * t * t * kl / n + (1 - alpha) * ce / n


def tensors():
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)


@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("t,alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 1.0)])
def test_matches_hand_computed_golden_value(t, alpha, ls):
    s, te, y = tensors()
    got = kd_loss(s, te, y, temperature=t, alpha=alpha, label_smoothing=ls)
    assert got.item() == pytest.approx(hand_kd(STUDENT, TEACHER, TARGETS, t, alpha, ls), rel=1e-5)


def test_pinned_golden_number():
    # Computed once by hand_kd; catches a change in both the loss and the helper at once.
    s, te, y = tensors()
    assert kd_loss(s, te, y, 4.0, 0.9).item() == pytest.approx(
        hand_kd(STUDENT, TEACHER, TARGETS, 4.0, 0.9), rel=1e-5
    )
    assert hand_kd(STUDENT, TEACHER, TARGETS, 4.0, 0.9) == pytest.approx(0.284455, abs=1e-6)


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_alpha_zero_is_plain_cross_entropy_without_teacher(ls):
    s, _, y = tensors()
    got = kd_loss(s, None, y, temperature=4.0, alpha=0.0, label_smoothing=ls)
    assert torch.equal(got, F.cross_entropy(s, y, label_smoothing=ls))


def test_alpha_positive_requires_teacher():
    s, _, y = tensors()
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, None, y, temperature=4.0, alpha=0.5)


@pytest.mark.parametrize("t", [1.0, 2.0, 8.0])
def test_soft_term_is_t_squared_times_kl_at_that_temperature(t):
    s, te, y = tensors()
    kl = F.kl_div(F.log_softmax(s / t, 1), F.softmax(te / t, 1), reduction="batchmean")
    assert (kd_loss(s, te, y, t, alpha=1.0) / t**2).item() == pytest.approx(kl.item(), rel=1e-5)


def test_t_squared_keeps_gradient_scale_independent_of_t():
    # Hinton et al. section 2.1: for large T the soft-target gradient of the raw KL shrinks like
    # 1/T^2; the T^2 factor undoes that, so the gradient norm barely moves from T=4 to T=16.
    torch.manual_seed(0)
    s, te = torch.randn(64, 10), torch.randn(64, 10)
    y = torch.zeros(64, dtype=torch.long)

    def grad_norm(t, raw):
        logits = s.clone().requires_grad_()
        loss = kd_loss(logits, te, y, t, alpha=1.0)
        (loss / t**2 if raw else loss).backward()
        return logits.grad.norm().item()

    assert 0.8 < grad_norm(16.0, raw=False) / grad_norm(4.0, raw=False) < 1.25
    raw_ratio = grad_norm(16.0, raw=True) / grad_norm(4.0, raw=True)
    assert raw_ratio == pytest.approx(1 / 16, rel=0.25)


def test_gradient_pulls_student_toward_teacher():
    s, te, y = tensors()
    logits = s.clone().requires_grad_()
    loss = kd_loss(logits, te, y, temperature=2.0, alpha=1.0)
    loss.backward()
    stepped = kd_loss(logits.detach() - 0.1 * logits.grad, te, y, 2.0, 1.0)
    assert stepped < loss
    # Identical logits: zero KL and zero gradient.
    same = te.clone().requires_grad_()
    zero = kd_loss(same, te, y, temperature=3.0, alpha=1.0)
    zero.backward()
    assert zero.item() == pytest.approx(0.0, abs=1e-6)
    assert same.grad.abs().max() < 1e-6


def test_bf16_inputs_give_float32_loss_close_to_fp32():
    torch.manual_seed(0)
    s, te = torch.randn(32, 10) * 5, torch.randn(32, 10) * 5
    y = torch.randint(0, 10, (32,))
    ref = kd_loss(s.bfloat16().float(), te.bfloat16().float(), y, 4.0, 0.7, 0.1)
    got = kd_loss(s.bfloat16(), te.bfloat16(), y, 4.0, 0.7, 0.1)
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_teacher_logits_from_inference_mode_are_usable():
    # Teachers run under inference_mode in training; their logits must not break backward.
    s, te, y = tensors()
    with torch.inference_mode():
        te_inf = te * 1.0
    logits = s.clone().requires_grad_()
    kd_loss(logits, te_inf, y, 4.0, 0.5).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
