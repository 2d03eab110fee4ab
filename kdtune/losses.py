"""Knowledge-distillation loss.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
"""

from __future__ import annotations

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
