"""Knowledge-distillation losses, one per `kd.method` (see kdtune/distill.py for how a trial
combines them with cross-entropy).

* logit: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
  arXiv:1503.02531 (:func:`kd_loss`).
* attention: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR,
  arXiv:1612.03928 (:func:`at_loss`).
* dkd: Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation", CVPR,
  arXiv:2203.08679 (:func:`dkd_loss`).
* cosine: the hidden-state loss of the PyTorch knowledge-distillation tutorial
  (pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html), ``nn.CosineEmbeddingLoss``
  with target 1 (:func:`cosine_loss`).
* fitnets: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR, arXiv:1412.6550; its
  hint loss is a plain mean squared error after a learned regressor, which lives with the
  regressor in kdtune/distill.py.

Every loss computes in float32: under bf16 autocast the logits and feature maps arrive in bf16,
whose 8-bit mantissa loses the small probabilities soft targets live in.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, targets)``.

    The KL term is summed over classes and averaged over the batch. Softening with T scales the
    soft-target gradients by 1/T^2 (Hinton et al. section 2), so multiplying by T^2 keeps their
    magnitude independent of T and the alpha mix means the same thing at every temperature.

    ``alpha == 0`` is the plain cross-entropy baseline: ``teacher_logits`` may be None and no
    teacher term is computed. Everything is done in float32 so bf16 autocast logits do not lose
    the small probabilities the soft targets live in.
    """
    student = student_logits.float()
    hard = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    if teacher_logits is None:
        raise ValueError(f"kd_loss needs teacher_logits when alpha > 0 (alpha={alpha})")
    t = temperature
    # log_target=True: both sides in log space avoids log(0) when a softened teacher prob underflows.
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * soft + (1 - alpha) * hard


def resize_map(f: torch.Tensor, size) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size): area averaging when it shrinks (``adaptive_avg_pool2d``,
    every input position counts once), bilinear interpolation when it grows."""
    if tuple(f.shape[-2:]) == tuple(size):
        return f
    if f.shape[-2] >= size[0] and f.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(f, size)
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


def attention_map(feature: torch.Tensor, p: float = 2.0,
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """``a(f)``: ``mean over channels of |f|^p``, resized to ``size`` if given, flattened per
    sample and L2-normalised: (N, C, H, W) -> (N, H*W).

    Resizing (:func:`resize_map`) acts on the 2-D map.
    """
    amap = feature.float().abs().pow(p).mean(dim=1, keepdim=True)
    if size is not None:
        amap = resize_map(amap, size)
    return F.normalize(amap.flatten(1), dim=1)


def at_loss(f_s: torch.Tensor | Sequence[torch.Tensor], f_t: torch.Tensor | Sequence[torch.Tensor],
            p: float = 2.0) -> torch.Tensor:
    """Attention transfer, summed over the paired stages:
    ``sum_j mean((a(f_s_j) - a(f_t_j))^2)``.

    ``a(f)`` is :func:`attention_map`: the per-sample L2-normalised, flattened spatial map
    ``mean_c |f_c|^p`` (the paper's F^p_mean with p = 2, eq. 2 and section 3.1). The student's
    map is resized to the teacher's spatial size when they differ, so any two networks pair.
    As in the authors' code (github.com/szagoruyko/attention-transfer, ``at_loss``) the squared
    difference is averaged over batch and positions, not the paper's sum of L2 norms; the
    paper's beta (1e3 over stages) then becomes ``kd.feature_weight`` (default 1000, the
    weight mdistiller uses for this exact form). Pass one tensor each, or equal-length
    sequences (one per stage pair).
    """
    seqs = isinstance(f_s, (list, tuple)), isinstance(f_t, (list, tuple))
    if seqs[0] != seqs[1]:
        raise TypeError("at_loss: pass one tensor each, or a sequence each")
    pairs = list(zip(f_s, f_t)) if seqs[0] else [(f_s, f_t)]
    if seqs[0] and len(f_s) != len(f_t):
        raise ValueError(f"at_loss: {len(f_s)} student stages vs {len(f_t)} teacher stages")
    if not pairs:
        raise ValueError("at_loss: no stage pairs")
    total = None
    for s, t in pairs:
        a_t = attention_map(t, p)
        a_s = attention_map(s, p, size=tuple(t.shape[-2:]))
        term = (a_s - a_t).pow(2).mean()
        total = term if total is None else total + term
    return total


def cosine_loss(h_s: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """``mean over the batch of 1 - cos(h_s, h_t)``: the embeddings' directions agree, their
    lengths are free. ``nn.CosineEmbeddingLoss`` with every target 1, as the PyTorch KD tutorial
    uses it on the flattened hidden states; both (N, D) of the same width (a projection beside
    the student makes them so, kdtune.distill). Float32, eps 1e-8 as in ``F.cosine_similarity``.
    """
    return (1 - F.cosine_similarity(h_s.float(), h_t.float(), dim=1, eps=1e-8)).mean()


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """Decoupled KD: ``alpha * TCKD + beta * NCKD`` (Zhao et al. 2022, eq. 7).

    With ``p = softmax(z / T)`` and ``t`` the target class:

    * TCKD = ``T^2 * KL(b_teacher || b_student)`` over the binary split
      ``b = [p_t, 1 - p_t]`` (target vs all non-target classes);
    * NCKD = ``T^2 * KL(p̂_teacher || p̂_student)`` over the non-target classes renormalised,
      ``p̂_i = p_i / (1 - p_t)`` for ``i != t``.

    Each KL is summed over its classes and averaged over the batch, and scaled by T^2 as in the
    paper's code (mdistiller ``dkd_loss``) for the same reason as :func:`kd_loss`. Hinton's KD
    is ``TCKD + (1 - p_t^teacher) * NCKD``: the NCKD weight there shrinks exactly when the
    teacher is confident, which DKD undoes with a free beta (8 in the paper's CIFAR runs).
    Computed in float32 in log space (``logsumexp``), so neither split takes a log of 0.
    """
    t = temperature
    zs = student_logits.float() / t
    zt = teacher_logits.float() / t
    gt = F.one_hot(target, zs.shape[1]).bool()

    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p_target, log(1 - p_target) and the log of the renormalised non-target
        distribution (target entry -inf), all from the logits."""
        log_all = torch.logsumexp(z, dim=1)
        z_other = z.masked_fill(gt, float("-inf"))
        log_other = torch.logsumexp(z_other, dim=1)
        log_target = z.gather(1, target[:, None]).squeeze(1) - log_all
        return log_target, log_other - log_all, z_other - log_other[:, None]

    s_tgt, s_oth, s_nt = split(zs)
    t_tgt, t_oth, t_nt = split(zt)
    tckd = (t_tgt.exp() * (t_tgt - s_tgt) + t_oth.exp() * (t_oth - s_oth)).mean()
    # The target entry of both non-target logs is -inf; -inf - -inf would be nan (and so would
    # its gradient), so it is set to 0 first: its teacher probability exp(-inf) = 0 drops it.
    nckd = (t_nt.exp() * (t_nt.masked_fill(gt, 0.0) - s_nt.masked_fill(gt, 0.0))).sum(1).mean()
    return t * t * (alpha * tckd + beta * nckd)


def ensemble_logits(member_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits whose temperature-T softmax is the members' average T-softened distribution.

    Hinton et al. 2015 (arXiv:1503.02531, section 3) distil an ensemble from "the arithmetic
    mean of their predictive distributions"; at temperature T that is

        p_T = (1/M) * sum_m softmax(z_m / T),     z_ens = T * log p_T,

    and softmax(z_ens / T) = p_T exactly (log p_T is already normalised), so every logit loss
    here (kd_loss, dkd_loss) distils from the mean with no change. `member_logits`: (batch,
    members, classes); computed in float32, in log space (logsumexp), so a confident member
    gives no log(0). The mean depends on T, so a view cache stores each member's logits and
    this runs per step.
    """
    z = F.log_softmax(member_logits.float() / temperature, dim=-1)
    return temperature * (torch.logsumexp(z, dim=1) - math.log(member_logits.shape[1]))
