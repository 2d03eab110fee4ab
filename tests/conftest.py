"""Shared fixtures: a tiny synthetic config that trains in seconds on a 2-core CPU."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import pytest

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / \
    "cifar10-jpeg.tar.gz"

TINY = {
    "data": {"dataset": "synthetic", "val_size": 100, "synthetic_train": 300,
             "synthetic_test": 100},
    "teacher": {"arch": "cnn4", "stem": "cifar", "epochs": 3, "batch_size": 25},
    "student": {"arch": "cnn4", "stem": "cifar"},
    "train": {"epochs": 2, "batch_size": 25, "lr": 0.05, "eval_batch_size": 256},
    "kd": {"temperature": 4.0, "alpha": 0.9, "label_smoothing": 0.05},
    "prune": {"ratio": 0.0, "finetune_epochs": 0},
    "measure": {"latency": False, "runs": 3, "warmup": 1, "throughput_batch": 8},
    "device": "cpu",
}


@pytest.fixture
def tiny_raw(tmp_path) -> dict:
    """A fresh copy of TINY with its own cache folder."""
    raw = copy.deepcopy(TINY)
    raw["cache_dir"] = str(tmp_path / "cache")
    return raw


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    """One cache folder for the tests that train on the shared CIFAR-10 copy: its decode into
    uint8 arrays (13.6 s on 2 cores) is then done once per session, not once per test."""
    return tmp_path_factory.mktemp("cifar-cache")


@contextlib.contextmanager
def environ(**changes):
    """os.environ with `changes` (None: unset), restored afterwards; for fixtures that outlive
    one test (monkeypatch is per test), e.g. servers and clusters whose processes inherit it."""
    def apply(values: dict):
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    saved = {k: os.environ.get(k) for k in changes}
    apply(changes)
    try:
        yield
    finally:
        apply(saved)


class Interrupt(Exception):
    """What a report callback raises to stop a trial mid-way, as a crash would."""


def interrupt_then_resume(cfg, folder, stop_after: int):
    """Run `cfg` until its report of epoch `stop_after` raises, then resume it from `folder`;
    returns the resumed result and its log lines."""
    from kdtune.trial import run_trial

    def crash(row):
        if row["epoch"] == stop_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(cfg, report=crash, checkpoint_dir=folder, log=lambda m: None)
    logs: list[str] = []
    resumed = run_trial(cfg, checkpoint_dir=folder, resume_from=folder, log=logs.append)
    assert any(f"resuming from epoch {stop_after}" in m for m in logs), logs
    return resumed, logs

