"""What a sweep adds to each epoch of a trial, measured the way a sweep runs it.

A trial epoch is training, validation and bookkeeping: the size metrics, the resume checkpoint,
and `tune.report`, which under Ray Tune persists that checkpoint to the run folder and hands the
result to the driver (which snapshots the experiment). On a GPU an epoch of a small student on
CIFAR-10 takes about a second, so bookkeeping that was fine on a CPU (a 240 ms zlib over the
state dict every epoch) became a fifth of it. `kdtune bench` runs one real trial here — the
sweep's trainable, its checkpoint settings, a local run folder — and reads the trial's own
timing (kdtune.trial records `bookkeeping_ms` and `epoch_ms`, medians over its epochs).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time

from .. import measure
from ..models import create_model
from ..train import place_model, resolve_channels_last, resolve_device
from ._ray import ray, tune
from .nodes import local_versions
from .remote import trainable
from .run import CHECKPOINT_CONFIG


def trial_epoch_cost(base: dict, split, threads: int) -> dict:
    """One trial of `base` (a resolved trial config as a dict) under Ray Tune with a local run
    folder; its median per-epoch bookkeeping and epoch time in ms."""
    gpu = resolve_device(base["device"]).type == "cuda"
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=threads, num_gpus=1 if gpu else 0, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    try:
        fn = tune.with_parameters(trainable, split=split, teachers={}, base=base,
                                  cache_mode="none", threads=threads,
                                  expected=local_versions())
        fn = tune.with_resources(fn, {"cpu": threads, "gpu": 1 if gpu else 0})
        with tempfile.TemporaryDirectory(prefix="kdtune-bench-") as folder:
            grid = tune.Tuner(fn, run_config=tune.RunConfig(
                name="bench", storage_path=folder, verbose=0,
                checkpoint_config=tune.CheckpointConfig(**CHECKPOINT_CONFIG))).fit()
            result = grid[0]
            if result.error:
                raise result.error
            m = result.metrics
    finally:
        if started:
            ray.shutdown()
    return {"bookkeeping_ms": m["bookkeeping_ms"], "epoch_ms": m["epoch_ms"],
            "device": m["device"]}


def size_metrics_ms(arch: str, stem: str, num_classes: int, base: dict, repeat: int = 5) -> float:
    """What measuring params and sizes costs once: what every epoch paid before they were kept
    until pruning changes them."""
    device = resolve_device(base["device"])
    model = place_model(create_model(arch, num_classes=num_classes, stem=stem), device,
                        resolve_channels_last(base["train"]["channels_last"], device))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        measure.count_params(model)
        measure.model_size_mb(model)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)
