"""Model metrics: parameter counts, sizes, FLOPs, speed and accuracy.

Counts read the *effective* weights (``weight_orig * weight_mask`` while pruning masks are
attached), so they give the same answer before and after ``prune.make_permanent``.
"""

from __future__ import annotations

import copy
import io
import math
import platform
import statistics
import time
import zlib
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdtune.prune import effective_parameters, make_permanent

MB = 1e6
FP32_BYTES = 4


def count_params(model: nn.Module) -> dict[str, int]:
    tensors = [t for _, t in effective_parameters(model)]
    nonzero = sum(torch.count_nonzero(t) for t in tensors)  # one host sync, not one per tensor
    return {"params": sum(t.numel() for t in tensors), "nonzero_params": int(nonzero)}


def _index_bytes(numel: int) -> int:
    # A flat index into the tensor: uint16 addresses up to 65,535 elements, beyond that uint32.
    # Flat COO-style indices keep the estimate format-agnostic (CSR would be smaller for
    # dense-ish rows, bitmaps for low sparsity) while still being a format one could really store.
    return 2 if numel < 65536 else 4


# zlib's (and gzip's) default level, not 9: level 9's longer match search is pathological on
# the zero runs unstructured pruning leaves. Measured on a 2-core CPU, one call: resnet18 with
# 50 % of conv weights zeroed 18.6 s at level 9, 2.4 s at 6, for a 2.2 % bigger result (24.71
# vs 25.25 MB); resnet20 at 50 % 0.48 s vs 0.06 s (+2.2 %); a dense resnet18 1.5 s either way.
# A trial measures sizes three times (start, after pruning, end).
ZLIB_LEVEL = 6


def model_size_mb(model: nn.Module) -> dict[str, float]:
    """fp32 size in MB (1e6 bytes): dense, sparse-stored, and zlib-compressed ``torch.save``.

    ``size_mb_sparse`` stores each tensor as (value, index) pairs unless that is bigger than dense.
    ``size_mb_disk`` saves the state_dict with masks folded in, i.e. what ``make_permanent`` +
    ``torch.save`` would write; compression is what turns pruned zeros into saved bytes on disk.
    """
    dense = sparse = 0
    tensors = [t for _, t in effective_parameters(model)]
    # one host sync for all the counts, not one per tensor (each stalls a GPU's queue)
    nonzeros = torch.stack([torch.count_nonzero(t) for t in tensors]).tolist() if tensors else []
    for t, nnz in zip(tensors, nonzeros):
        n = t.numel()
        dense += n * FP32_BYTES
        sparse += min(n * FP32_BYTES, nnz * (FP32_BYTES + _index_bytes(n)))
    buf = io.BytesIO()
    torch.save(_folded_state_dict(model), buf)
    disk = len(zlib.compress(buf.getvalue(), ZLIB_LEVEL))
    return {"size_mb_dense": dense / MB, "size_mb_sparse": sparse / MB, "size_mb_disk": disk / MB}


def _folded_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Rebuilt in order, with each weight where weight_orig was, so the bytes (and the compressed
    # size) match what make_permanent + state_dict would give.
    state = model.state_dict()
    folded = type(state)()
    folded._metadata = getattr(state, "_metadata", None)  # module versions, as torch.save(state_dict) writes
    for key, value in state.items():
        base = key[: -len("_orig")] if key.endswith("_orig") else None
        if base is not None and base + "_mask" in state:
            folded[base] = value * state[base + "_mask"]
        elif not (key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state):
            folded[key] = value
    return folded


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs per image as counted by torch's FlopCounterMode (a multiply-add is 2 FLOPs).

    Dense: pruned zeros are still multiplied by stock kernels, so pruning does not change this
    number. Only ops torch has formulas for (conv, matmul, attention) count; BN/ReLU/pool are
    cheap and ignored. Runs in eval mode under no_grad on the model's own device.
    """
    device = next(model.parameters()).device
    with _eval_mode(model), torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops() // input_shape[0]


def device_label(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    if device.type == "cpu":
        return f"cpu {_cpu_name()}".rstrip()
    return str(device)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def _num_threads(threads: int | None):
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _inference_copy(model: nn.Module) -> nn.Module:
    # Pruning keeps ``weight = weight_orig * weight_mask`` as a plain attribute with a grad_fn, and
    # deepcopy refuses non-leaf tensors. Pre-seeding the memo with detached versions sidesteps it;
    # the hook recomputes that attribute on every forward anyway.
    memo = {
        id(v): v.detach()
        for m in model.modules()
        for v in vars(m).values()
        if isinstance(v, torch.Tensor) and v.grad_fn is not None
    }
    bench = copy.deepcopy(model, memo)
    make_permanent(bench)
    return bench


def _percentile(values: list[float], q: float) -> float:
    # Nearest-rank: always an observed latency, and well-defined for a handful of runs.
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return ordered[rank - 1]


def latency_stats(latencies_ms: list[float]) -> dict[str, float]:
    """Batch-1 latency summary of timed calls (ms): median, and p10..p90 as its spread."""
    return {"latency_ms_b1": statistics.median(latencies_ms),
            "latency_ms_b1_p10": _percentile(latencies_ms, 10),
            "latency_ms_b1_p90": _percentile(latencies_ms, 90)}


def measure_speed(
    model: nn.Module,
    device: torch.device | str,
    input_size: int = 32,
    batch: int = 256,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    bf16: bool | None = None,
    channels_last: bool | None = None,
) -> dict[str, float | int | str | bool]:
    """Batch-1 latency (median, p10 and p90 over ``runs``) and throughput at ``batch`` on ``device``.

    Benchmarks a deep copy moved to ``device``, so the caller's model keeps its device, memory
    format, mode and pruning masks. The copy has its masks folded in, so a model still
    fine-tuning is timed as it will be deployed, without the per-forward
    ``weight_orig * weight_mask``. ``bf16`` (autocast) and ``channels_last`` (model and inputs)
    are a trial's resolved ``train.precision``/``train.channels_last``; None picks them by
    device, on for CUDA and off for CPU, for a model measured on its own. The device is
    synchronized before every clock read, otherwise CUDA timings only measure the kernel launch.
    """
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    bf16 = is_cuda if bf16 is None else bf16
    channels_last = is_cuda if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    bench = _inference_copy(model).to(device=device, memory_format=memory_format).eval()

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    def timed(x: torch.Tensor) -> float:
        sync()
        start = time.perf_counter()
        bench(x)
        sync()
        return time.perf_counter() - start

    shape = (3, input_size, input_size)
    x1 = torch.randn(1, *shape, device=device).contiguous(memory_format=memory_format)
    xb = torch.randn(batch, *shape, device=device).contiguous(memory_format=memory_format)
    with _num_threads(threads), torch.inference_mode():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            used_threads = torch.get_num_threads()
            for _ in range(warmup):
                bench(x1)
            latencies = [timed(x1) * 1e3 for _ in range(runs)]
            # Big batches are slow on CPU: a few warm-up and timed passes give a stable median.
            for _ in range(max(1, min(warmup, 3))):
                bench(xb)
            batch_times = [timed(xb) for _ in range(max(3, runs // 10))]
    return {
        # the spread a difference must exceed to be a difference: p10..p90 of the runs
        **latency_stats(latencies),
        "throughput_ips": batch / statistics.median(batch_times),
        "throughput_batch": batch,
        "measure_device": device_label(device),
        "measure_threads": used_threads,
        "measure_precision": "bf16" if bf16 else "fp32",
        "measure_channels_last": channels_last,
    }


def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    autocast_bf16: bool = False,
) -> float:
    """Top-1 accuracy over ``(x, y)`` batches already on the model's device.

    Correct counts accumulate on the device and are read once at the end: a per-batch ``.item()``
    would stall the GPU queue on every batch.
    """
    correct: torch.Tensor | int = 0
    total = 0
    with _eval_mode(model), torch.inference_mode():
        for x, y in batches:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                logits = model(x)
            correct = correct + (logits.argmax(dim=1) == y).sum()
            total += y.shape[0]
    if total == 0:
        raise ValueError("accuracy() got no batches")
    return correct.item() / total
