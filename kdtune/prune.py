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

    ``global`` ranks all prunable weights together and prunes ``round(ratio * total)`` of them
    (layers with many small weights lose more); ``layerwise`` prunes ``round(ratio * n)`` of
    every tensor. Both are exactly what ``prune.global_unstructured(..., L1Unstructured)`` and
    ``prune.l1_unstructured`` compute, ties included (the same ``topk``), and like them a weight
    that already has a mask only loses entries its mask still keeps. Masks stay attached; see the
    module docstring.

    Why not call those functions: they flatten with ``.view(-1)`` (``parameters_to_vector`` and
    ``L1Unstructured.compute_mask``), which assumes a contiguous weight and raises "view size is
    not compatible with input tensor's size and stride" on a channels_last one, i.e. on every
    student a GPU trains. So the ranking here flattens with ``reshape`` (a copy in logical order
    for channels_last, which is the order torch ranks in), and the masks are built with
    ``ones_like`` and attached with ``custom_from_mask``, so they, the hooked ``weight`` and the
    weight ``make_permanent`` leaves behind all keep the parameter's memory format.
    """
    if scope not in SCOPES:
        raise KDTuneError(f"unknown prune scope {scope!r}; valid scopes: {', '.join(SCOPES)}")
    if ratio == 0:
        return []
    params = prunable(model, include_linear)
    if scope == "global":
        scores = torch.cat([_effective_weight(m, n).abs().reshape(-1) for m, n in params])
        alive = torch.cat([_alive(m, n) for m, n in params])
        drops = _smallest(scores, alive, ratio).split([_param(m, n).numel() for m, n in params])
    else:
        drops = [_smallest(_effective_weight(m, n).abs().reshape(-1), _alive(m, n), ratio)
                 for m, n in params]
    for (module, name), drop in zip(params, drops):
        _attach_mask(module, name, drop)
    return params


def _param(module: nn.Module, name: str) -> torch.Tensor:
    """The trained tensor: ``name_orig`` once pruning hooks are attached, else ``name``."""
    orig = getattr(module, name + "_orig", None)
    return orig if orig is not None else getattr(module, name)


def _alive(module: nn.Module, name: str) -> torch.Tensor:
    """Flat bool, logical order: the entries an existing mask still keeps (all of them if none)."""
    mask = getattr(module, name + "_mask", None)
    if mask is None:
        weight = _param(module, name)
        return torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    return mask.reshape(-1) == 1


def _smallest(scores: torch.Tensor, alive: torch.Tensor, ratio: float) -> torch.Tensor:
    """Flat bool: the round(ratio * n) smallest of the n alive scores, as torch's L1Unstructured
    picks them (Python's round, as ``_compute_nparams_toprune``; ``topk`` on the alive entries
    in logical order, so ties fall the same way)."""
    candidates = alive.nonzero().squeeze(1)
    k = round(ratio * candidates.numel())
    drop = torch.zeros_like(alive)
    if k:
        drop[candidates[torch.topk(scores[candidates], k, largest=False).indices]] = True
    return drop


def _attach_mask(module: nn.Module, name: str, drop: torch.Tensor) -> None:
    weight = _param(module, name)
    drop = drop.view(weight.shape)  # `drop` is a fresh contiguous vector: view is safe here
    mask = getattr(module, name + "_mask", None)
    if mask is None:
        prune.custom_from_mask(module, name, torch.ones_like(weight).masked_fill_(drop, 0))
    else:
        # Already masked (identity masks, an earlier pruning): narrow the mask in place, which
        # keeps its layout (torch's PruningContainer would rebuild it contiguous), and refresh
        # the hooked attribute as the forward pre-hook would.
        mask.masked_fill_(drop, 0)
        setattr(module, name, weight * mask)


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
