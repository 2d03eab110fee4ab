"""The training loop shared by students (trial.py) and teachers (teacher.py), and its switches.

bf16 autocast and the channels_last memory layout are what make a GPU fast, but they are also
where CUDA-only bugs hide: a CPU test suite that picks them by `device.type` never runs them, so a
crash that only channels_last triggers (torch's pruning used to hit one) reaches the GPU first.
Here they are plain switches, `train.precision` and `train.channels_last`: `auto` picks them by
device exactly as before, and the CPU suite forces them on. They are resolved once, in one place
(`resolve_precision`, `resolve_channels_last`), and handed down as booleans, so nothing below
looks at the device to decide them again.

Losses are summed on the device and read once per epoch: a per-step `.item()` would stall the
GPU queue on every batch.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import measure
from .data import DeviceData
from .errors import KDTuneError

# loss_fn(logits, idx, x, y, view): idx and view say which image under which augmentation view,
# so a KD loss can look the teacher's logits up in the view cache.
LossFn = Callable[..., torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KDTuneError(f"device: {name} requested but CUDA is not available here; "
                          "use device: auto or cpu")
    return torch.device(name)


def resolve_precision(choice: str, device: torch.device) -> str:
    """`train.precision` -> "bf16" | "fp32"; auto is bf16 on CUDA only (on CPUs without bf16
    instructions autocast is many times slower than fp32)."""
    if choice == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return choice


def resolve_channels_last(choice: str | bool, device: torch.device) -> bool:
    """`train.channels_last` -> bool; auto is on for CUDA only (cuDNN's preferred layout)."""
    return device.type == "cuda" if choice == "auto" else bool(choice)


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move a model to `device` in the chosen layout (contiguous when channels_last is off, so a
    model that was channels_last before really goes back)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=fmt)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay)
    # AdamW as DeiT/timm use it: no decay on biases, norm weights and the ViT's position and
    # class embeddings (every tensor of one dimension or fewer, plus tokens of shape
    # (1, n, width)), which decay would pull towards zero for no regularising gain
    decay = [p for p in params if p.ndim > 1 and not (p.ndim == 3 and p.shape[0] == 1)]
    kept = {id(p) for p in decay}
    rest = [p for p in params if id(p) not in kept]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


def make_schedule(opt, name: str, lr: float, total_steps: int, warmup_steps: int = 0):
    """Stepped per batch, so short runs still anneal smoothly. `warmup_steps` (cosine only):
    a linear ramp from lr / warmup_steps up to lr, then the cosine decay over the rest."""
    total_steps = max(1, total_steps)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    warm = min(max(0, warmup_steps), total_steps - 1)

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(s - warm, total_steps - warm)
                                   / (total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_step(model, x: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], opt,
               sched=None, *, bf16: bool) -> torch.Tensor:
    """One optimizer step; returns the detached loss (still on the device). Only the forward
    runs under autocast: the loss (kdtune.losses) upcasts to float32 itself."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = loss_of(logits)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss.detach()


def train_epoch(model, dd: DeviceData, opt, sched, batch_size: int, seed: int, loss_fn: LossFn,
                *, bf16: bool, cutout: int = 0) -> tuple[float, int]:
    """One pass; returns (mean loss, steps). `cutout`: see DeviceData.cutout."""
    model.train()
    total = torch.zeros((), device=dd.device)
    steps = 0
    for idx, x, y, view in dd.train_batches(batch_size, seed, cutout):
        total += train_step(model, x, lambda logits: loss_fn(logits, idx, x, y, view), opt,
                            sched, bf16=bf16)
        steps += 1
    return total.item() / max(steps, 1), steps


def fit(model, dd: DeviceData, *, epochs: int, lr: float, batch_size: int, weight_decay: float,
        optimizer: str, schedule: str, momentum: float, seed: int, label_smoothing: float,
        bf16: bool, log=print, eval_batch_size: int = 1024, warmup_epochs: float = 0.0) -> None:
    """Plain cross-entropy training (teachers)."""
    opt = make_optimizer(model, optimizer, lr, weight_decay, momentum)
    steps = dd.steps_per_epoch(batch_size)
    sched = make_schedule(opt, schedule, lr, epochs * steps, round(warmup_epochs * steps))
    ce = lambda logits, idx, x, y, view: torch.nn.functional.cross_entropy(  # noqa: E731
        logits.float(), y, label_smoothing=label_smoothing)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss, _ = train_epoch(model, dd, opt, sched, batch_size, seed * 100_003 + epoch, ce,
                              bf16=bf16)
        acc = measure.accuracy(model, dd.eval_batches("val", eval_batch_size),
                               autocast_bf16=bf16)
        log(f"epoch {epoch}/{epochs} loss {loss:.3f} val {acc:.2%} "
            f"({time.perf_counter() - t0:.1f}s)")
