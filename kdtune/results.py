"""Load sweep results, aggregate seeds and find Pareto fronts.

A sweep writes two Parquet files into its run folder:

* ``trials.parquet``: one row per trial: identity (``trial_id``, ``status``, ``error``, ...), the
  flattened config under dotted keys (``kd.temperature``, ``prune.ratio``, ...), the final metrics
  with their unit in the name (``test_acc`` as a fraction, ``latency_ms_b1_cpu`` in milliseconds,
  ``size_mb_sparse`` in MB = 1e6 bytes, ...) and the provenance (``git_sha``, library versions).
* ``epochs.parquet``: one row per trial and epoch (``val_acc``, ``train_loss``, ``lr``).

Newer sweeps also write ``prune.method`` ("unstructured" or "channel"; an older run, which lacks
it, pruned unstructured), ``prune.round_to``, ``prune_ratio_achieved``, the spread of each latency
(``latency_ms_b1_<gpu|cpu>_p10``/``_p90``) and ``arch_signature`` (architecture|stem|input
size|widths: trials with the same signature share one latency measurement). With
``measure.onnx`` they also write onnxruntime's CPU figures of each student's ONNX export, fp32
and static INT8 (``latency_ms_b1_onnx_<fp32|int8>`` with ``_p10``/``_p90`` and
``onnx_device``, ``size_mb_onnx_<fp32|int8>``, ``val_acc_onnx_int8``, ``test_acc_onnx_int8``,
``test_acc_onnx_fp32``, ``test_agree_onnx_int8``): two more latency targets.

Since ``kd.method`` exists (logit | fitnets | attention | dkd) a row also carries it and its keys
(``kd.feature_weight``, ``kd.dkd_alpha``, ``kd.dkd_beta``, ``kd.dkd_warmup``; an older run, which
lacks them, distilled logits with the defaults) and what the trial ran: ``kd_method`` ("none" at
``kd.alpha`` = 0, else the method), ``kd_feature_weight`` (resolved), ``kd_dkd_warmup_epochs``,
``teacher_cache`` ("views" | "none") and ``train_step_ms`` (median step time).

Since ViT students and teacher ensembles exist a row also carries ``teacher_name`` (the teacher
it distilled from: ``"resnet20/cifar"``, ``"vit_tiny"`` (a vision transformer has no stem) or
``"ensemble resnet20/cifar + vit_tiny"``; a no-KD row names the configured teacher, with
``teacher_test_acc`` NaN), ``teacher.ensemble`` (the members' configs as JSON text, or None),
``teacher_members`` (JSON text: ``[{"name", "val_acc", "test_acc"}, ...]`` of an ensemble, else
None) and ``student_family`` ("cnn" | "vit"; a ViT's ``student.stem`` means nothing). An older
run lacks them: ``teacher_name`` is derived from ``teacher.arch``/``teacher.stem`` and the
family is "cnn".

This module turns one or several run folders into one DataFrame (:func:`load_runs`,
:func:`load_epochs`), averages the seeds of each distinct config (:func:`aggregate_seeds`) and
finds the non-dominated rows (:func:`pareto_front`). Everything here is pure pandas/numpy: the
plots live in :mod:`kdtune.dashboard`.

Conventions:

* accuracies stay fractions in [0, 1] in every DataFrame; only displays and exports use percent;
* only *completed* trials are aggregated and can be on a front: early-stopped (ASHA) and errored
  trials have no final measurements;
* the 95 % confidence interval is the Student-t half-width ``t(0.975, n-1) * std / sqrt(n)``; with a
  single seed (n = 1) there is no spread to estimate and ``*_std`` and ``*_ci95`` are NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune.config import KDConfig
from kdtune.errors import KDTuneError

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
SWEEP_FILE = "sweep.yaml"

STATUSES = ("completed", "stopped", "errored")

#: Config columns every trials.parquet must have (dotted keys of the flattened config).
CONFIG_COLUMNS = (
    "data.dataset",
    "data.label",
    "teacher.arch",
    "teacher.stem",
    "student.arch",
    "student.stem",
    "kd.temperature",
    "kd.alpha",
    "kd.label_smoothing",
    "prune.ratio",
    "prune.scope",
    "prune.finetune_epochs",
    "train.epochs",
    "train.lr",
    "train.batch_size",
    "seed",
    "is_baseline",
)

#: The metrics every trials.parquet carries (NaN where not measured), read as numbers.
NUMERIC_METRIC_COLUMNS = (
    "val_acc",
    "test_acc",
    "teacher_test_acc",
    "size_mb_dense",
    "size_mb_sparse",
    "latency_ms_b1_gpu",
    "latency_ms_b1_cpu",
)
#: Columns without which no dashboard can be drawn: a trials.parquet lacking one is refused.
REQUIRED_COLUMNS = ("trial_id", "status", "group", *CONFIG_COLUMNS, *NUMERIC_METRIC_COLUMNS)

#: onnxruntime on the CPU (measure.onnx; kdtune.export): batch-1 latency of the fp32 and the
#: static INT8 file, shared per arch_signature like the PyTorch latency; file sizes and
#: accuracies per trial (each trial's own weights, each INT8 its own calibration);
#: test_agree_onnx_int8: share of test images on which the INT8 top-1 class is the fp32 one's.
ONNX_COLUMNS = (
    "latency_ms_b1_onnx_fp32",
    "latency_ms_b1_onnx_fp32_p10",
    "latency_ms_b1_onnx_fp32_p90",
    "latency_ms_b1_onnx_int8",
    "latency_ms_b1_onnx_int8_p10",
    "latency_ms_b1_onnx_int8_p90",
    "size_mb_onnx_fp32",
    "size_mb_onnx_int8",
    "val_acc_onnx_int8",
    "test_acc_onnx_int8",
    "test_acc_onnx_fp32",
    "test_agree_onnx_int8",
)

#: Columns the sweep writes but that may be absent (older runs): filled with NaN / None on load.
OPTIONAL_NUMERIC_COLUMNS = (
    "epochs_trained",
    "wall_s",
    "restarts",
    "bookkeeping_ms",
    "epoch_ms",
    "teacher_val_acc",
    "params",
    "nonzero_params",
    "size_mb_disk",
    "flops",
    "sparsity_pruned",
    "sparsity_total",
    # The spread of a latency measurement: 10th and 90th percentile of the timed calls.
    "latency_ms_b1_gpu_p10",
    "latency_ms_b1_gpu_p90",
    "throughput_ips_gpu",
    "latency_ms_b1_cpu_p10",
    "latency_ms_b1_cpu_p90",
    "throughput_ips_cpu",
    "cpu_threads",
    # How many completed trials share that one measurement (same arch_signature).
    "latency_shared_by",
    # Channels removed (channel pruning) or weights zeroed (unstructured), as a fraction.
    "prune_ratio_achieved",
    # Teacher measurements, used for the teacher row of results.csv when the sweep wrote them.
    "teacher_latency_ms_b1_gpu",
    "teacher_latency_ms_b1_cpu",
    "teacher_size_mb_dense",
    *ONNX_COLUMNS,
    # Median time of one training step (ms), and what the KD method resolved to: the feature
    # weight of fitnets/attention, the warm-up epochs of dkd (None for the other methods).
    "train_step_ms",
    "kd_feature_weight",
    "kd_dkd_warmup_epochs",
)
#: Which code made the numbers (kdtune.trial.provenance writes them into every row).
VERSION_COLUMNS = (
    "git_sha",
    "python_version",
    "torch_version",
    "torchvision_version",
    "ray_version",
    "optuna_version",
)
#: How a trial really ran (resolved from train.precision / train.channels_last and the device;
#: gpu_/cpu_precision: of the latency measurement) and where (a cluster's node, Ray's GPU ids).
RUNTIME_COLUMNS = ("precision", "channels_last", "gpu_precision", "cpu_precision", "node",
                   "ray_gpu_ids")
#: ``arch_signature``: architecture|stem|input size|widths; trials with the same signature share
#: one latency measurement (pruning that keeps every channel cannot change the latency).
#: ``onnx_device``: where and with what the onnxruntime latencies ran ("cpu AMD EPYC,
#: onnxruntime 1.32.0, 1 thread"); ``onnx_int8_recipe``: how the INT8 files were quantized;
#: ``onnx_error``: why a network has no ONNX figures.
ONNX_TEXT_COLUMNS = ("onnx_device", "onnx_int8_recipe", "onnx_error")
#: What a trial ran: ``kd_method`` ("none" at kd.alpha = 0, else kd.method; derived from the
#: config where a row lacks it) and ``teacher_cache`` ("views": the view cache, "none": the
#: teacher online, or no teacher at all).
KD_TEXT_COLUMNS = ("kd_method", "teacher_cache")
#: Who taught and what learnt: ``teacher_name`` ("resnet20/cifar", "vit_tiny", "ensemble
#: resnet20/cifar + vit_tiny"; derived from teacher.arch/stem where a row lacks it),
#: ``teacher_members`` (an ensemble's members as JSON text) and ``student_family`` ("cnn" |
#: "vit"; "cnn" where a run predates it).
TEACHER_TEXT_COLUMNS = ("teacher_name", "teacher_members", "student_family")
OPTIONAL_TEXT_COLUMNS = ("error", "checkpoint", "gpu_device", "cpu_device", *VERSION_COLUMNS,
                         "device", *RUNTIME_COLUMNS, "arch_signature", *ONNX_TEXT_COLUMNS,
                         *KD_TEXT_COLUMNS, *TEACHER_TEXT_COLUMNS)
#: Config columns holding text that may be None (teacher.ensemble: JSON text of the members'
#: configs; None for one teacher and in older runs).
OPTIONAL_TEXT_CONFIG_COLUMNS = ("teacher.ensemble",)
STUDENT_FAMILIES = ("cnn", "vit")
_KD_DEFAULTS = KDConfig()
#: Config columns newer sweeps write, with the value an older run (which lacks them) implied:
#: before prune.method existed every pruning was unstructured; before kd.method every KD was
#: logit KD, and the method keys had their defaults (inert for logit, but equal values let an
#: old run's seeds pool with a new run's of the same config).
OPTIONAL_CONFIG_COLUMNS = {
    "prune.method": "unstructured",
    "prune.round_to": math.nan,
    "kd.method": _KD_DEFAULTS.method,
    "kd.feature_weight": math.nan,
    "kd.dkd_alpha": _KD_DEFAULTS.dkd_alpha,
    "kd.dkd_beta": _KD_DEFAULTS.dkd_beta,
    "kd.dkd_warmup": math.nan,
}
PRUNE_METHODS = ("unstructured", "channel")
#: kd_method of a trial that did not distil (kd.alpha = 0), whatever its kd.method says.
NO_KD = "none"
PROVENANCE_COLUMNS = ("device", "precision", "channels_last", "gpu_device", "gpu_precision",
                      "cpu_device", "cpu_precision", "cpu_threads", "onnx_device",
                      "onnx_int8_recipe", *VERSION_COLUMNS, "data.dataset", "data.label")

NUMERIC_CONFIG_COLUMNS = (
    "kd.temperature",
    "kd.alpha",
    "kd.label_smoothing",
    "prune.ratio",
    "prune.finetune_epochs",
    "train.epochs",
    "train.lr",
    "train.batch_size",
    "seed",
    "prune.round_to",
    "kd.feature_weight",
    "kd.dkd_alpha",
    "kd.dkd_beta",
    "kd.dkd_warmup",
)
FRACTION_COLUMNS = ("val_acc", "test_acc", "teacher_test_acc", "teacher_val_acc", "kd.alpha",
                    "prune_ratio_achieved", "val_acc_onnx_int8", "test_acc_onnx_int8",
                    "test_acc_onnx_fp32", "test_agree_onnx_int8")

#: Metrics that :func:`aggregate_seeds` summarises (mean, std, n, ci95) when present.
AGG_METRICS = (
    "test_acc",
    "val_acc",
    "teacher_test_acc",
    "teacher_val_acc",
    "latency_ms_b1_gpu",
    "latency_ms_b1_gpu_p10",
    "latency_ms_b1_gpu_p90",
    "throughput_ips_gpu",
    "latency_ms_b1_cpu",
    "latency_ms_b1_cpu_p10",
    "latency_ms_b1_cpu_p90",
    "throughput_ips_cpu",
    "size_mb_min",
    "size_mb_dense",
    "size_mb_sparse",
    "size_mb_disk",
    "params",
    "nonzero_params",
    "flops",
    "sparsity_pruned",
    "sparsity_total",
    "prune_ratio_achieved",
    "epochs_trained",
    "wall_s",
    "restarts",
    "bookkeeping_ms",
    "epoch_ms",
    "train_step_ms",
    "kd_feature_weight",
    "kd_dkd_warmup_epochs",
    *ONNX_COLUMNS,
)

EPOCH_COLUMNS = ("trial_id", "epoch", "phase", "val_acc", "train_loss", "lr")

#: Columns that identify a trial rather than its config: never used to group seeds.
NOT_CONFIG = ("seed", "trial_id", "run")

#: Derived on load: min(size_mb_dense, size_mb_sparse), the size axis of every chart and export.
SIZE_COLUMN = "size_mb_min"


# ---------------------------------------------------------------------------------------------
# Loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run_name(run_dir: Path, taken: set[str]) -> str:
    name = run_dir.name or str(run_dir)
    return str(run_dir) if name in taken else name


def _check_trials(df: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    where = f"{run_dir / TRIALS_FILE}"
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise KDTuneError(
            f"{where} lacks required column(s) {', '.join(missing)}: is this a kdtune run folder "
            f"written by the same version?"
        )
    df = df.copy()
    for col, default in OPTIONAL_CONFIG_COLUMNS.items():
        df[col] = df[col].fillna(default) if col in df.columns else default
    for col in OPTIONAL_NUMERIC_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for col in (*OPTIONAL_TEXT_COLUMNS, *OPTIONAL_TEXT_CONFIG_COLUMNS):
        if col not in df.columns:
            df[col] = None
    for col in (*NUMERIC_CONFIG_COLUMNS, *NUMERIC_METRIC_COLUMNS, *OPTIONAL_NUMERIC_COLUMNS):
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError):
            raise KDTuneError(f"{where}: column {col} must be numeric") from None
    bad = sorted(set(df["status"].astype(str)) - set(STATUSES))
    if bad:
        raise KDTuneError(
            f"{where}: unknown trial status {', '.join(bad)} (allowed: {', '.join(STATUSES)})"
        )
    for col in FRACTION_COLUMNS:
        values = df[col].dropna()
        if ((values < 0) | (values > 1)).any():
            raise KDTuneError(f"{where}: column {col} must be a fraction in [0, 1]")
    ratio = df["prune.ratio"].dropna()
    if ((ratio < 0) | (ratio >= 1)).any():
        raise KDTuneError(f"{where}: column prune.ratio must be in [0, 1)")
    df["trial_id"] = df["trial_id"].astype(str)
    df["status"] = df["status"].astype(str)
    df["is_baseline"] = df["is_baseline"].fillna(df["kd.alpha"] == 0).astype(bool)
    df["kd.method"] = df["kd.method"].astype(str)
    # What the trial ran follows from its config: an older run, and a trial that errored
    # before its final report, lack it.
    df["kd_method"] = df["kd_method"].fillna(kd_method(df))
    df["teacher_name"] = df["teacher_name"].where(df["teacher_name"].notna(), teacher_names(df))
    df["student_family"] = df["student_family"].where(df["student_family"].notna(),
                                                      student_families(df))
    # What a deployed model takes: the smaller of the dense and the sparse storage (a sparse
    # format only pays off once enough weights are pruned).
    df[SIZE_COLUMN] = df[["size_mb_dense", "size_mb_sparse"]].min(axis=1, skipna=True)
    return df


def kd_method(df: pd.DataFrame) -> pd.Series:
    """What each row distilled with: :data:`NO_KD` where ``kd.alpha`` is 0 (plain
    cross-entropy, whatever ``kd.method`` says), else its ``kd.method``."""
    return df["kd.method"].where(df["kd.alpha"] != 0, NO_KD)


def _is_vit_name(arch) -> bool:
    """A vision transformer by its registry name (kdtune.models registers them as vit_*): the
    fallback for rows without student_family, as this module does not import torch."""
    return str(arch).startswith("vit")


def _teacher_name(arch, stem) -> str:
    return str(arch) if _is_vit_name(arch) else f"{arch}/{stem}"


def ensemble_name(text) -> str | None:
    """"ensemble a/cifar + vit_tiny" from teacher.ensemble's JSON text; None if unreadable."""
    import json

    try:
        members = json.loads(text)
    except (TypeError, ValueError):
        return None
    names = []
    for m in members if isinstance(members, list) else []:
        m = {"arch": m} if isinstance(m, str) else m
        if not isinstance(m, dict) or "arch" not in m:
            return None
        names.append(_teacher_name(m["arch"], m.get("stem", "cifar")))
    return "ensemble " + " + ".join(names) if names else None


def teacher_names(df: pd.DataFrame) -> pd.Series:
    """The teacher each row names, derived from its config (for rows without
    ``teacher_name``): ``"arch/stem"`` (a vision transformer: ``"arch"``), or the ensemble's
    ``"ensemble a/stem + b"``."""
    out = []
    ens = df["teacher.ensemble"] if "teacher.ensemble" in df else pd.Series(None, df.index)
    for arch, stem, e in zip(df["teacher.arch"], df["teacher.stem"], ens, strict=True):
        name = ensemble_name(e) if isinstance(e, str) and e.strip() else None
        out.append(name or _teacher_name(arch, stem))
    return pd.Series(out, index=df.index, dtype=object)


def student_families(df: pd.DataFrame) -> pd.Series:
    """Each row's student family for rows without ``student_family``: "cnn" (every run before
    the ViTs), "vit" for a vit_* student."""
    return df["student.arch"].map(lambda a: "vit" if _is_vit_name(a) else "cnn").astype(object)


def load_runs(*run_dirs: str | Path) -> pd.DataFrame:
    """Load the ``trials.parquet`` of each run folder into one DataFrame, one row per trial.

    Adds ``run`` (the folder's name, or its full path when two folders share a name),
    ``run_dir`` and ``size_mb_min`` (the smaller of ``size_mb_dense`` and ``size_mb_sparse``).
    Optional columns the file lacks are added as NaN/None. Raises
    :class:`~kdtune.errors.KDTuneError` naming the folder when the file is missing or unreadable,
    lacks required columns (listed), or holds values out of range.
    """
    if not run_dirs:
        raise KDTuneError("no run folder given")
    frames, taken = [], set()
    for raw in run_dirs:
        run_dir = Path(raw)
        path = run_dir / TRIALS_FILE
        if not path.is_file():
            what = "is not a folder" if not run_dir.is_dir() else f"has no {TRIALS_FILE}"
            raise KDTuneError(f"run folder {run_dir} {what}: is the sweep finished?")
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise KDTuneError(f"cannot read {path}: {_first_line(exc)}") from None
        df = _check_trials(df, run_dir)
        name = _run_name(run_dir, taken)
        taken.add(name)
        df.insert(0, "run", name)
        df["run_dir"] = str(run_dir)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return out.reset_index(drop=True)


def load_epochs(*run_dirs: str | Path, missing_ok: bool = False) -> pd.DataFrame:
    """Load the ``epochs.parquet`` of each run folder (columns :data:`EPOCH_COLUMNS` + ``run``).

    With ``missing_ok`` a folder without the file contributes no rows instead of raising.
    """
    frames, taken = [], set()
    for raw in run_dirs:
        run_dir = Path(raw)
        name = _run_name(run_dir, taken)
        taken.add(name)
        path = run_dir / EPOCHS_FILE
        if not path.is_file():
            if missing_ok:
                continue
            raise KDTuneError(f"run folder {run_dir} has no {EPOCHS_FILE}")
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            raise KDTuneError(f"cannot read {path}: {_first_line(exc)}") from None
        missing = [c for c in EPOCH_COLUMNS if c not in df.columns]
        if missing:
            raise KDTuneError(f"{path} lacks required column(s) {', '.join(missing)}")
        df = df.copy()
        df["trial_id"] = df["trial_id"].astype(str)
        for col in ("epoch", "val_acc", "train_loss", "lr"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        df.insert(0, "run", name)
        frames.append(df)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("run", *EPOCH_COLUMNS)})
    return pd.concat(frames, ignore_index=True)


def _flatten_space(space: object, columns: Iterable[str], prefix: str = "") -> list[str]:
    cols = set(columns)
    keys: list[str] = []
    if not isinstance(space, dict):
        return keys
    for key, spec in space.items():
        dotted = f"{prefix}{key}"
        if dotted in cols:
            keys.append(dotted)
        elif isinstance(spec, dict):
            keys.extend(_flatten_space(spec, cols, prefix=f"{dotted}."))
    return keys


def _search_section(run_dir: str | Path) -> dict | None:
    """The ``search:`` mapping of a run folder's sweep.yaml ({} if it has none; None: no file)."""
    import yaml

    path = Path(run_dir) / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KDTuneError(f"cannot read {path}: {_first_line(exc)}") from None
    search = doc.get("search") if isinstance(doc, dict) else None
    return search if isinstance(search, dict) else {}


def sweep_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """Each run's sweep name (``search.name`` of its sweep.yaml; else the folder's name),
    duplicates dropped, in the order given."""
    names = []
    for raw in run_dirs:
        search = _search_section(raw) or {}
        name = search.get("name")
        names.append(str(name) if name not in (None, "") else Path(raw).name or str(raw))
    return list(dict.fromkeys(names))


def searched_keys(df: pd.DataFrame, run_dirs: Sequence[str | Path] = ()) -> list[str]:
    """The config keys the sweep searched over.

    Read from each run folder's ``sweep.yaml`` (``search.space``, dotted or nested keys) when
    present; otherwise inferred as the config columns (except ``seed``) that take more than one
    value. Only keys that are columns of ``df`` are returned, in ``df``'s column order.
    """
    found: set[str] = set()
    have_yaml = False
    for raw in run_dirs:
        search = _search_section(raw)
        if search is None:
            continue
        space = search.get("space", {})
        have_yaml = True
        found.update(_flatten_space(space, df.columns))
    if not have_yaml:
        found = {c for c in config_columns(df) if df[c].nunique(dropna=False) > 1}
    found.discard("seed")
    return [c for c in df.columns if c in found]


def config_columns(df: pd.DataFrame) -> list[str]:
    """Config columns of ``df``: the dotted keys plus ``seed`` and ``is_baseline``."""
    return [
        c
        for c in df.columns
        if c != "run_dir" and ("." in c or c in ("seed", "is_baseline")) and c not in NOT_CONFIG[1:]
    ]


# ---------------------------------------------------------------------------------------------
# Statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Numerical Recipes)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (no SciPy needed): ``t_quantile(0.975, 4) ≈ 2.776``."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if not df > 0 or math.isnan(df):
        return math.nan
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def ci95_halfwidth(std: float, n: float) -> float:
    """Half-width of the 95 % confidence interval of a mean: NaN when ``n < 2``."""
    if n is None or math.isnan(n) or n < 2 or std is None or math.isnan(std):
        return math.nan
    return t_quantile(0.975, n - 1) * std / math.sqrt(n)


def welch_diff(
    mean_a: float, std_a: float, n_a: float, mean_b: float, std_b: float, n_b: float
) -> tuple[float, float, float]:
    """``(diff, low, high)``: mean_a - mean_b with its 95 % Welch interval (NaN bounds if n < 2)."""
    diff = mean_a - mean_b
    if min(n_a, n_b) < 2 or any(math.isnan(v) for v in (std_a, std_b, diff)):
        return diff, math.nan, math.nan
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = t_quantile(0.975, dof) * se
    return diff, diff - half, diff + half


def aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct config of the *completed* trials, seeds averaged.

    Groups the completed rows by every config column (:func:`config_columns`) except ``seed``
    (rows of several runs with the same config are pooled). For each metric of
    :data:`AGG_METRICS` present it adds ``<m>_mean``, ``<m>_std`` (sample std, ddof 1),
    ``<m>_n`` (non-NaN values) and ``<m>_ci95`` (Student-t half-width; NaN when n < 2). Also:
    ``n_seeds``, ``seeds`` ("0,1,2"), ``trial_ids`` and ``runs`` (";"-joined), ``best_trial_id``
    and ``best_checkpoint`` (the seed with the highest validation accuracy: the one to deploy),
    and the first ``gpu_device``/``cpu_device``/``cpu_threads``/``onnx_device``/
    ``arch_signature``/``kd_method``/``teacher_cache``/``teacher_name``/``teacher_members``/
    ``student_family`` label (the teacher and the family follow from the config keys). Stopped
    and errored trials are left out: they have no final measurements.
    """
    done = df[df["status"] == "completed"]
    keys = [c for c in config_columns(df) if c != "seed"]
    metrics = [m for m in AGG_METRICS if m in df.columns]
    label_cols = [c for c in ("gpu_device", "cpu_device", "cpu_threads", "onnx_device",
                              "arch_signature", *KD_TEXT_COLUMNS, *TEACHER_TEXT_COLUMNS)
                  if c in df.columns]
    out_cols = [
        *keys,
        "n_seeds",
        "seeds",
        "trial_ids",
        "runs",
        "best_trial_id",
        "best_checkpoint",
        *label_cols,
        *[f"{m}_{s}" for m in metrics for s in ("mean", "std", "n", "ci95")],
    ]
    if done.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in out_cols})
    rows = []
    for _, grp in done.groupby(keys, dropna=False, sort=False):
        first = grp.iloc[0]
        row = {k: first[k] for k in keys}
        row["n_seeds"] = len(grp)
        seeds = grp["seed"].dropna()
        row["seeds"] = ",".join(
            str(int(s)) if float(s).is_integer() else str(s) for s in sorted(seeds)
        )
        row["trial_ids"] = ";".join(grp["trial_id"].astype(str))
        row["runs"] = ";".join(dict.fromkeys(grp["run"].astype(str))) if "run" in grp else ""
        best = grp.loc[grp["val_acc"].fillna(-np.inf).idxmax()] if "val_acc" in grp else first
        row["best_trial_id"] = best["trial_id"]
        ckpt = best.get("checkpoint")
        row["best_checkpoint"] = None if ckpt is None or pd.isna(ckpt) else str(ckpt)
        for c in label_cols:
            vals = grp[c].dropna()
            row[c] = vals.iloc[0] if len(vals) else None
        for m in metrics:
            vals = grp[m].astype(float).dropna()
            n = len(vals)
            mean = float(vals.mean()) if n else math.nan
            std = float(vals.std(ddof=1)) if n >= 2 else math.nan
            row[f"{m}_mean"] = mean
            row[f"{m}_std"] = std
            row[f"{m}_n"] = n
            row[f"{m}_ci95"] = ci95_halfwidth(std, n)
        rows.append(row)
    return pd.DataFrame(rows, columns=out_cols)


# ---------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(
    df: pd.DataFrame, maximize: Sequence[str] = (), minimize: Sequence[str] = ()
) -> pd.Series:
    """Boolean Series (``df``'s index, name ``on_front``): True for the non-dominated rows.

    A row is dominated when another row is at least as good on every objective and strictly
    better on one. Rows with equal objective values do not dominate each other, so ties on the
    front are all kept. Rows with NaN in any objective are never on the front (and dominate
    nothing). Needs 2 or 3 objectives in total (``ValueError`` otherwise; for one objective the
    best row is simply the maximum).
    """
    maximize, minimize = list(maximize), list(minimize)
    objectives = maximize + minimize
    if not 2 <= len(objectives) <= 3:
        raise ValueError(f"pareto_front needs 2 or 3 objectives, got {len(objectives)}")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"objective listed twice: {objectives}")
    missing = [c for c in objectives if c not in df.columns]
    if missing:
        raise ValueError(f"no column {', '.join(missing)} in the table")
    if df.empty:
        return pd.Series(np.zeros(0, dtype=bool), index=df.index, name="on_front")
    cols = [pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) for c in maximize]
    cols += [-pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) for c in minimize]
    values = np.column_stack(cols)  # every objective is now "higher is better"
    valid = ~np.isnan(values).any(axis=1)
    pts = values[valid]
    dominated = np.zeros(len(pts), dtype=bool)
    chunk = max(1, 2_000_000 // max(1, len(pts)))
    for start in range(0, len(pts), chunk):
        block = pts[start : start + chunk, None, :]  # candidates i
        ge = (pts[None, :, :] >= block).all(axis=2)  # j at least as good as i everywhere
        gt = (pts[None, :, :] > block).any(axis=2)  # j strictly better somewhere
        dominated[start : start + chunk] = (ge & gt).any(axis=1)
    on_front = np.zeros(len(df), dtype=bool)
    on_front[np.flatnonzero(valid)] = ~dominated
    return pd.Series(on_front, index=df.index, name="on_front")


# ---------------------------------------------------------------------------------------------
# Axes: which latency / size column to use and how to label it


LATENCY_TARGETS = ("gpu", "cpu", "onnx_fp32", "onnx_int8")
#: How each target is named on axes and in tables.
TARGET_NAMES = {"gpu": "GPU", "cpu": "CPU", "onnx_fp32": "onnxruntime fp32",
                "onnx_int8": "onnxruntime INT8"}
#: The accuracy that goes with a target's latency, as (test, validation) columns: an INT8 file
#: is a different model from the fp32 one it came from, with its own accuracy; PyTorch and
#: onnxruntime fp32 run the same weights to float rounding.
TARGET_ACCURACY = {"onnx_int8": ("test_acc_onnx_int8", "val_acc_onnx_int8")}
DEFAULT_ACCURACY = ("test_acc", "val_acc")


def target_accuracy(target: str | None) -> tuple[str, str]:
    """(test, validation) accuracy columns of a latency target's model."""
    return TARGET_ACCURACY.get(target or "", DEFAULT_ACCURACY)


def _measured(df: pd.DataFrame, target: str) -> str | None:
    for col in (f"latency_ms_b1_{target}", f"latency_ms_b1_{target}_mean"):
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            return col
    return None


def latency_targets(df: pd.DataFrame) -> list[str]:
    """The targets with at least one measured latency, in :data:`LATENCY_TARGETS` order: GPU,
    CPU, onnxruntime fp32, onnxruntime INT8."""
    return [t for t in LATENCY_TARGETS if _measured(df, t)]


def latency_column(df: pd.DataFrame, target: str | None = None) -> str | None:
    """The latency column of ``target`` (one of :data:`LATENCY_TARGETS`) if any value is
    measured, else None.

    Without a target: ``latency_ms_b1_gpu`` when any value is measured, else
    ``latency_ms_b1_cpu``, else None. On an aggregated table (:func:`aggregate_seeds`) the same
    rule picks the ``..._mean`` column.
    """
    if target is not None and target not in LATENCY_TARGETS:
        raise ValueError(f"latency target must be one of {LATENCY_TARGETS}, got {target!r}")
    for dev in (target,) if target else LATENCY_TARGETS:
        col = _measured(df, dev)
        if col:
            return col
    return None


def latency_spread_columns(col: str) -> tuple[str, str]:
    """The p10 and p90 columns that go with a latency column (raw or ``..._mean``)."""
    if col.endswith("_mean"):
        base = col[: -len("_mean")]
        return f"{base}_p10_mean", f"{base}_p90_mean"
    return f"{col}_p10", f"{col}_p90"


def _labels(series: pd.Series) -> list[str]:
    return [str(v) for v in dict.fromkeys(series.dropna().astype(str)) if str(v).strip()]


def latency_label(df: pd.DataFrame, target: str | None = None) -> str:
    """Axis title for the latency chosen by :func:`latency_column`, with unit and device.

    E.g. ``"batch-1 latency (ms, cpu Intel Xeon, 1 thread)"``, ``"batch-1 latency (ms, INT8
    ONNX file, cpu Intel Xeon, onnxruntime 1.32.0, 1 thread)"``.
    """
    if latency_column(df, target) is None:
        where = f"{TARGET_NAMES.get(target, target)}; " if target else ""
        return f"batch-1 latency (ms; {where}not measured)"
    col = latency_column(df, target)
    onnx = re.search(r"_onnx_(fp32|int8)", col)
    what = f"{onnx.group(1).upper().replace('FP', 'fp')} ONNX file, " if onnx else ""
    return f"batch-1 latency (ms, {what}{latency_device(df, target)})"


def latency_device(df: pd.DataFrame, target: str | None = None) -> str:
    """Where the latency of :func:`latency_column` was measured, e.g. ``"cpu Intel Xeon, 1
    thread"`` (``"GPU"``/``"CPU"`` when the device was not recorded); an onnxruntime target
    names the runtime too: ``"cpu Intel Xeon, onnxruntime 1.32.0, 1 thread"``."""
    col = latency_column(df, target)
    if col is None:
        return TARGET_NAMES.get(target, target) if target else "not measured"
    measured = df[pd.to_numeric(df[col], errors="coerce").notna()]
    if "_onnx_" in col:
        devices = _labels(measured["onnx_device"]) if "onnx_device" in df else []
        where = " / ".join(devices) or "CPU, onnxruntime"
    elif "_gpu" in col:
        devices = _labels(measured["gpu_device"]) if "gpu_device" in df else []
        where = " / ".join(devices) or "GPU"
    else:
        devices = _labels(measured["cpu_device"]) if "cpu_device" in df else []
        where = " / ".join(devices) or "CPU"
        threads = pd.to_numeric(measured.get("cpu_threads"), errors="coerce")
        threads = sorted({int(t) for t in threads.dropna()}) if threads is not None else []
        if threads:
            n = "/".join(str(t) for t in threads)
            where += f", {n} thread" + ("" if threads == [1] else "s")
    if len(devices) > 1:
        where = "mixed devices: " + where
    return where


def size_label() -> str:
    return "model size (MB, smaller of dense and sparse storage; 1 MB = 10⁶ bytes)"
