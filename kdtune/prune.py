"""Pruning: L1 unstructured (masks) and L1 channel pruning (smaller dense layers).

Two methods, chosen by ``prune.method``, because they answer different questions:

* ``unstructured`` zeroes single weights. Stock kernels still multiply the zeros, so it moves
  neither latency nor dense size nor FLOPs; only sparse storage and compressed size shrink, and
  only past ~35 % sparsity (resnet20: 1.087 MB sparse at ratio 0, 0.2 and 0.3). It is the
  notebook baseline the study compares against.
* ``channel`` removes whole output channels (and the input channels of every layer that reads
  them), so the student really is a narrower network: fewer FLOPs, smaller dense size, lower
  latency. Torch-Pruning's dependency graph (Fang et al., "DepGraph: Towards Any Structural
  Pruning", CVPR 2023, arXiv:2301.12900) finds the layers coupled through residual adds and
  MobileNetV3's squeeze-excitation, which a per-layer rule would cut inconsistently.

Unstructured pruning keeps ``weight_orig`` as the parameter and a ``weight_mask`` buffer, and a forward
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
METHODS = ("unstructured", "channel")


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


# --- channel pruning -----------------------------------------------------------------------


def conv_channels(model: nn.Module) -> int:
    """Output channels summed over every Conv2d: what channel pruning removes a fraction of."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def output_layer(model: nn.Module) -> nn.Module:
    """The classifier: the last Linear (every model in the registry ends in one)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise KDTuneError(f"{type(model).__name__} has no Linear output layer to keep whole")
    return linears[-1]


def prune_channels(model: nn.Module, ratio: float, example: torch.Tensor, scope: str = "global",
                   round_to: int = 8) -> float:
    """Remove ``ratio`` of the conv output channels with the smallest L1 norm; returns the
    fraction actually removed (of :func:`conv_channels`).

    Importance is the L1 norm of each channel's weights summed over its coupled group (Li et al.,
    "Pruning Filters for Efficient ConvNets", ICLR 2017, arXiv:1608.08710), normalised per group
    so ``global`` scope can rank channels of different layers against each other;
    ``layerwise`` removes ``ratio`` of every group. Kept widths are rounded to multiples of
    ``round_to`` (tensor cores and vectorised CPU kernels run whole multiples of 8 faster: a
    width of 45 costs about what 48 does). So the cut achieved differs from ``ratio``: resnet20
    at 0.3 global removes 34.7 % of its channels, and a 16-channel layer is either kept at 16 or
    cut to 8. The output classifier is never pruned and no layer is emptied: at most 90 % of a
    group goes, and Torch-Pruning skips a cut that would leave nothing.

    The modules are changed in place (new, smaller parameters: build the optimizer after this),
    in eval mode, so the tracing forward pass leaves batch-norm statistics alone. Parameters keep
    their device; re-apply the memory format afterwards (``train.place_model``).
    """
    if scope not in SCOPES:
        raise KDTuneError(f"unknown prune scope {scope!r}; valid scopes: {', '.join(SCOPES)}")
    if ratio == 0:
        return 0.0
    import torch_pruning as tp  # 1.3 s to import: only trials that channel-prune pay it

    before = conv_channels(model)
    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, global_pruning=scope == "global", round_to=round_to or None,
            ignored_layers=[output_layer(model)], max_pruning_ratio=0.9)
        pruner.step()
    finally:
        model.train(was_training)
    return 1 - conv_channels(model) / before
