import math

import pytest
import torch
import torch.nn.functional as F

from kdtune.losses import at_loss, cosine_loss, dkd_loss, kd_loss

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


# --- attention transfer (Zagoruyko & Komodakis 2017) ------------------------------------------


def hand_attention(fmap, p=2.0):
    """a(f) with plain floats: fmap is [C][H][W] -> flattened, L2-normalised mean_c |f|^p."""
    c, h, w = len(fmap), len(fmap[0]), len(fmap[0][0])
    flat = [sum(abs(fmap[k][i][j]) ** p for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in flat))
    return [v / norm for v in flat]


def hand_at(f_s, f_t, p=2.0):
    """mean over batch and positions of (a(f_s) - a(f_t))^2, equal spatial sizes."""
    diffs = []
    for s, t in zip(f_s, f_t):
        diffs += [(a - b) ** 2 for a, b in zip(hand_attention(s, p), hand_attention(t, p))]
    return sum(diffs) / len(diffs)


def _feats(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_loss_matches_hand_computed_value(p):
    # different channel counts on purpose: attention maps average channels away
    f_s, f_t = _feats(0, (2, 3, 4, 4)), _feats(1, (2, 5, 4, 4))
    got = at_loss(f_s, f_t, p=p).item()
    assert got == pytest.approx(hand_at(f_s.tolist(), f_t.tolist(), p), rel=1e-5)


def test_at_loss_pinned_golden_number():
    f_s = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]], [[0.0, 1.0], [-1.0, 2.0]]]])
    f_t = torch.tensor([[[[0.0, 1.0], [2.0, 1.0]]]])
    # a(f_s) = [0.5, 2.5, 0.625, 2] / |.| , a(f_t) = [0, 1, 4, 1] / sqrt(18)
    a_s = [v / math.sqrt(0.25 + 6.25 + 0.390625 + 4) for v in (0.5, 2.5, 0.625, 2.0)]
    a_t = [v / math.sqrt(18) for v in (0.0, 1.0, 4.0, 1.0)]
    want = sum((a - b) ** 2 for a, b in zip(a_s, a_t)) / 4
    assert at_loss(f_s, f_t).item() == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(0.2500199, abs=1e-6)


def test_at_loss_sums_stage_pairs_and_resizes_the_student_map():
    s1, t1 = _feats(2, (2, 4, 8, 8)), _feats(3, (2, 6, 4, 4))
    s2, t2 = _feats(4, (2, 4, 2, 2)), _feats(5, (2, 6, 4, 4))
    # the student's 8x8 map is area-averaged to 4x4: each output is the mean of a 2x2 block
    amap = s1.abs().pow(2).mean(1)
    pooled = amap.reshape(2, 4, 2, 4, 2).mean((2, 4))
    a_s = F.normalize(pooled.flatten(1), dim=1)
    a_t = F.normalize(t1.pow(2).mean(1).flatten(1), dim=1)
    first = (a_s - a_t).pow(2).mean()
    # the student's 2x2 map is upsampled bilinearly to 4x4
    up = F.interpolate(s2.pow(2).mean(1, keepdim=True), size=(4, 4), mode="bilinear",
                       align_corners=False)
    second = (F.normalize(up.flatten(1), dim=1)
              - F.normalize(t2.pow(2).mean(1).flatten(1), dim=1)).pow(2).mean()
    got = at_loss([s1, s2], [t1, t2])
    assert got.item() == pytest.approx((first + second).item(), rel=1e-5)
    assert at_loss(s1, s1 * 3).item() == pytest.approx(0.0, abs=1e-7)  # scale-free per sample


def test_at_loss_is_float32_under_bf16_inputs_and_differentiable():
    f_s = _feats(6, (2, 3, 4, 4)).bfloat16().requires_grad_()
    f_t = _feats(7, (2, 3, 4, 4)).bfloat16()
    loss = at_loss(f_s, f_t)
    assert loss.dtype == torch.float32
    loss.backward()
    assert f_s.grad is not None and torch.isfinite(f_s.grad.float()).all()


# --- cosine embedding (PyTorch KD tutorial) -----------------------------------------------------


def test_cosine_loss_matches_torch_and_hand_value():
    h_s = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    h_t = torch.tensor([[1.0, 1.0, 0.0], [0.0, -3.0, 0.0]])
    # cos = 1/2 and -1: mean(1 - cos) = (0.5 + 2) / 2
    assert cosine_loss(h_s, h_t).item() == pytest.approx(1.25, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    ref = torch.nn.CosineEmbeddingLoss()(a, b, torch.ones(8))
    assert cosine_loss(a, b).item() == pytest.approx(ref.item(), rel=1e-6)
    assert cosine_loss(a.bfloat16(), b).dtype == torch.float32
    assert cosine_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)  # length is free


# --- decoupled KD (Zhao et al. 2022) -----------------------------------------------------------


def hand_dkd(student, teacher, targets, alpha, beta, t):
    """DKD as mdistiller writes it (softmax, then the binary and the masked non-target KLs),
    with plain floats."""
    n = len(student)
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student, teacher, targets):
        ps, pt = softmax(s_row, t), softmax(t_row, t)
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd += sum(q * math.log(q / r) for q, r in zip(bt, bs))
        # non-target: softmax of logits/T with the target pushed out (mdistiller: -1000 * gt)
        others = [i for i in range(len(s_row)) if i != y]
        qs = softmax([s_row[i] for i in others], t)
        qt = softmax([t_row[i] for i in others], t)
        nckd += sum(q * math.log(q / r) for q, r in zip(qt, qs))
    return t * t * (alpha * tckd + beta * nckd) / n


@pytest.mark.parametrize("alpha,beta,t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 2.0)])
def test_dkd_matches_hand_computed_value(alpha, beta, t):
    s, te, y = tensors()
    got = dkd_loss(s, te, y, alpha=alpha, beta=beta, temperature=t).item()
    assert got == pytest.approx(hand_dkd(STUDENT, TEACHER, TARGETS, alpha, beta, t), rel=1e-5)


def test_dkd_pinned_golden_number():
    s, te, y = tensors()
    assert dkd_loss(s, te, y, 1.0, 8.0, 4.0).item() == pytest.approx(
        hand_dkd(STUDENT, TEACHER, TARGETS, 1.0, 8.0, 4.0), rel=1e-5)
    assert hand_dkd(STUDENT, TEACHER, TARGETS, 1.0, 8.0, 4.0) == pytest.approx(2.6412469,
                                                                               abs=1e-6)


def test_dkd_decomposes_hinton_kd():
    """Zhao et al. eq. 5: KD = TCKD + (1 - p_t^teacher) * NCKD, for any logits."""
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g) * 3
    y = torch.randint(0, 10, (6,), generator=g)
    t = 2.0
    kd = kd_loss(s, te, y, t, alpha=1.0)
    per = [dkd_loss(s[i:i + 1], te[i:i + 1], y[i:i + 1], 1.0, 0.0, t)
           + (1 - F.softmax(te[i] / t, 0)[y[i]])
           * dkd_loss(s[i:i + 1], te[i:i + 1], y[i:i + 1], 0.0, 1.0, t) for i in range(6)]
    assert kd.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-5)


def test_dkd_is_zero_for_identical_logits_and_finite_when_confident():
    s, _, y = tensors()
    assert dkd_loss(s, s, y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    # a teacher sure to ~1e-40: no log(0), no nan in the loss or its gradient
    sure = torch.tensor([[0.0, 400.0, 0.0], [0.0, 0.0, 400.0]])
    st = s.clone().requires_grad_()
    loss = dkd_loss(st, sure, y, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(st.grad).all()


def test_dkd_is_float32_for_fp16_teacher_logits():
    s, te, y = tensors()
    out = dkd_loss(s.bfloat16(), te.half(), y, 1.0, 8.0, 4.0)
    assert out.dtype == torch.float32
