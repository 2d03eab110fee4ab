"""Shared fixtures: a tiny synthetic config that trains in seconds on a 2-core CPU."""

from __future__ import annotations

import copy
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
