"""The notebook API (kdtune/api.py, kdtune/__init__.py): light to import, the command line's work
as functions returning tables, one-line errors for mistakes. The explore notebook itself runs in
tests/test_sweep.py on that module's sweep.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import kdtune
from kdtune.errors import KDTuneError

ROOT = Path(__file__).resolve().parents[1]


def test_import_kdtune_loads_neither_torch_nor_ray():
    code = ("import sys, kdtune; f = kdtune.pareto_front; d = kdtune.dashboard; "
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]"
    assert set(kdtune.__all__) >= {"run_sweep", "run_trial", "load_results", "pareto_front",
                                   "dashboard"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kdtune.nope  # noqa: B018


def test_api_mistakes_are_one_line_errors(tiny_raw):
    with pytest.raises(KDTuneError, match="unknown option 'resum'; allowed: resume, out"):
        kdtune.run_sweep({"search": {}}, resum=True)
    with pytest.raises(KDTuneError, match="no 'search' section.*run_trial"):
        kdtune.run_sweep(tiny_raw)
    with pytest.raises(KDTuneError, match="'search' section.*run_sweep"):
        kdtune.run_trial({**tiny_raw, "search": {}})
    with pytest.raises(KDTuneError, match="overrides are a dict"):
        kdtune.run_trial(tiny_raw, [("kd.alpha", 0.5)])
    with pytest.raises(KDTuneError, match="kd.nope"):
        kdtune.run_trial(tiny_raw, {"kd.nope": 1})
    with pytest.raises(KDTuneError, match="pareto_front: pareto_front needs 2 or 3"):
        kdtune.pareto_front(pd.DataFrame({"val_acc": [0.5]}), "val_acc")


def test_run_trial_from_a_dict_returns_metrics_history_model_and_files(tiny_raw, tmp_path):
    import torch

    out = tmp_path / "t"
    r = kdtune.run_trial(tiny_raw, {"kd.alpha": 0.5, "train.epochs": 1}, out=out,
                         log=lambda m: None)
    assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    assert [h["epoch"] for h in r["history"]] == [1]
    assert isinstance(r["model"], torch.nn.Module)
    assert Path(r["checkpoint"]).is_file()
    saved = json.loads((out / "result.json").read_text())
    assert saved["config"]["kd"]["alpha"] == 0.5
    assert saved["metrics"]["val_acc"] == pytest.approx(r["val_acc"])
    assert "model" not in saved["metrics"]


def test_pareto_front_returns_the_front_rows_cheapest_first():
    df = pd.DataFrame({"trial_id": list("abcde"), "val_acc": [0.5, 0.7, 0.6, 0.9, None],
                       "latency_ms_b1_cpu": [1.0, 2.0, 3.0, 4.0, 0.1]})
    front = kdtune.pareto_front(df, maximize="val_acc", minimize=["latency_ms_b1_cpu"])
    assert front["trial_id"].tolist() == ["a", "b", "d"]  # c is beaten by b; e has no accuracy


def test_run_sweep_from_a_dict_returns_its_trials_and_the_figures_read_them(tmp_path, tiny_raw):
    """A whole sweep the way a notebook runs it (in its own process: Ray starts in it)."""
    # no KD (no teacher to prepare) and one epoch: the API is under test, not the training
    space = {**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1},
             "kd": {**tiny_raw["kd"], "alpha": 0.0},
             "search": {"name": "nb", "num_samples": 2, "seeds": [0], "max_concurrent": 1,
                        "scheduler": "fifo", "measure_after": False,
                        "space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}}}
    out = tmp_path / "run"
    code = (f"import json, kdtune; df = kdtune.run_sweep(json.loads({json.dumps(json.dumps(space))}),"
            f" {{'search.seeds': [3]}}, out={str(out)!r}); "
            "print('ROWS', len(df), sorted({int(s) for s in df['seed']}), df.attrs['run'])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"ROWS 2 [3] {out}" in p.stdout
    assert yaml.safe_load((out / "sweep.yaml").read_text())["search"]["seeds"] == [3]
    assert len(kdtune.load_results(out)) == 2
    figs = kdtune.dashboard.figures(out)
    assert "parcoords" in figs and "curves" in figs
    assert all(hasattr(f, "to_dict") for f in figs.values())
    with pytest.raises(KDTuneError, match="already holds a sweep"):
        kdtune.run_sweep(space, out=out)
