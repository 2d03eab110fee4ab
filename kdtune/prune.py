"""L1 unstructured magnitude pruning on top of ``torch.nn.utils.prune``.

Pruning keeps ``weight_orig`` as the parameter and a ``weight_mask`` buffer, and a forward
pre-hook recomputes ``weight = weight_orig * weight_mask``. We leave that in place while
fine-tuning so the optimizer can update surviving weights but pruned ones stay exactly zero, and
only fold the masks in (``make_permanent``) before the final save.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import prune

from kdtune.errors import KDTuneError

SCOPES = ("global", "layerwise")


def prunable(model: nn.Module, include_linear: bool = False) -> list[tuple[nn.Module, str]]:
    """Every Conv2d ``weight`` (and Linear ``weight`` if asked); biases and BN are never pruned."""
    kinds = (nn.Conv2d, nn.Linear) if include_linear else (nn.Conv2d,)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds)]


def apply_pruning(
    model: nn.Module, ratio: float, scope: str = "global", include_linear: bool = False
) -> list[tuple[nn.Module, str]]:
    """Zero the ``ratio`` fraction of smallest-|w| prunable weights; returns what was pruned.

    ``global`` ranks all prunable weights together (layers with many small weights lose more);
    ``layerwise`` removes ``ratio`` of every tensor. Masks stay attached; see the module docstring.
    """
    if scope not in SCOPES:
        raise KDTuneError(f"unknown prune scope {scope!r}; valid scopes: {', '.join(SCOPES)}")
    if ratio == 0:
        return []
    params = prunable(model, include_linear)
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=ratio)
    else:
        for module, name in params:
            prune.l1_unstructured(module, name, amount=ratio)
    return params


def attach_identity_masks(
    model: nn.Module, include_linear: bool = False
) -> list[tuple[nn.Module, str]]:
    """Give every unpruned prunable weight an all-ones mask.

    A checkpoint saved mid-fine-tune has ``weight_orig``/``weight_mask`` keys; a fresh model only
    has ``weight``. Attaching identity masks gives it the same keys, and ``load_state_dict`` then
    copies the saved masks in, so resuming restores the exact sparsity pattern.
    """
    params = prunable(model, include_linear)
    for module, name in params:
        if not hasattr(module, name + "_mask"):
            prune.identity(module, name)
    return params


def make_permanent(model: nn.Module) -> None:
    """Fold every mask into its weight and drop the hooks: plain ``weight`` keys, zeros kept."""
    for module in model.modules():
        for name in _masked_names(module):
            prune.remove(module, name)


def _masked_names(module: nn.Module) -> list[str]:
    names = [n[: -len("_orig")] for n, _ in module.named_parameters(recurse=False) if n.endswith("_orig")]
    return [n for n in names if hasattr(module, n + "_mask")]


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every parameter as the forward pass sees it (``orig * mask``).

    Reading ``module.weight`` would also work but it is only refreshed by the next forward, so
    right after an optimizer step it can be stale.
    """
    for prefix, module in model.named_modules():
        masked = set(_masked_names(module))
        for name, p in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            base = name[: -len("_orig")] if name.endswith("_orig") else None
            if base in masked:
                yield full[: -len("_orig")], p.detach() * getattr(module, base + "_mask")
            else:
                yield full, p.detach()


def _effective_weight(module: nn.Module, name: str) -> torch.Tensor:
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig").detach() * getattr(module, name + "_mask")
    return getattr(module, name).detach()


def sparsity(model: nn.Module, include_linear: bool = False) -> dict[str, float]:
    """Fraction of zeros over the prunable tensors and over all parameters."""
    pruned = [_effective_weight(m, n) for m, n in prunable(model, include_linear)]
    everything = [t for _, t in effective_parameters(model)]
    return {"sparsity_pruned": _zero_fraction(pruned), "sparsity_total": _zero_fraction(everything)}


def _zero_fraction(tensors: list[torch.Tensor]) -> float:
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return 0.0
    # Summed as tensors so a CUDA model costs one host sync, not one per layer.
    zeros = sum((t == 0).sum() for t in tensors)
    return int(zeros) / total
