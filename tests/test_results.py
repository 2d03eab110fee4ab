"""Tests of kdtune.results, and the fake run folders the dashboard tests reuse (make_fake_run)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdtune.errors import KDTuneError
from kdtune.results import (
    aggregate_seeds,
    latency_column,
    latency_label,
    latency_spread_columns,
    latency_targets,
    load_epochs,
    load_runs,
    pareto_front,
    searched_keys,
    sweep_names,
    t_quantile,
    welch_diff,
)

# ---------------------------------------------------------------------------------------------
# Fake run folders, shaped like what a sweep writes

STUDENTS = {
    # arch: (base accuracy, cpu latency ms, dense size MB, params, stage widths)
    "resnet18": (0.875, 9.0, 44.7, 11_173_962, (64, 128, 256, 512)),
    "mobilenetv2": (0.86, 6.0, 9.2, 2_236_682, (32, 64, 160, 320)),
}
# (T, alpha, label smoothing, prune ratio[, prune method]): alpha 0 is no KD. Twins (equal but
# for T and alpha): rows 0/2/3 and 1/5; the channel-pruned ones have no twin and a single
# no-KD config (an untuned no-KD side).
CONFIGS = [
    (4.0, 0.0, 0.0, 0.0),
    (4.0, 0.0, 0.0, 0.5),
    (2.0, 0.5, 0.0, 0.0),
    (4.0, 0.9, 0.0, 0.0),
    (4.0, 0.9, 0.1, 0.0),
    (4.0, 0.9, 0.0, 0.5),
    (8.0, 0.9, 0.1, 0.7),
    (4.0, 0.9, 0.0, 0.3, "channel"),
    (4.0, 0.9, 0.1, 0.5, "channel"),
    (4.0, 0.0, 0.0, 0.5, "channel"),
]
SEARCH_SPACE = {
    "student.arch": {"choice": list(STUDENTS)},
    "student.stem": {"choice": ["standard", "cifar"]},
    "kd.temperature": {"choice": [2.0, 4.0, 8.0]},
    "kd.alpha": {"choice": [0.0, 0.5, 0.9]},
    "kd.label_smoothing": {"choice": [0.0, 0.1]},
    "prune.ratio": {"choice": [0.0, 0.3, 0.5, 0.7]},
    "prune.method": {"choice": ["unstructured", "channel"]},
}
ROUND_TO = 8  # channel pruning keeps a multiple of 8 channels per layer


def _kept_widths(widths, ratio: float, method: str) -> tuple[int, ...]:
    if method != "channel" or ratio == 0:
        return tuple(widths)
    return tuple(max(ROUND_TO, round(w * (1 - ratio) / ROUND_TO) * ROUND_TO) for w in widths)


def _latency(rng, base_ms: float, measured: dict | None, signature: str) -> tuple:
    """(median, p10, p90) of one timed architecture: trials of one signature share a
    measurement, as the sweep measures each deployed architecture once."""
    if measured is not None and signature in measured:
        return measured[signature]
    median = base_ms * (1 + rng.normal(0, 0.02))
    timing = (median, median * 0.97, median * 1.05)
    if measured is not None:
        measured[signature] = timing
    return timing


def _trial_row(rng, i, student, stem, cfg, seed, status, *, gpu, run_tag, measured=None):
    temp, alpha, ls, ratio = cfg[:4]
    method = cfg[4] if len(cfg) > 4 else "unstructured"
    base, lat, size, params, widths = STUDENTS[student]
    channel = method == "channel" and ratio > 0
    kept = _kept_widths(widths, ratio, method)
    kept_frac = sum(kept) / sum(widths)
    acc = (
        base
        + (0.03 if stem == "cifar" else 0.0)
        + (alpha * 0.015 * min(temp, 4.0) / 4.0)
        + ls * 0.05
        - (0.1 if channel else 0.06) * ratio**2
        + rng.normal(0, 0.003)
    )
    acc = float(np.clip(acc, 0, 1))
    signature = f"{student}|{stem}|32|{','.join(map(str, kept))}"
    # unstructured pruning keeps dense kernels: only removing channels makes a model faster
    lat_base = lat * (1.6 if stem == "cifar" else 1.0) * (kept_frac**1.5 if channel else 1.0)
    lat_cpu, p10_cpu, p90_cpu = _latency(rng, lat_base, measured, signature)
    dense = size * (kept_frac**2 if channel else 1.0)
    nonzero = int(params * (kept_frac**2 if channel else 1 - ratio))
    done = status == "completed"
    epochs = 4 if done else (1 if status == "errored" else 2)
    nan = math.nan

    def measured_only(x):
        return x if done else nan

    def gpu_only(x):
        return x if done and gpu else nan

    row = {
        "trial_id": f"{run_tag}_{i:05d}",
        "status": status,
        "error": "RuntimeError: CUDA out of memory" if status == "errored" else None,
        "group": student,
        "epochs_trained": epochs,
        "wall_s": 30.0 * epochs + rng.uniform(0, 5),
        "checkpoint": f"/runs/{run_tag}/{run_tag}_{i:05d}/model.pt" if done else None,
        "data.dataset": "imagefolder",
        "data.label": "CIFAR-10 (JPEG copy)",
        "teacher.arch": "resnet50",
        "teacher.stem": "cifar",
        "student.arch": student,
        "student.stem": stem,
        "kd.temperature": temp,
        "kd.alpha": alpha,
        "kd.label_smoothing": ls,
        "prune.ratio": ratio,
        "prune.method": method,
        "prune.round_to": ROUND_TO,
        "prune.scope": "global" if ratio > 0 else None,
        "prune.finetune_epochs": 2 if ratio > 0 else 0,
        "train.epochs": 4,
        "train.lr": 0.05,
        "train.batch_size": 128,
        "seed": seed,
        "is_baseline": alpha == 0.0,
        "val_acc": acc + 0.004 if status != "errored" else nan,
        "test_acc": acc if done else nan,
        "teacher_val_acc": 0.953,
        "teacher_test_acc": 0.951,
        "params": int(params * kept_frac**2) if channel else params,
        "nonzero_params": nonzero,
        "size_mb_dense": measured_only(dense),
        # sparse storage pays off only for zeroed weights; a channel-pruned model has none
        "size_mb_sparse": measured_only(dense * 1.9 if channel else size * (1 - ratio) * 1.05),
        "size_mb_disk": measured_only(dense * 1.01),
        "flops": 5.6e8 * (4 if stem == "cifar" else 1) * (kept_frac**2 if channel else 1),
        "sparsity_pruned": 0.0 if channel else ratio,
        "sparsity_total": 0.0 if channel else ratio * 0.98,
        "prune_ratio_achieved": 1 - kept_frac if channel else ratio,
        "arch_signature": signature,
        "latency_ms_b1_gpu": gpu_only(lat_cpu / 6),
        "latency_ms_b1_gpu_p10": gpu_only(p10_cpu / 6),
        "latency_ms_b1_gpu_p90": gpu_only(p90_cpu / 6),
        "throughput_ips_gpu": gpu_only(9000.0),
        "latency_ms_b1_cpu": measured_only(lat_cpu),
        "latency_ms_b1_cpu_p10": measured_only(p10_cpu),
        "latency_ms_b1_cpu_p90": measured_only(p90_cpu),
        "throughput_ips_cpu": measured_only(1000 / lat_cpu),
        "cpu_threads": 1,
        "gpu_device": "cuda NVIDIA H100 80GB HBM3" if gpu else None,
        "cpu_device": "cpu Intel Xeon Platinum 8480",
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "python_version": "3.11.2",
        "torch_version": "2.9.0",
        "torchvision_version": "0.24.0",
        "ray_version": "2.50.0",
        "optuna_version": "4.5.0",
        "device": "cuda" if gpu else "cpu",
    }
    return row


def make_fake_run(
    root: Path,
    name: str = "sweep-a",
    *,
    students=tuple(STUDENTS),
    stems=("standard", "cifar"),
    configs=CONFIGS,
    seeds=(0, 1, 2),
    n_stopped: int = 5,
    n_errored: int = 2,
    gpu: bool = False,
    sweep_yaml: bool = True,
    teacher_measured: bool = True,
    rng_seed: int = 0,
    sweep_name: str | None = None,
) -> Path:
    """Write a realistic run folder (trials.parquet, epochs.parquet, sweep.yaml) and return it.

    ``sweep_name``: the sweep.yaml's search.name (default: the folder's name).
    """
    rng = np.random.default_rng(rng_seed)
    run_dir = Path(root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    measured: dict = {}  # one latency measurement per architecture signature
    for student in students:
        for stem in stems:
            for cfg in configs:
                for seed in seeds:
                    rows.append(
                        _trial_row(rng, len(rows), student, stem, cfg, seed, "completed",
                                   gpu=gpu, run_tag=name, measured=measured)
                    )
    extra = [("stopped", n_stopped), ("errored", n_errored)]
    for status, count in extra:
        for k in range(count):
            student = students[k % len(students)]
            cfg = (2.0, 0.5, 0.1, 0.7)
            rows.append(_trial_row(rng, len(rows), student, stems[0], cfg, 0, status,
                                   gpu=gpu, run_tag=name, measured=measured))
    trials = pd.DataFrame(rows)
    if teacher_measured:
        trials["teacher_latency_ms_b1_cpu"] = 21.5
        trials["teacher_latency_ms_b1_gpu"] = 3.1 if gpu else math.nan
        trials["teacher_size_mb_dense"] = 94.4
    trials.to_parquet(run_dir / "trials.parquet", index=False)

    epochs = []
    for row in rows:
        n_train = min(row["epochs_trained"], row["train.epochs"])
        final = row["val_acc"] if not math.isnan(row["val_acc"]) else 0.8
        for e in range(1, n_train + 1):
            epochs.append({"trial_id": row["trial_id"], "epoch": e, "phase": "train",
                           "val_acc": final - 0.25 * (1 - e / row["train.epochs"]) ** 1.5,
                           "train_loss": 2.0 / e, "lr": 0.05 * (1 - e / (n_train + 1))})
        if row["status"] == "completed":
            for e in range(1, int(row["prune.finetune_epochs"]) + 1):
                epochs.append({"trial_id": row["trial_id"], "epoch": e, "phase": "finetune",
                               "val_acc": final - 0.01 / e, "train_loss": 0.5, "lr": 0.01})
    pd.DataFrame(epochs).to_parquet(run_dir / "epochs.parquet", index=False)
    if sweep_yaml:
        import yaml

        (run_dir / "sweep.yaml").write_text(
            yaml.safe_dump({"search": {"name": sweep_name or name, "space": SEARCH_SPACE,
                                       "num_samples": 10}})
        )
    return run_dir


def write_trials(run_dir: Path, rows: list[dict] | pd.DataFrame,
                 epochs: pd.DataFrame | None = None) -> Path:
    """Overwrite a run folder's trials.parquet (and optionally epochs.parquet)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    df.to_parquet(Path(run_dir) / "trials.parquet", index=False)
    if epochs is not None:
        epochs.to_parquet(Path(run_dir) / "epochs.parquet", index=False)
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    return make_fake_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# pareto_front


def test_pareto_two_objectives_hand_made():
    df = pd.DataFrame(
        {
            "acc": [0.90, 0.92, 0.88, 0.92, 0.80, 0.95],
            "lat": [5.0, 6.0, 4.0, 7.0, 4.5, 10.0],
        },
        index=list("abcdef"),
    )
    front = pareto_front(df, maximize=["acc"], minimize=["lat"])
    # d (0.92 @ 7) is dominated by b (0.92 @ 6); e (0.80 @ 4.5) by c (0.88 @ 4)
    assert front.to_dict() == {"a": True, "b": True, "c": True, "d": False, "e": False, "f": True}
    assert front.dtype == bool and front.name == "on_front"


def test_pareto_ties_kept_and_nan_excluded():
    df = pd.DataFrame(
        {
            "acc": [0.9, 0.9, 0.8, np.nan, 0.99, 0.85],
            "lat": [5.0, 5.0, 3.0, 1.0, np.nan, 3.0],
        }
    )
    front = pareto_front(df, maximize=["acc"], minimize=["lat"])
    # rows 0 and 1 are identical: both kept; NaN rows 3 and 4 never on the front (and dominate
    # nothing: row 2 stays although row 3 would be faster); row 5 ties row 2 on latency and wins
    assert front.tolist() == [True, True, False, False, False, True]


def test_pareto_three_objectives():
    df = pd.DataFrame(
        {
            "acc": [0.90, 0.90, 0.85, 0.95, 0.89],
            "lat": [5.0, 5.0, 3.0, 9.0, 5.0],
            "size": [10.0, 8.0, 4.0, 40.0, 9.0],
        }
    )
    front = pareto_front(df, maximize=["acc"], minimize=["lat", "size"])
    # row 0 is dominated by row 1 (same acc and latency, smaller); row 4 by row 1
    assert front.tolist() == [False, True, True, True, False]
    # on two objectives only, rows 0 and 1 tie and are both kept
    assert pareto_front(df, maximize=["acc"], minimize=["lat"]).tolist() == [
        True, True, True, True, False
    ]


def test_pareto_all_dominated_by_one_point():
    df = pd.DataFrame({"acc": [0.5, 0.6, 0.7, 0.99], "lat": [9.0, 8.0, 7.0, 1.0],
                       "size": [5.0, 5.0, 5.0, 1.0]})
    assert pareto_front(df, ["acc"], ["lat"]).tolist() == [False, False, False, True]
    assert pareto_front(df, ["acc"], ["lat", "size"]).tolist() == [False, False, False, True]


def test_pareto_edge_cases():
    empty = pd.DataFrame({"a": [], "b": []})
    assert pareto_front(empty, ["a"], ["b"]).empty
    all_nan = pd.DataFrame({"a": [np.nan, 1.0], "b": [1.0, np.nan]})
    assert not pareto_front(all_nan, ["a"], ["b"]).any()
    with pytest.raises(ValueError, match="2 or 3"):
        pareto_front(empty, ["a"], [])
    with pytest.raises(ValueError, match="2 or 3"):
        pareto_front(pd.DataFrame({c: [1.0] for c in "abcd"}), ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="no column"):
        pareto_front(empty, ["a"], ["zzz"])


def test_pareto_matches_brute_force_on_random_table():
    rng = np.random.default_rng(3)
    df = pd.DataFrame(rng.integers(0, 6, size=(300, 3)).astype(float), columns=["x", "y", "z"])
    df.loc[rng.choice(300, 20, replace=False), "y"] = np.nan
    front = pareto_front(df, maximize=["x"], minimize=["y", "z"])
    pts = np.column_stack([df.x, -df.y, -df.z])
    for i, p in enumerate(pts):
        if np.isnan(p).any():
            assert not front.iloc[i]
            continue
        others = pts[~np.isnan(pts).any(axis=1)]
        dominated = any((q >= p).all() and (q > p).any() for q in others)
        assert front.iloc[i] == (not dominated)


# ---------------------------------------------------------------------------------------------
# statistics and seed aggregation


def test_t_quantile_matches_tables():
    for dof, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                          (1000, 1.9623)]:
        assert t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    assert t_quantile(0.975, 8) < t_quantile(0.975, 7.5) < t_quantile(0.975, 7)  # Welch dof


def test_aggregate_seeds_by_hand():
    base = {c: v for c, v in _trial_row(np.random.default_rng(0), 0, "resnet18", "cifar",
                                        (4.0, 0.9, 0.0, 0.0), 0, "completed", gpu=False,
                                        run_tag="r").items()}
    accs = [0.90, 0.92, 0.94]
    rows = []
    for seed, acc in enumerate(accs):
        rows.append({**base, "trial_id": f"t{seed}", "seed": seed, "test_acc": acc,
                     "val_acc": acc, "latency_ms_b1_cpu": 10.0 + seed, "run": "r"})
    # a second config with one seed, a stopped and an errored trial of the first config
    rows.append({**base, "trial_id": "solo", "seed": 0, "kd.alpha": 0.5, "test_acc": 0.8,
                 "val_acc": 0.8, "run": "r"})
    rows.append({**base, "trial_id": "stop", "seed": 5, "status": "stopped", "test_acc": np.nan,
                 "run": "r"})
    rows.append({**base, "trial_id": "err", "seed": 6, "status": "errored", "run": "r"})
    agg = aggregate_seeds(pd.DataFrame(rows))
    assert len(agg) == 2
    main = agg[agg["kd.alpha"] == 0.9].iloc[0]
    assert main["n_seeds"] == 3 and main["seeds"] == "0,1,2"
    assert main["trial_ids"] == "t0;t1;t2"
    assert main["test_acc_mean"] == pytest.approx(0.92)
    std = math.sqrt(((0.02) ** 2 + 0 + 0.02**2) / 2)
    assert main["test_acc_std"] == pytest.approx(std)
    assert main["test_acc_n"] == 3
    assert main["test_acc_ci95"] == pytest.approx(4.302653 * std / math.sqrt(3), rel=1e-5)
    assert main["latency_ms_b1_cpu_mean"] == pytest.approx(11.0)
    assert main["best_trial_id"] == "t2"
    assert main["best_checkpoint"] == base["checkpoint"]
    solo = agg[agg["kd.alpha"] == 0.5].iloc[0]
    assert solo["n_seeds"] == 1 and solo["test_acc_mean"] == pytest.approx(0.8)
    assert math.isnan(solo["test_acc_std"]) and math.isnan(solo["test_acc_ci95"])


def test_aggregate_seeds_on_fake_run(run_dir):
    df = load_runs(run_dir)
    agg = aggregate_seeds(df)
    assert len(agg) == len(STUDENTS) * 2 * len(CONFIGS)
    assert (agg["n_seeds"] == 3).all()
    done = df[df.status == "completed"]
    one = agg.iloc[5]
    members = done[done.trial_id.isin(one["trial_ids"].split(";"))]
    assert one["test_acc_mean"] == pytest.approx(members.test_acc.mean())
    assert one["size_mb_sparse_std"] == pytest.approx(members.size_mb_sparse.std())
    assert "seed" not in agg.columns
    assert aggregate_seeds(df[df.status != "completed"]).empty


def test_welch_diff():
    diff, lo, hi = welch_diff(0.92, 0.01, 3, 0.90, 0.01, 3)
    assert diff == pytest.approx(0.02)
    half = t_quantile(0.975, 4) * math.sqrt(2 * 0.01**2 / 3)
    assert (lo, hi) == pytest.approx((0.02 - half, 0.02 + half))
    assert math.isnan(welch_diff(0.9, 0.0, 1, 0.8, 0.01, 3)[1])


# ---------------------------------------------------------------------------------------------
# loading


def test_load_runs_several_folders(tmp_path):
    a = make_fake_run(tmp_path, "a")
    b = make_fake_run(tmp_path, "b", students=("resnet18",), gpu=True, rng_seed=1)
    df = load_runs(a, b)
    assert set(df.run) == {"a", "b"}
    assert len(df) == len(pd.read_parquet(a / "trials.parquet")) + len(
        pd.read_parquet(b / "trials.parquet"))
    assert set(df.status) == {"completed", "stopped", "errored"}
    assert df["is_baseline"].dtype == bool
    ep = load_epochs(a, b)
    assert set(ep.run) == {"a", "b"} and {"epoch", "phase", "val_acc"} <= set(ep.columns)
    assert latency_column(df) == "latency_ms_b1_gpu"  # b measured a GPU
    assert "NVIDIA H100" in latency_label(df)
    assert latency_column(load_runs(a)) == "latency_ms_b1_cpu"
    assert latency_label(load_runs(a)) == (
        "batch-1 latency (ms, cpu Intel Xeon Platinum 8480, 1 thread)")


def test_load_runs_errors_name_the_folder(tmp_path):
    with pytest.raises(KDTuneError, match="nowhere"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDTuneError, match=r"empty has no trials\.parquet"):
        load_runs(tmp_path / "empty")
    run = make_fake_run(tmp_path, "cut")
    df = pd.read_parquet(run / "trials.parquet").drop(columns=["test_acc", "kd.alpha"])
    write_trials(run, df)
    with pytest.raises(KDTuneError, match=r"cut.*kd\.alpha, test_acc") as err:
        load_runs(run)
    assert "\n" not in str(err.value)
    run = make_fake_run(tmp_path, "pct")
    df = pd.read_parquet(run / "trials.parquet")
    df["test_acc"] *= 100
    write_trials(run, df)
    with pytest.raises(KDTuneError, match="test_acc must be a fraction"):
        load_runs(run)
    df["test_acc"] /= 100
    df.loc[0, "status"] = "paused"
    write_trials(run, df)
    with pytest.raises(KDTuneError, match="unknown trial status paused"):
        load_runs(run)
    (run / "epochs.parquet").unlink()
    with pytest.raises(KDTuneError, match="no epochs.parquet"):
        load_epochs(run)
    assert load_epochs(run, missing_ok=True).empty


NEW_COLUMNS = ["prune.method", "prune.round_to", "prune_ratio_achieved", "arch_signature",
               "latency_ms_b1_cpu_p10", "latency_ms_b1_gpu_p10"]


def test_optional_columns_filled(tmp_path):
    run = make_fake_run(tmp_path, "old", teacher_measured=False, configs=CONFIGS[:7])
    df = pd.read_parquet(run / "trials.parquet").drop(columns=["flops", "git_sha",
                                                              *NEW_COLUMNS])
    write_trials(run, df)
    loaded = load_runs(run)
    assert loaded["flops"].isna().all() and loaded["git_sha"].isna().all()
    assert loaded["teacher_size_mb_dense"].isna().all()
    # a run written before channel pruning existed: every pruning was unstructured
    assert (loaded["prune.method"] == "unstructured").all()
    for col in ("prune.round_to", "prune_ratio_achieved", "latency_ms_b1_cpu_p10"):
        assert loaded[col].isna().all(), col
    assert loaded["arch_signature"].isna().all()
    # and it pools with a new run whose trials say how they were pruned
    new = make_fake_run(tmp_path, "new")
    both = load_runs(run, new)
    methods = both.groupby("run")["prune.method"].agg(lambda v: set(v))
    assert methods["old"] == {"unstructured"} and methods["new"] == {"unstructured", "channel"}
    agg = aggregate_seeds(both)
    assert {"prune.method", "prune.round_to"} <= set(agg.columns)


def test_new_columns_are_aggregated(run_dir):
    df = load_runs(run_dir)
    assert df["prune.round_to"].dtype == float and df["prune.method"].notna().all()
    agg = aggregate_seeds(df)
    done = df[df.status == "completed"]
    channel = agg[(agg["prune.method"] == "channel") & (agg["prune.ratio"] == 0.3)].iloc[0]
    members = done[done.trial_id.isin(channel["trial_ids"].split(";"))]
    for m in ("latency_ms_b1_cpu_p10", "latency_ms_b1_cpu_p90", "prune_ratio_achieved"):
        assert channel[f"{m}_mean"] == pytest.approx(members[m].mean()), m
    assert channel["arch_signature"] == members["arch_signature"].iloc[0]
    # one measurement per signature: every config of one signature has the same latency
    per_sig = done.groupby("arch_signature")["latency_ms_b1_cpu"].nunique()
    assert (per_sig == 1).all() and len(per_sig) > 4
    bad = pd.read_parquet(run_dir / "trials.parquet")
    bad["prune_ratio_achieved"] *= 100
    write_trials(run_dir, bad)
    with pytest.raises(KDTuneError, match="prune_ratio_achieved must be a fraction"):
        load_runs(run_dir)


def test_latency_per_target(tmp_path):
    run = make_fake_run(tmp_path, "both", students=("resnet18",), gpu=True)
    df = load_runs(run)
    assert latency_targets(df) == ["gpu", "cpu"]
    assert latency_column(df) == latency_column(df, "gpu") == "latency_ms_b1_gpu"
    assert latency_column(df, "cpu") == "latency_ms_b1_cpu"
    assert latency_label(df, "gpu") == "batch-1 latency (ms, cuda NVIDIA H100 80GB HBM3)"
    assert latency_label(df, "cpu") == (
        "batch-1 latency (ms, cpu Intel Xeon Platinum 8480, 1 thread)")
    agg = aggregate_seeds(df)
    assert latency_column(agg, "cpu") == "latency_ms_b1_cpu_mean"
    assert latency_spread_columns("latency_ms_b1_cpu_mean") == (
        "latency_ms_b1_cpu_p10_mean", "latency_ms_b1_cpu_p90_mean")
    assert latency_spread_columns("latency_ms_b1_gpu") == (
        "latency_ms_b1_gpu_p10", "latency_ms_b1_gpu_p90")
    cpu_only = load_runs(make_fake_run(tmp_path, "cpu", students=("resnet18",)))
    assert latency_targets(cpu_only) == ["cpu"] and latency_column(cpu_only, "gpu") is None
    assert "GPU; not measured" in latency_label(cpu_only, "gpu")
    with pytest.raises(ValueError, match="target"):
        latency_column(df, "tpu")


def test_sweep_names(tmp_path):
    a = make_fake_run(tmp_path, "a", students=("resnet18",), sweep_name="kd_prune")
    b = make_fake_run(tmp_path, "b", students=("resnet18",), sweep_name="stem_ablation")
    c = make_fake_run(tmp_path, "c", students=("resnet18",), sweep_yaml=False)
    assert sweep_names([a]) == ["kd_prune"]
    assert sweep_names([a, b, a]) == ["kd_prune", "stem_ablation"]
    assert sweep_names([c]) == ["c"]  # no sweep.yaml: the folder's name


def test_searched_keys_from_yaml_or_inferred(tmp_path):
    run = make_fake_run(tmp_path, "y")
    df = load_runs(run)
    assert set(searched_keys(df, [run])) == set(SEARCH_SPACE)
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "sweep.yaml").write_text(
        "search:\n  space:\n    kd:\n      temperature: {choice: [2, 4]}\n"
        "    prune.ratio: {uniform: [0, 0.9]}\n")
    assert searched_keys(df, [nested]) == ["kd.temperature", "prune.ratio"]
    (run / "sweep.yaml").unlink()
    inferred = searched_keys(df, [run])
    assert set(inferred) >= set(SEARCH_SPACE)  # every searched key varies in the fake run
    assert "seed" not in inferred and "train.lr" not in inferred


def _with_kd_method(df: pd.DataFrame, method: str, **metrics) -> pd.DataFrame:
    """A trials table as a sweep since kd.method writes it: the method, its keys (defaults)
    and what the trial ran."""
    return df.assign(**{"kd.method": method, "kd.feature_weight": None, "kd.dkd_alpha": 1.0,
                        "kd.dkd_beta": 8.0, "kd.dkd_warmup": None,
                        "kd_method": np.where(df["kd.alpha"] == 0, "none", method),
                        "kd_feature_weight": None, "teacher_cache": "views",
                        "train_step_ms": 12.0, **metrics})


def test_kd_method_columns_old_and_new_runs(tmp_path):
    small = dict(students=("resnet18",), stems=("cifar",), configs=CONFIGS[:4], n_stopped=0,
                 n_errored=0, sweep_yaml=False)
    old = make_fake_run(tmp_path, "old", **small)
    loaded = load_runs(old)
    # written before kd.method: logit KD with the default keys, kd_method from the config
    assert (loaded["kd.method"] == "logit").all()
    assert loaded["kd_method"].tolist() == [
        "none" if a == 0 else "logit" for a in loaded["kd.alpha"]]
    assert (loaded["kd.dkd_alpha"] == 1.0).all() and (loaded["kd.dkd_beta"] == 8.0).all()
    for col in ("kd.feature_weight", "kd.dkd_warmup", "train_step_ms", "kd_feature_weight",
                "kd_dkd_warmup_epochs"):
        assert loaded[col].dtype == float and loaded[col].isna().all(), col
    assert loaded["teacher_cache"].isna().all()

    # a new run of the same configs on other seeds, plus a DKD twin of the α = 0.9 config
    new = make_fake_run(tmp_path, "new", seeds=(3, 4), rng_seed=1, **small)
    df = _with_kd_method(pd.read_parquet(new / "trials.parquet"), "logit")
    dkd = _with_kd_method(df[df["kd.alpha"] == 0.9], "dkd", kd_dkd_warmup_epochs=1,
                          train_step_ms=15.0)
    dkd = dkd.assign(trial_id=dkd["trial_id"] + "_dkd", test_acc=0.95)
    df.loc[df.index[0], "kd_method"] = None  # errored before its final report, say
    write_trials(new, pd.concat([df, dkd], ignore_index=True))
    both = load_runs(old, new)
    assert both["kd_method"].notna().all()
    assert both["kd.dkd_warmup"].dtype == float
    agg = aggregate_seeds(both)
    assert {"kd.method", "kd.dkd_beta", "kd_method", "teacher_cache"} <= set(agg.columns)
    # grouped by kd.method: the logit config pools both runs' seeds, its DKD twin stands apart
    kd09 = agg[agg["kd.alpha"] == 0.9].set_index("kd.method")
    assert len(agg) == 4 + 1 and sorted(kd09.index) == ["dkd", "logit"]
    assert kd09.loc["logit", "n_seeds"] == 5 and kd09.loc["logit", "seeds"] == "0,1,2,3,4"
    assert kd09.loc["dkd", "n_seeds"] == 2 and kd09.loc["dkd", "kd_method"] == "dkd"
    assert kd09.loc["dkd", "test_acc_mean"] == pytest.approx(0.95)
    assert kd09.loc["dkd", "train_step_ms_mean"] == pytest.approx(15.0)
    assert kd09.loc["dkd", "kd_dkd_warmup_epochs_mean"] == pytest.approx(1.0)
    assert kd09.loc["logit", "train_step_ms_n"] == 2  # measured in the new run only
    assert kd09.loc["logit", "teacher_cache"] == "views"
    assert set(agg.loc[agg["kd.alpha"] == 0, "kd_method"]) == {"none"}


# ---------------------------------------------------------------------------------------------
# teachers and student families (ViT students, teacher ensembles)

ENSEMBLE = '[{"arch": "resnet20", "stem": "cifar"}, {"arch": "vit_tiny", "stem": "cifar"}]'
MEMBERS = ('[{"name": "resnet20/cifar", "val_acc": 0.921, "test_acc": 0.92}, '
           '{"name": "vit_tiny", "val_acc": 0.805, "test_acc": 0.8}]')


def test_teacher_and_family_columns_load_from_parquet(tmp_path):
    run = make_fake_run(tmp_path, "new", students=("resnet18",), stems=("cifar",),
                        configs=CONFIGS[:4], seeds=(0, 1), n_stopped=0, n_errored=0)
    df = pd.read_parquet(run / "trials.parquet")
    ens = df.index % 2 == 1
    df["teacher.ensemble"] = np.where(ens, ENSEMBLE, None)
    df["teacher_name"] = np.where(ens, "ensemble resnet20/cifar + vit_tiny", "vit_tiny")
    df["teacher_members"] = np.where(ens, MEMBERS, None)
    df["student_family"] = "vit"
    write_trials(run, df)
    out = load_runs(run)
    assert out["teacher_name"].tolist() == df["teacher_name"].tolist()
    assert out["teacher.ensemble"].tolist() == df["teacher.ensemble"].tolist()
    assert out["teacher_members"].tolist() == df["teacher_members"].tolist()
    assert set(out["student_family"]) == {"vit"}
    agg = aggregate_seeds(out)
    # teacher.ensemble is a config key: seed 1 (the ensemble) no longer pools with seed 0
    assert len(agg) == 2 * 4 and set(agg["n_seeds"]) == {1}
    assert set(agg["teacher_name"]) == set(df["teacher_name"])
    for _, row in agg.iterrows():
        members = out[out.trial_id.isin(row["trial_ids"].split(";"))]
        assert set(members["teacher_name"]) == {row["teacher_name"]}
        assert row["student_family"] == "vit"


def test_old_run_without_teacher_columns_derives_them(tmp_path):
    run = make_fake_run(tmp_path, "old", students=("resnet18",), configs=CONFIGS[:3],
                        seeds=(0,))
    df = pd.read_parquet(run / "trials.parquet")
    assert not {"teacher_name", "teacher.ensemble", "teacher_members",
                "student_family"} & set(df.columns)
    out = load_runs(run)
    assert set(out["teacher_name"]) == {"resnet50/cifar"}
    assert set(out["student_family"]) == {"cnn"}
    assert out["teacher.ensemble"].isna().all() and out["teacher_members"].isna().all()
    # rows that lack a value (an errored trial) get it from their config: a ViT teacher has
    # no stem, an ensemble is named after its members
    df["teacher_name"] = None
    df["teacher.ensemble"] = None
    df.loc[0, "teacher.arch"] = "vit_tiny"
    df.loc[1, "teacher.ensemble"] = ENSEMBLE
    df.loc[2, "teacher_name"] = "resnet56/cifar"
    df["student_family"] = None
    df.loc[3, "student.arch"] = "vit_tiny_d6"
    write_trials(run, df)
    out = load_runs(run)
    assert out["teacher_name"].tolist()[:4] == ["vit_tiny", "ensemble resnet20/cifar + vit_tiny",
                                                "resnet56/cifar", "resnet50/cifar"]
    assert out["student_family"].tolist()[:4] == ["cnn", "cnn", "cnn", "vit"]
