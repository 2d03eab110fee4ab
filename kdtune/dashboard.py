"""One self-contained HTML dashboard of one or several sweeps, plus report.json, results.csv and
PNGs of its key charts next to it.

``kdtune dashboard RUN_DIR... [--out FILE]`` calls :func:`write_dashboard`; a sweep calls it on
its own run folder when it ends. The page inlines plotly.js once and fetches nothing at view time.

What the reader gets, top to bottom:

* an answer box: best accuracy per latency budget (the Pareto front, budgets closer than the
  timing spread merged), whether KD beats no KD like for like and whether the CIFAR stem beats
  the standard one (differences with 95 % confidence intervals), what went wrong (errored trials);
* accuracy vs latency (one chart per measured device) and accuracy vs size with the front
  highlighted and joined, a 3-D view, and a table of the front with checkpoint paths;
* parallel coordinates of the searched hyperparameters, ablation panels (one knob at a time, and
  the distillation method against no KD), ASHA learning curves;
* every trial (stopped and errored ones marked) and the provenance.

Next to the page: front.png (the first accuracy/latency chart, else accuracy/size) and one PNG
per key chart, accuracy_vs_latency[_<target>].png, accuracy_vs_size.png and kd_vs_no_kd.png,
drawn with matplotlib from the page's own Plotly figures (:mod:`kdtune.figures`), so they need
no browser and show what the page shows.

Accuracies are test accuracies in percent, averaged over seeds: each point is one distinct config
(:func:`kdtune.results.aggregate_seeds`), error bars are 95 % CIs. Only completed trials can be on
a front. Every choice among configs (the fronts, the budgets, best KD config, best stem) is made
on *validation* accuracy and reported on *test* accuracy, so no choice is tuned on the test
split. The course-lab exports (``report.json``'s ``families``, ``results.csv``) instead report
the best test accuracy per kind, as the lab does.

A sweep may distil with several methods (``kd.method``: logit KD, FitNets, attention transfer,
DKD). KD vs no KD is then compared per method, and labels name the method; DKD's loss has no
``kd.alpha`` (only α = 0 matters: it switches distillation off), so a DKD row never shows α and
stays out of the α ablation. A run written before ``kd.method`` existed is logit KD throughout
and looks as it always did.

A sweep may also search the teacher (``teacher.arch``, ``teacher.ensemble``). Each teacher
(``teacher_name``: "resnet20/cifar", "vit_tiny", "ensemble resnet20/cifar + vit_tiny") gets its
own dotted reference line; when the KD trials distilled from more than one, the ablations get a
teacher row, KD vs no KD is compared per teacher (the teacher keys are inert at α = 0, so a
no-KD config is every teacher's twin), labels and tables name a KD config's teacher, and
report.json lists each teacher's accuracy and its KD students'. A vision-transformer student
(``student_family`` "vit") has no stem: its labels show the architecture alone and the stem
comparison leaves it out.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune.config import FEATURE_WEIGHT_DEFAULTS, KD_METHOD_KEYS, KD_METHODS
from kdtune.errors import KDTuneError
from kdtune.results import (
    NO_KD,
    PROVENANCE_COLUMNS,
    SIZE_COLUMN,
    aggregate_seeds,
    ci95_halfwidth,
    config_columns,
    ensemble_name,
    kd_method,
    latency_column,
    latency_device,
    latency_label,
    latency_spread_columns,
    LATENCY_TARGETS,
    latency_targets,
    load_epochs,
    load_runs,
    pareto_front,
    searched_keys,
    size_label,
    sweep_names,
    target_accuracy,
    TARGET_NAMES,
    welch_diff,
)

HTML_NAME = "dashboard.html"
REPORT_NAME = "report.json"
CSV_NAME = "results.csv"
PNG_NAME = "front.png"  # the main chart; PNG_NAMES and OUTPUT_FILES are with the PNG code
CSV_COLUMNS = ("Variant", "Accuracy", "LatencyMs", "SizeMB")

ACC = "test_acc"
ACC_LABEL = "test accuracy (%)"
#: What every choice among configs is made on: choosing on the test split would tune on it.
SELECT = "val_acc_mean"
CHOSEN_ON_VAL = "front chosen on validation accuracy; test accuracy shown"
# The INT8 target: its files' own accuracies, measured in onnxruntime
ACC_LABEL_INT8 = "INT8 test accuracy (%, onnxruntime)"
CHOSEN_ON_VAL_INT8 = ("front chosen on the INT8 files' validation accuracy; their test accuracy "
                      "shown (onnxruntime)")

SHORT = {
    "student.arch": "student",
    "student.stem": "stem",
    "kd.temperature": "T",
    "kd.alpha": "α",
    "kd.label_smoothing": "ε (label smoothing)",
    "kd.method": "KD method",
    "kd.feature_weight": "feature weight",
    "kd.dkd_alpha": "DKD TCKD weight",
    "kd.dkd_beta": "DKD β",
    "kd.dkd_warmup": "DKD warm-up epochs",
    "prune.ratio": "prune ratio",
    "prune.method": "prune method",
    "prune.round_to": "channel rounding",
    "prune.scope": "prune scope",
    "prune.finetune_epochs": "fine-tune epochs",
    "train.epochs": "epochs",
    "train.lr": "lr",
    "train.batch_size": "batch size",
}
METRIC_LABELS = {
    "test_acc": ("test accuracy", "%"),
    "val_acc": ("validation accuracy", "%"),
    "teacher_test_acc": ("teacher test accuracy", "%"),
    "teacher_val_acc": ("teacher validation accuracy", "%"),
    "latency_ms_b1_gpu": ("GPU latency, batch 1", "ms"),
    "latency_ms_b1_gpu_p10": ("GPU latency p10, batch 1", "ms"),
    "latency_ms_b1_gpu_p90": ("GPU latency p90, batch 1", "ms"),
    "throughput_ips_gpu": ("GPU throughput", "images/s"),
    "latency_ms_b1_cpu": ("CPU latency, batch 1", "ms"),
    "latency_ms_b1_cpu_p10": ("CPU latency p10, batch 1", "ms"),
    "latency_ms_b1_cpu_p90": ("CPU latency p90, batch 1", "ms"),
    "throughput_ips_cpu": ("CPU throughput", "images/s"),
    "latency_ms_b1_onnx_fp32": ("onnxruntime fp32 latency, batch 1", "ms"),
    "latency_ms_b1_onnx_fp32_p10": ("onnxruntime fp32 latency p10, batch 1", "ms"),
    "latency_ms_b1_onnx_fp32_p90": ("onnxruntime fp32 latency p90, batch 1", "ms"),
    "latency_ms_b1_onnx_int8": ("onnxruntime INT8 latency, batch 1", "ms"),
    "latency_ms_b1_onnx_int8_p10": ("onnxruntime INT8 latency p10, batch 1", "ms"),
    "latency_ms_b1_onnx_int8_p90": ("onnxruntime INT8 latency p90, batch 1", "ms"),
    "val_acc_onnx_int8": ("INT8 validation accuracy (onnxruntime)", "%"),
    "test_acc_onnx_int8": ("INT8 test accuracy (onnxruntime)", "%"),
    "test_acc_onnx_fp32": ("fp32 test accuracy (onnxruntime)", "%"),
    "test_agree_onnx_int8": ("INT8 top-1 = fp32 top-1, test images", "%"),
    "size_mb_onnx_fp32": ("ONNX fp32 file", "MB"),
    "size_mb_onnx_int8": ("ONNX INT8 file", "MB"),
    "size_mb_min": ("size (smaller of dense/sparse)", "MB"),
    "size_mb_dense": ("size, dense", "MB"),
    "size_mb_sparse": ("size, sparse", "MB"),
    "size_mb_disk": ("size on disk", "MB"),
    "params": ("parameters", ""),
    "nonzero_params": ("non-zero parameters", ""),
    "flops": ("FLOPs per image", ""),
    "sparsity_pruned": ("sparsity of pruned layers", "%"),
    "sparsity_total": ("sparsity, whole model", "%"),
    "prune_ratio_achieved": ("pruned fraction achieved (channels or weights)", "%"),
    "epochs_trained": ("epochs trained", ""),
    "wall_s": ("wall time", "s"),
    "train_step_ms": ("training step, median", "ms"),
    "kd_dkd_warmup_epochs": ("DKD warm-up", "epochs"),
}
PERCENT_METRICS = {k for k, (_, unit) in METRIC_LABELS.items() if unit == "%"}

#: How each distillation method is named in charts and tables (NO_KD: kd.alpha = 0).
METHOD_NAMES = {"logit": "logit KD", "fitnets": "FitNets", "attention": "attention transfer",
                "dkd": "DKD", "cosine": "cosine embedding", NO_KD: "no KD (α = 0)"}
#: The method's prefix in a config label; logit KD has none (its labels predate kd.method).
METHOD_PREFIX = {"fitnets": "FitNets", "attention": "AT", "dkd": "DKD", "cosine": "cos"}

ARCH_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "star"]
SYMBOLS_3D = ["circle", "square", "diamond", "cross", "circle-open", "square-open"]
PRUNE_SCALE = [[0.0, "#08306b"], [0.5, "#2a9d8f"], [1.0, "#e76f51"]]
STATUS_COLORS = {"completed": "#2ca02c", "stopped": "#7f7f7f", "errored": "#d62728"}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "toImageButtonOptions": {"format": "png", "scale": 2}}
FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def _isnan(x) -> bool:
    try:
        return x is None or (isinstance(x, float | np.floating) and math.isnan(x)) or pd.isna(x)
    except (TypeError, ValueError):
        return False


def _pct(x, digits: int = 1) -> str:
    return "—" if _isnan(x) else f"{100 * float(x):.{digits}f} %"


def _num(x, digits: int = 3) -> str:
    if _isnan(x):
        return "—"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits}g}"
    if float(x).is_integer():
        return f"{int(x)}"
    if abs(x) < 1:
        return f"{x:.{digits}g}"
    decimals = max(digits - int(math.log10(abs(x))) - 1, 1)
    return f"{x:.{decimals}f}"


def _value(key: str, x) -> str:
    """A config value as a reader wants it: prune ratio as %, others plain."""
    if _isnan(x):
        return "—"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if key == "prune.ratio":
        return f"{100 * float(x):.0f} %"
    if key == "teacher.ensemble":  # the members' configs as JSON text: name them instead
        return ensemble_name(x) or str(x)
    if isinstance(x, int | float | np.integer | np.floating):
        return _num(x)
    return str(x)


def _metric(m: str, x, ci=None) -> str:
    if _isnan(x):
        return "—"
    unit = METRIC_LABELS.get(m, (m, ""))[1]
    if m in PERCENT_METRICS:
        text = f"{100 * float(x):.2f}"
        if ci is not None and not _isnan(ci):
            text += f" ± {100 * float(ci):.2f}"
        return text + " %"
    text = _num(x, 4)
    if ci is not None and not _isnan(ci):
        text += f" ± {_num(ci, 2)}"
    return f"{text} {unit}".rstrip()


def _no_kd(row) -> bool:
    """No distillation: α = 0 makes the loss plain cross-entropy, whatever is_baseline says."""
    return row.get("kd.alpha") == 0


def _method(row) -> str:
    """The row's kd.method: logit where the run predates kd.method (results fills it in, but a
    row built by hand may lack it)."""
    method = row.get("kd.method")
    return "logit" if _isnan(method) else str(method)


def _kd_kind(row) -> str:
    """What the row distilled with: NO_KD at α = 0, else its kd.method."""
    return NO_KD if _no_kd(row) else _method(row)


def _method_name(kind: str) -> str:
    return METHOD_NAMES.get(kind, kind)


def _method_rank(kind: str) -> int:
    """No KD first, then KD_METHODS' order, then any method this version does not know."""
    order = [NO_KD, *KD_METHODS]
    return order.index(kind) if kind in order else len(order)


def kd_methods(rows: pd.DataFrame) -> list[str]:
    """The kd.method values of the rows that distil (α > 0), in KD_METHODS' order."""
    kd = rows[rows["kd.alpha"] > 0]
    methods = kd["kd.method"] if "kd.method" in kd else pd.Series("logit", kd.index)
    return sorted(set(methods.fillna("logit").astype(str)), key=lambda m: (_method_rank(m), m))


def _methods_named(rows: pd.DataFrame) -> bool:
    """Whether labels must name the KD method: any but logit KD distilled. A logit-only sweep
    (every run before kd.method) keeps its labels as they were."""
    return kd_methods(rows) not in ([], ["logit"])


def _inert_kd_keys(kind: str) -> tuple[str, ...]:
    """Config keys that cannot change what a trial of this kind trained: the keys of the other
    methods; kd.alpha for DKD (its loss has no α, only 0 matters and makes it no KD); at
    α = 0 every KD key but α itself (plain cross-entropy)."""
    if kind == NO_KD:
        return tuple(k for k in KD_ONLY_KEYS if k != "kd.alpha")
    keys = [f"kd.{key}" for key, methods in KD_METHOD_KEYS.items() if kind not in methods]
    return (*keys, "kd.alpha") if kind == "dkd" else tuple(keys)


def _feature_weight(row) -> float:
    """kd.feature_weight as the trial used it: unset means the method's default."""
    weight = row.get("kd.feature_weight")
    return FEATURE_WEIGHT_DEFAULTS.get(_method(row), math.nan) if _isnan(weight) else weight


def _method_text(row) -> str:
    """The method and its own weights: "logit", "FitNets w 100", "AT w 1000", "DKD β 8" (with
    the TCKD weight when it is not the default 1), "no KD"."""
    kind = _kd_kind(row)
    if kind == NO_KD:
        return "no KD"
    if kind in FEATURE_WEIGHT_DEFAULTS:
        return f"{METHOD_PREFIX.get(kind, kind)} w {_num(_feature_weight(row))}"
    if kind == "dkd":
        tckd = row.get("kd.dkd_alpha")
        extra = "" if _isnan(tckd) or tckd == 1 else f", TCKD weight {_num(tckd)}"
        return f"DKD β {_num(row.get('kd.dkd_beta'))}{extra}"
    return kind


def _kd_text(row) -> str:
    """The KD settings in a config label: "T 4, α 0.9" for logit KD (as before kd.method),
    "FitNets w 100, T 4, α 0.9", "AT w 1000, T 4, α 0.9", "DKD β 8, T 4" (no α: DKD has
    none), "no KD"."""
    kind = _kd_kind(row)
    if kind == NO_KD:
        return "no KD"
    temp = f"T {_num(row.get('kd.temperature'))}"
    if kind == "dkd":
        return f"{_method_text(row)}, {temp}"
    logit = f"{temp}, α {_num(row.get('kd.alpha'))}"
    return logit if kind == "logit" else f"{_method_text(row)}, {logit}"


def _alpha_cell(row) -> str:
    """kd.alpha in a table: "—" for DKD, which does not use it."""
    return "—" if _kd_kind(row) == "dkd" else _num(row.get("kd.alpha"))


def _channel_pruned(row) -> bool:
    ratio = row.get("prune.ratio")
    return row.get("prune.method") == "channel" and not _isnan(ratio) and ratio > 0


def _pruning(row) -> str:
    ratio = row.get("prune.ratio")
    if _isnan(ratio) or ratio == 0:
        return "unpruned"
    what = "channels" if _channel_pruned(row) else "weights"
    return f"pruned {100 * ratio:.0f} % of {what}"


def _is_vit(row) -> bool:
    """A vision-transformer student: it has no stem (its student.stem column means nothing)."""
    return row.get("student_family") == "vit"


def _stem_cell(row) -> str:
    """student.stem in a table: "—" for a ViT, which has none."""
    return "—" if _is_vit(row) else str(row.get("student.stem"))


def _student_text(row, sep: str = " · ") -> str:
    """"resnet8 · cifar stem", or just "vit_tiny_d6" (a ViT has no stem)."""
    arch = str(row.get("student.arch"))
    return arch if _is_vit(row) else f"{arch}{sep}{row.get('student.stem')} stem"


def _teacher_of(row) -> str:
    """The teacher a row names (results fills teacher_name in; a hand-built row may lack it)."""
    name = row.get("teacher_name")
    if not _isnan(name):
        return str(name)
    arch, stem = row.get("teacher.arch"), row.get("teacher.stem")
    return str(arch) if str(arch).startswith("vit") or _isnan(stem) else f"{arch}/{stem}"


def _teacher_cell(row) -> str:
    """The teacher in a table: "—" at α = 0 (no distillation, whatever teacher is configured)."""
    return "—" if _no_kd(row) else _teacher_of(row)


def _teachers_of(rows: pd.DataFrame) -> pd.Series:
    """:func:`_teacher_of` of every row."""
    if "teacher_name" in rows and rows["teacher_name"].notna().all():
        return rows["teacher_name"].astype(str)
    return pd.Series([_teacher_of(r) for _, r in rows.iterrows()], index=rows.index, dtype=object)


def _teacher_text(row) -> str | None:
    """"teacher vit_tiny" for a KD row; None at α = 0, which distilled from no teacher."""
    return None if _no_kd(row) else f"teacher {_teacher_of(row)}"


def _config_label(row, *, arch: bool = True, teacher: bool = False) -> str:
    """``teacher``: name the KD row's teacher (a run with more than one)."""
    parts = []
    if arch:
        parts.append(str(row.get("student.arch")))
    if not _is_vit(row):
        parts.append(f"{row.get('student.stem')} stem")
    parts.append(_kd_text(row))
    if teacher and _teacher_text(row):
        parts.append(_teacher_text(row))
    if not _isnan(row.get("kd.label_smoothing")) and row.get("kd.label_smoothing"):
        parts.append(f"ε {_num(row.get('kd.label_smoothing'))}")
    parts.append(_pruning(row))
    return " · ".join(parts)


def _members(rows: pd.DataFrame) -> list[dict] | None:
    """An ensemble's members from the first readable teacher_members cell (JSON text)."""
    for text in rows.get("teacher_members", pd.Series(dtype=object)).dropna():
        try:
            members = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            continue
        if isinstance(members, list) and members:
            return [m for m in members if isinstance(m, dict)]
    return None


def _label(row, data) -> str:
    """A config's label as this dashboard shows it: naming the teacher when the KD trials
    distilled from more than one."""
    return _config_label(row, teacher=data.multi_teacher)


def _e(x) -> str:
    return html.escape(str(x))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return None if math.isnan(x) or math.isinf(x) else float(x)
    if x is None or isinstance(x, str | int):
        return x
    if _isnan(x):
        return None
    return str(x)


# ---------------------------------------------------------------------------------------------
# The data every panel shares


@dataclass
class _Latency:
    """One measured latency target (a GPU, the CPU, onnxruntime fp32 or INT8 on the CPU): its
    columns, axis title, front, and the accuracy that goes with it: an INT8 file's own
    accuracy, chosen on its validation accuracy, for the INT8 target; the student's for the
    others."""

    target: str  # one of kdtune.results.LATENCY_TARGETS
    raw: str  # column of the trials table
    label: str  # axis title, with unit and device
    device: str  # where it was measured, e.g. "cpu Intel Xeon Platinum 8480, 1 thread"

    @property
    def col(self) -> str:  # column of agg
        return f"{self.raw}_mean"

    @property
    def front_col(self) -> str:
        return f"on_front_latency_{self.target}"

    @property
    def name(self) -> str:
        return TARGET_NAMES.get(self.target, self.target.upper())

    @property
    def acc(self) -> str:  # test accuracy shown with this latency (trials table column)
        return target_accuracy(self.target)[0]

    @property
    def select(self) -> str:  # what its front is chosen on (agg column)
        return f"{target_accuracy(self.target)[1]}_mean"

    @property
    def int8(self) -> bool:
        return self.acc != ACC


@dataclass
class _Data:
    run_dirs: list[Path]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    agg: pd.DataFrame
    searched: list[str]
    latencies: list[_Latency]  # every measured target, GPU first; the first is the main one
    size: str | None  # ..._mean column of agg
    size_label: str
    arch_order: list[str]
    names: list[str] = field(default_factory=list)  # the sweeps' names (search.name)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the runs live (a URI or a folder)

    @property
    def lat_raw(self) -> str | None:  # main latency column of the trials table
        return self.latencies[0].raw if self.latencies else None

    @property
    def lat(self) -> str | None:  # main latency column of agg
        return self.latencies[0].col if self.latencies else None

    @property
    def lat_label(self) -> str:
        return self.latencies[0].label if self.latencies else ""

    @property
    def completed(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "completed"]

    @property
    def objectives(self) -> list[str]:
        """Minimised objectives available next to accuracy (latency, size)."""
        return [c for c in (self.lat, self.size) if c]

    @property
    def main_x(self) -> str | None:
        return self.lat or self.size

    def teacher_names(self, kd_only: bool = True) -> list[str]:
        """The distinct teacher_name values, in order of appearance; ``kd_only``: of the trials
        that distilled (kd.alpha > 0: a no-KD row names the configured teacher but learnt
        from none)."""
        t = self.trials
        rows = t[t["kd.alpha"] > 0] if kd_only else t
        return list(dict.fromkeys(_teachers_of(rows)))

    @cached_property
    def multi_teacher(self) -> bool:
        """Whether the KD trials distilled from more than one teacher: labels then name it."""
        return len(self.teacher_names()) > 1

    def teachers(self) -> list[dict]:
        """Each teacher whose accuracy was recorded, in order of appearance: ``name``,
        ``test_acc``/``val_acc`` (fractions, mean over the rows that carry them: one cached
        teacher has one accuracy), ``members`` (an ensemble's [{name, val_acc, test_acc}],
        else None)."""
        t = self.trials
        names = _teachers_of(t)
        out = []
        for name in dict.fromkeys(names):
            grp = t[names == name]
            acc = grp["teacher_test_acc"].dropna()
            if acc.empty:
                continue
            val = grp["teacher_val_acc"].dropna() if "teacher_val_acc" in grp else acc.iloc[0:0]
            out.append(dict(name=name, test_acc=float(acc.mean()),
                            val_acc=float(val.mean()) if len(val) else math.nan,
                            members=_members(grp)))
        return out

    def teacher_lines(self) -> list[tuple[str, float]]:
        """(label, accuracy fraction) per teacher, e.g. ``("teacher ensemble resnet20/cifar +
        vit_tiny: 61.2 % (members 58.1 %, 55.0 %)", 0.612)``."""
        out = []
        for t in self.teachers():
            label = f"teacher {t['name']}: {_pct(t['test_acc'])}"
            if t["members"]:
                label += " (members " + ", ".join(_pct(m.get("test_acc"))
                                                  for m in t["members"]) + ")"
            out.append((label, t["test_acc"]))
        return out

    def arch_color(self, arch) -> str:
        return ARCH_COLORS[self.arch_order.index(arch) % len(ARCH_COLORS)] if arch in \
            self.arch_order else "#555555"

    def arch_symbol(self, arch, symbols=SYMBOLS) -> str:
        return symbols[self.arch_order.index(arch) % len(symbols)] if arch in self.arch_order \
            else symbols[0]


def _front(agg: pd.DataFrame, minimize: list[str], acc: str = ACC,
           select: str = SELECT) -> pd.Series:
    """Pareto front chosen on validation accuracy among the configs that have a test accuracy
    to show: choosing on the test accuracy it then reports would overstate the front."""
    shown = agg[agg[f"{acc}_mean"].notna()]
    return pareto_front(shown, [select], minimize).reindex(agg.index, fill_value=False)


def _mark_fronts(data: _Data) -> None:
    agg = data.agg
    for lat in data.latencies:
        agg[lat.front_col] = _front(agg, [lat.col], lat.acc, lat.select)
    agg["on_front_latency"] = agg[data.latencies[0].front_col] if data.latencies else False
    agg["on_front_size"] = _front(agg, [data.size]) if data.size else False
    agg["on_front_3d"] = _front(agg, [data.lat, data.size]) if data.lat and data.size else False
    main = "on_front_latency" if data.lat else "on_front_size" if data.size else None
    if main:
        agg["on_front"] = agg[main]
    else:  # one objective: the "front" is the best row by validation accuracy
        val = agg[SELECT].where(agg[f"{ACC}_mean"].notna()).fillna(-np.inf)
        agg["on_front"] = (val > -np.inf) & (val == val.max())


def _prepare(run_dirs: Sequence[Path]) -> _Data:
    trials = load_runs(*run_dirs)
    epochs = load_epochs(*run_dirs, missing_ok=True)
    agg = aggregate_seeds(trials)
    done = trials[trials["status"] == "completed"]
    latencies = [_Latency(t, latency_column(done, t), latency_label(done, t),
                          latency_device(done, t)) for t in latency_targets(done)]
    size = f"{SIZE_COLUMN}_mean" if not agg.empty and agg[f"{SIZE_COLUMN}_mean"].notna().any() \
        else None
    arch_order = list(dict.fromkeys(trials["student.arch"].dropna().astype(str)))
    data = _Data(
        run_dirs=list(run_dirs),
        trials=trials,
        epochs=epochs,
        agg=agg,
        searched=searched_keys(trials, run_dirs),
        latencies=latencies,
        size=size,
        size_label=size_label(),
        arch_order=arch_order,
        names=sweep_names(run_dirs),
    )
    if not agg.empty:
        _mark_fronts(data)
    if any(len(set(trials[c].dropna())) > 1 for c in ("gpu_device", "cpu_device", "onnx_device")):
        data.notes.append("Latencies were measured on more than one device: compare with care.")
    return data


# ---------------------------------------------------------------------------------------------
# Figures


@dataclass
class _Panel:
    key: str
    title: str
    explanation: str
    figure: object | None = None  # plotly Figure, or None with a note
    note: str = ""
    height: int = 520
    after: str = ""  # HTML shown under the figure (a table of what it compares)


def _base_layout(fig, *, title: str | None = None, height: int = 520):
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=70, r=30, t=60 if title else 30, b=60),
        font=dict(family=FONT, size=13),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        hoverlabel=dict(align="left", font=dict(size=11, family="monospace")),
    )
    if title:
        fig.update_layout(title=dict(text=title, x=0.01, y=0.98, font=dict(size=15)),
                          legend=dict(y=1.0, yanchor="bottom"))
    return fig


def _wrap(items: list[str], width: int = 96, sep: str = ", ", indent: str = "  ") -> list[str]:
    """Join items with ``sep`` into lines of at most ``width`` characters (before escaping)."""
    lines, cur = [], ""
    for item in items:
        if cur and len(cur) + len(sep) + len(item) > width:
            lines.append(cur + sep.rstrip())
            cur = indent + item
        else:
            cur = f"{cur}{sep}{item}" if cur else item
    if cur:
        lines.append(cur)
    return lines


def _hidden_kd_keys(row) -> set[str]:
    """KD keys a config's hover leaves out because this config did not use them (another
    method's keys; α for DKD; at α = 0 the method and its keys). T at α = 0 stays, as it
    always has."""
    return {k for k in _inert_kd_keys(_kd_kind(row)) if k in METHOD_KEYS or k == "kd.alpha"}


def _hover_agg(row, data: _Data) -> str:
    """Hover text of one seed-averaged config: the full config and every metric, compact."""
    n = int(row["n_seeds"])
    head = [f"<b>{_e(_label(row, data))}</b>",
            f"<b>{ACC_LABEL}: {_metric(ACC, row.get(f'{ACC}_mean'), row.get(f'{ACC}_ci95'))}"
            f"</b> (95 % CI, {n} seed{'s' if n != 1 else ''}: {_e(row['seeds'])})"]
    hidden = _hidden_kd_keys(row) | ({"student.stem"} if _is_vit(row) else set())
    config = [f"{key}={_value(key, row.get(key))}" for key in data.agg.columns
              if ("." in key or key == "is_baseline") and key not in hidden]
    metrics = []
    for m, (label, _) in METRIC_LABELS.items():
        mean = row.get(f"{m}_mean")
        if _isnan(mean) or m == ACC:
            continue
        ci = row.get(f"{m}_ci95")
        if not _isnan(ci) and abs(ci) <= 1e-9 * max(abs(mean), 1e-12):
            ci = None  # constant across seeds: no interval worth printing
        metrics.append(f"{label}: {_metric(m, mean, ci)}")
    devices = [f"{c}: {row.get(c)}" for c in ("gpu_device", "cpu_device", "onnx_device",
                                              "arch_signature") if not _isnan(row.get(c))]
    lines = [*head, "<i>config</i>", *(_e(x) for x in _wrap(config)),
             "<i>metrics, mean ± 95 % CI over seeds</i>",
             *(_e(x) for x in _wrap(metrics, sep="; ")),
             *(_e(x) for x in _wrap(devices)),
             _e(f"trials: {row['trial_ids'].replace(';', ', ')}"),
             _e(f"checkpoint (best seed): {row.get('best_checkpoint') or '—'}")]
    return "<br>".join(lines)


#: One line style per teacher (a run may hold several): dotted dark grey first, as before.
TEACHER_LINES = [("#444444", "dot"), ("#8c2d04", "dash"), ("#4a1486", "dashdot"),
                 ("#00441b", "longdash"), ("#7f7f7f", "longdashdot")]


def _teacher_line_style(i: int) -> dict:
    color, dash = TEACHER_LINES[i % len(TEACHER_LINES)]
    return dict(color=color, dash=dash, width=1.5)


def _teacher_hlines(fig, data: _Data, subplots: bool = False):
    """Each teacher's test accuracy as a dotted reference line, named in the legend (an
    annotation on the line would hide the points next to it): one line per teacher_name, an
    ensemble's with its members' accuracies."""
    import plotly.graph_objects as go

    where = dict(row="all", col="all") if subplots else {}
    for i, (label, acc) in enumerate(data.teacher_lines()):
        line = _teacher_line_style(i)
        fig.add_hline(y=100 * acc, line=line, **where)
        trace = go.Scatter(x=[None], y=[None], mode="lines", name=_e(label),
                           line=line, hoverinfo="skip")
        if subplots:
            fig.add_trace(trace, row=1, col=1)
        else:
            fig.add_trace(trace)


def _channel_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows that were channel-pruned (by a ratio > 0): the only pruning that moves latency."""
    method = rows["prune.method"] if "prune.method" in rows else pd.Series(None, rows.index)
    return (method == "channel") & (rows["prune.ratio"].fillna(0) > 0)


def _prune_method_traces(sub: pd.DataFrame) -> list[tuple[bool, pd.DataFrame]]:
    """(channel-pruned?, rows) pairs, dense-kernel rows first."""
    channel = _channel_mask(sub)
    return [(flag, sub[channel == flag]) for flag in (False, True) if (channel == flag).any()]


def _front_scatter(data: _Data, x: str, front_col: str, x_label: str, title: str,
                   acc: str = ACC, select: str = SELECT) -> object:
    """``acc``/``select``: the test accuracy shown and the validation accuracy the front is
    chosen on (an INT8 target's own, see _Latency)."""
    import plotly.graph_objects as go

    int8 = acc != ACC
    agg = data.agg[data.agg[x].notna() & data.agg[f"{acc}_mean"].notna()]
    fig = go.Figure()
    cmax = max(float(data.agg["prune.ratio"].max() or 0), 0.5)
    for arch in data.arch_order:
        for channel, sub in _prune_method_traces(agg[agg["student.arch"] == arch]):
            on = sub[front_col].astype(bool).to_numpy()
            symbol = data.arch_symbol(arch) + ("-open" if channel else "")
            # An open symbol is drawn by its outline alone, so it keeps the prune-ratio colour
            # there; the front is told apart by size (and the staircase) instead.
            outline = (dict(width=2.5) if channel else
                       dict(color=np.where(on, "#000", "#fff").tolist(),
                            width=np.where(on, 2.0, 0.8).tolist()))
            fig.add_trace(go.Scatter(
                x=sub[x], y=100 * sub[f"{acc}_mean"], mode="markers",
                name=_e(arch) + (" · channel-pruned (open symbol)" if channel else ""),
                legendgroup=arch,
                marker=dict(symbol=symbol, size=np.where(on, 14, 10), color=sub["prune.ratio"],
                            coloraxis="coloraxis", opacity=1.0, line=outline),
                error_y=dict(type="data", array=(100 * sub[f"{acc}_ci95"]).tolist(),
                             thickness=1, width=3, color="rgba(90,90,90,0.6)"),
                hovertext=[_hover_agg(r, data) for _, r in sub.iterrows()], hoverinfo="text",
            ))
    front = agg[agg[front_col].astype(bool)].sort_values([x, select])
    if not front.empty:
        fig.add_trace(go.Scatter(
            x=front[x], y=100 * front[f"{acc}_mean"], mode="lines",
            name="Pareto front (chosen on " + ("INT8 " if int8 else "") + "validation accuracy)",
            line=dict(color="#000", width=2, shape="hv"), hoverinfo="skip",
        ))
    # Trials that did not complete but still have both coordinates (rare): shown, marked.
    # (Never for INT8: only completed students are exported.)
    raw_x = x[: -len("_mean")]
    others = data.trials[(data.trials["status"] != "completed") & data.trials[raw_x].notna()
                         & data.trials["val_acc"].notna()] if not int8 else data.trials.iloc[0:0]
    if not others.empty:
        fig.add_trace(go.Scatter(
            x=others[raw_x], y=100 * others["val_acc"], mode="markers",
            name="stopped / errored (last val. acc., not eligible)",
            marker=dict(symbol="x-thin-open", size=9, color="#888"),
            hovertext=[f"{_e(r['trial_id'])} ({_e(r['status'])})<br>{_e(_label(r, data))}"
                       for _, r in others.iterrows()], hoverinfo="text",
        ))
    _teacher_hlines(fig, data)
    _base_layout(fig, height=560)
    fig.update_layout(meta={"title": title, "subtitle": CHOSEN_ON_VAL_INT8 if int8
                            else CHOSEN_ON_VAL}, margin=dict(t=80))
    fig.update_layout(
        coloraxis=dict(colorscale=PRUNE_SCALE, cmin=0, cmax=cmax,
                       colorbar=dict(title=dict(text="prune<br>ratio", side="top"),
                                     thickness=14, len=0.75, tickformat=".0%")),
        xaxis_title=_e(x_label),
        yaxis_title=f"{ACC_LABEL_INT8 if int8 else ACC_LABEL}, mean over seeds ± 95 % CI",
        # latency, size and accuracy are never negative: a lone x value or a 2-seed CI bar
        # must not stretch an axis below 0
        xaxis_rangemode="nonnegative", yaxis_rangemode="nonnegative",
    )
    return fig


def _pruning_note(rows: pd.DataFrame, what: str) -> str:
    """Why pruning moves (or cannot move) the points of a chart along its cost axis."""
    pruned = rows[rows["prune.ratio"].fillna(0) > 0]
    channel = _channel_mask(pruned)
    n_channel, n_weights = int(channel.sum()), int((~channel).sum())
    if what == "latency":
        dense = ("unstructured pruning zeroes single weights but leaves dense kernels, so it "
                 "cannot change latency")
        if not n_channel:
            return (f"No configuration here was channel-pruned: {dense}, and points of one "
                    "architecture and stem differ in latency only by timing noise.")
        text = ("Channel pruning (open symbols) removes whole channels and so moves latency "
                "and size.")
        return text + (f" {dense[0].upper()}{dense[1:]}." if n_weights else "")
    if n_channel:
        return ("Channel pruning (open symbols) shrinks the dense model; unstructured pruning "
                "only shrinks the sparse storage, which pays off once enough weights are zero.")
    return ""


def _panel_intro(data: _Data, rows: pd.DataFrame, cheaper: str, what: str) -> str:
    n_bad = int((data.trials["status"] != "completed").sum())
    tail = (f" {n_bad} stopped or errored trial{'s' if n_bad != 1 else ''} "
            "had no final measurement and cannot be on a front (see the learning curves and "
            "the trial table)." if n_bad else "")
    return ("Each point is one configuration, its test accuracy averaged over seeds (bar: "
            "95 % confidence interval). Symbol = student architecture, colour = prune ratio. "
            f"Black outline and staircase = Pareto front, <b>{CHOSEN_ON_VAL}</b>: no other "
            f"configuration has a higher validation accuracy and is {cheaper}. "
            + _pruning_note(rows, what)
            + " Hover a point for its full config and every metric." + tail)


def _panel_latency(data: _Data, lat: _Latency | None, key: str) -> _Panel:
    title = f"Accuracy vs {lat.name} latency" if lat else "Accuracy vs latency"
    if data.agg.empty:
        return _Panel(key, title, "", note=_no_completed_note(data))
    if lat is None:
        return _Panel(key, title, "",
                      note="No latency was measured in this sweep, so there is no "
                           "accuracy/latency trade-off to show.")
    rows = data.agg[data.agg[lat.col].notna()]
    fig = _front_scatter(data, lat.col, lat.front_col, lat.label,
                         f"{'INT8 test' if lat.int8 else 'Test'} accuracy vs batch-1 {lat.name} "
                         "latency", lat.acc, lat.select)
    text = _panel_intro(data, rows, "faster", "latency")
    if lat.target.startswith("onnx"):
        text += (" Latency of each student's ONNX export in onnxruntime on the CPU with a fixed "
                 "thread count (kdtune export writes the same files).")
    if lat.int8:
        text += (" <b>Here every accuracy is the INT8 file's own</b> (static post-training "
                 "quantization, calibrated on training images), measured in onnxruntime: the "
                 "front is chosen on its validation accuracy and shows its test accuracy; the "
                 "recipe is in the provenance.")
    if "arch_signature" in rows and rows["arch_signature"].notna().any():
        text += (" Configurations with the same architecture signature (architecture, stem, "
                 "input size, widths) share one latency measurement.")
    return _Panel(key, f"{title} — {lat.device}", text, fig, height=560)


def _panel_size(data: _Data) -> _Panel:
    title = "Accuracy vs model size"
    if data.agg.empty:
        return _Panel("front_size", title, "", note=_no_completed_note(data))
    if not data.size:
        return _Panel("front_size", title, "", note="No model size was measured in this sweep.")
    fig = _front_scatter(data, data.size, "on_front_size", data.size_label,
                         "Test accuracy vs model size")
    rows = data.agg[data.agg[data.size].notna()]
    return _Panel("front_size", title, _panel_intro(data, rows, "smaller", "size"), fig,
                  height=560)


def _panel_best_only(data: _Data) -> _Panel:
    """One objective (no latency, no size): rank the configurations by accuracy."""
    import plotly.graph_objects as go

    agg = data.agg.dropna(subset=[f"{ACC}_mean"]).sort_values([SELECT, f"{ACC}_mean"]).tail(30)
    fig = go.Figure(go.Scatter(
        x=100 * agg[f"{ACC}_mean"], y=[_label(r, data) for _, r in agg.iterrows()],
        mode="markers",
        marker=dict(size=np.where(agg["on_front"], 14, 9),
                    color=np.where(agg["on_front"], "#d62728", "#1f77b4").tolist()),
        error_x=dict(type="data", array=(100 * agg[f"{ACC}_ci95"]).tolist(), thickness=1),
        hovertext=[_hover_agg(r, data) for _, r in agg.iterrows()], hoverinfo="text",
        name="configurations",
    ))
    for i, (label, acc) in enumerate(data.teacher_lines()):
        fig.add_vline(x=100 * acc, line=_teacher_line_style(i),
                      annotation_text=_e(label), annotation_position="bottom left")
    _base_layout(fig, height=max(320, 60 + 24 * len(agg)))
    fig.update_layout(meta={"title": "Configurations ranked by validation accuracy, test "
                                     "accuracy shown (chosen one in red)"})
    fig.update_layout(xaxis_title=f"{ACC_LABEL}, mean over seeds ± 95 % CI",
                      margin=dict(l=20), yaxis=dict(automargin=True))
    return _Panel("best_only", "Best configuration (accuracy is the only objective)",
                  "Neither latency nor size was measured, so there is no trade-off: the "
                  "configurations are ranked by validation accuracy (best at the top, in red) "
                  "and shown with their test accuracy.", fig,
                  height=max(320, 60 + 24 * len(agg)))


def _panel_3d(data: _Data) -> _Panel:
    import plotly.graph_objects as go

    title = "Accuracy, latency and size together"
    if data.agg.empty:
        return _Panel("front_3d", title, "", note=_no_completed_note(data))
    if not (data.lat and data.size):
        return _Panel("front_3d", title, "",
                      note="The 3-D view needs both latency and size; this sweep measured "
                           + ("only size." if data.size else "only latency." if data.lat
                              else "neither."))
    agg = data.agg.dropna(subset=[data.lat, data.size, f"{ACC}_mean"])
    fig = go.Figure()
    for arch in data.arch_order:
        for on in (True, False):
            sub = agg[(agg["student.arch"] == arch) & (agg["on_front_3d"].astype(bool) == on)]
            if sub.empty:
                continue
            fig.add_trace(go.Scatter3d(
                x=sub[data.lat], y=sub[data.size], z=100 * sub[f"{ACC}_mean"], mode="markers",
                name=f"{_e(arch)} — {'on the 3-D front' if on else 'dominated'}",
                marker=dict(symbol=data.arch_symbol(arch, SYMBOLS_3D), size=7 if on else 4,
                            color=sub["prune.ratio"], coloraxis="coloraxis",
                            opacity=1.0 if on else 0.45,
                            line=dict(color="#000", width=2 if on else 0)),
                hovertext=[_hover_agg(r, data) for _, r in sub.iterrows()], hoverinfo="text",
            ))
    cmax = max(float(data.agg["prune.ratio"].max() or 0), 0.5)
    _base_layout(fig, height=620)
    fig.update_layout(
        scene=dict(xaxis_title=_e(data.lat_label), yaxis_title="size (MB)",
                   zaxis_title="test accuracy (%)", camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9))),
        coloraxis=dict(colorscale=PRUNE_SCALE, cmin=0, cmax=cmax,
                       colorbar=dict(title=dict(text="prune<br>ratio", side="top"),
                                     thickness=14, len=0.6, tickformat=".0%")),
        margin=dict(l=0, r=0, t=40, b=0),
    )
    return _Panel("front_3d", title,
                  "Drag to rotate. Large outlined points are on the 3-objective front, chosen on "
                  "validation accuracy (nothing else has a higher validation accuracy and is "
                  "faster and smaller at once); test accuracy shown. Axes: "
                  f"{_e(data.lat_label)}; {_e(data.size_label)}; test accuracy in %.",
                  fig, height=620)


def _panel_parcoords(data: _Data) -> _Panel:
    import plotly.graph_objects as go

    title = "Searched hyperparameters"
    done = data.completed.dropna(subset=[ACC])
    keys = [k for k in data.searched if k in done.columns]
    if done.empty:
        return _Panel("parcoords", title, "", note=_no_completed_note(data))
    if not keys:
        return _Panel("parcoords", title, "",
                      note="Nothing was searched in this sweep (a single configuration).")
    dims = []
    for key in keys:
        col = done[key]
        label = SHORT.get(key, key)
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.astype(float).fillna(-1 if col.isna().any() else 0)
            uniq = sorted(vals.unique())
            dim = dict(label=label, values=vals.tolist())
            if len(uniq) <= 8:
                dim.update(tickvals=uniq, ticktext=[_num(v) for v in uniq])
            if key == "prune.ratio":
                dim["ticktext"] = [f"{100 * v:.0f} %" for v in uniq] if len(uniq) <= 8 else None
                if dim["ticktext"] is None:
                    dim.pop("ticktext")
            dims.append(dim)
        else:
            text = col.map(lambda v, k=key: _value(k, v))
            cats = list(dict.fromkeys(sorted(text.unique())))
            codes = text.map({c: i for i, c in enumerate(cats)})
            dims.append(dict(label=label, values=codes.tolist(), tickvals=list(range(len(cats))),
                             ticktext=cats, range=[-0.3, max(len(cats) - 1, 0) + 0.3]))
    acc = 100 * done[ACC]
    lo, hi = math.floor(acc.min()), math.ceil(acc.max())
    hi = hi if hi > lo else lo + 1
    dims.append(dict(label="test acc. (%)", values=acc.tolist(), range=[lo, hi],
                     tickformat=".0f"))
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line=dict(color=acc.tolist(), colorscale="Viridis", showscale=True,
                  colorbar=dict(title=dict(text="test<br>acc. (%)", side="top"), thickness=14)),
        labelfont=dict(size=13), tickfont=dict(size=11),
    ))
    _base_layout(fig, height=460)
    fig.update_layout(margin=dict(l=110, r=70, t=70, b=30))
    return _Panel("parcoords", title,
                  "One line per completed trial (every seed), coloured by its test accuracy "
                  "(yellow = best). Drag along an axis to keep only the lines that cross a range "
                  "and see which settings the accurate trials share.", fig, height=460)


def _mean_ci(values: pd.Series) -> tuple[float, float, int]:
    v = values.dropna().astype(float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n >= 2 else math.nan
    return mean, ci95_halfwidth(std, n), n


def _seeds_text(seeds: pd.Series) -> str:
    return ",".join(_num(x) for x in sorted(set(seeds.dropna().astype(float))))


def method_ablation(data: _Data) -> list[dict]:
    """Test accuracy per distillation method and student architecture: the completed KD
    trials of each kd.method and the no-KD trials (α = 0), all trials of a kind pooled as in
    the other ablations. One dict per (arch, method): ``mean``, ``ci`` (95 %), ``n_trials``,
    ``n_configs`` (distinct trainings: keys a method does not use are not counted), ``seeds``,
    ``position`` (the method's place on the axis). Empty when there is a single kind: nothing
    to compare."""
    done = data.completed.dropna(subset=[ACC])
    kinds = kd_method(done)
    order = sorted(set(kinds), key=lambda k: (_method_rank(k), k))
    if len(order) < 2:
        return []
    out = []
    for arch in data.arch_order:
        for position, kind in enumerate(order):
            rows = done[(done["student.arch"] == arch) & (kinds == kind)]
            if rows.empty:
                continue
            mean, ci, n = _mean_ci(rows[ACC])
            inert = ("is_baseline", *_inert_kd_keys(kind),
                     *(_teacher_cols(rows) if kind == NO_KD else ()))
            out.append(dict(arch=arch, method=kind, name=_method_name(kind), position=position,
                            mean=mean, ci=ci, n_trials=n, seeds=_seeds_text(rows["seed"]),
                            n_configs=_n_configs(rows, inert)))
    return out


#: The no-KD reference of the teacher ablation (α = 0: no teacher used).
NO_TEACHER = "no KD (α = 0)"


def teacher_ablation(data: _Data) -> list[dict]:
    """Test accuracy per teacher and student architecture: the completed KD trials (α > 0) of
    each teacher_name, and the no-KD trials (α = 0) as the reference, all trials of a kind
    pooled as in the method ablation. One dict per (arch, teacher): ``teacher`` (the name, or
    None for no KD), ``name`` (the axis label), ``mean``, ``ci`` (95 %), ``n_trials``,
    ``n_configs``, ``seeds``, ``position``. Empty unless the KD trials span more than one
    teacher."""
    done = data.completed.dropna(subset=[ACC])
    kd = done[done["kd.alpha"] > 0]
    names = _teachers_of(kd)
    teachers = list(dict.fromkeys(names))
    if len(teachers) < 2:
        return []
    no_kd = done[done["kd.alpha"] == 0]
    groups = [(None, NO_TEACHER, no_kd)] if not no_kd.empty else []
    groups += [(t, t, kd[names == t]) for t in teachers]
    out = []
    for arch in data.arch_order:
        for position, (teacher, label, rows) in enumerate(groups):
            rows = rows[rows["student.arch"] == arch]
            if rows.empty:
                continue
            mean, ci, n = _mean_ci(rows[ACC])
            inert = ("is_baseline", *(_no_kd_inert(rows) if teacher is None else ()))
            out.append(dict(arch=arch, teacher=teacher, name=label, position=position,
                            hover=label if teacher is None else f"teacher {teacher}",
                            mean=mean, ci=ci, n_trials=n, seeds=_seeds_text(rows["seed"]),
                            n_configs=_n_configs(rows, inert)))
    return out


def _add_kind_ablation(fig, data: _Data, entries: list[dict], done: pd.DataFrame,
                       kinds: pd.Series, axis_title: str, row: int) -> None:
    """One "kind" ablation (distillation method, teacher) into one subplot: a point ± 95 % CI
    per kind and architecture, the architectures side by side around each kind (a shared x
    would stack them). ``kinds``: each trial's kind, as the entries' ``name``."""
    import plotly.graph_objects as go

    positions = {e["name"]: e["position"] for e in entries}
    archs = [a for a in data.arch_order if any(e["arch"] == a for e in entries)]
    for i, arch in enumerate(archs):
        shift = 0.12 * (i - (len(archs) - 1) / 2)
        mine = [e for e in entries if e["arch"] == arch]
        trials = done[(done["student.arch"] == arch) & kinds.isin(list(positions))]
        color = data.arch_color(arch)
        fig.add_trace(go.Scatter(
            x=[positions[k] + shift for k in kinds[trials.index]], y=100 * trials[ACC],
            mode="markers", showlegend=False, legendgroup=arch, hoverinfo="skip",
            marker=dict(color=color, size=5, opacity=0.25),
        ), row=row, col=1)
        fig.add_trace(go.Scatter(
            x=[e["position"] + shift for e in mine], y=[100 * e["mean"] for e in mine],
            mode="markers", name=_e(arch), legendgroup=arch, showlegend=False,
            marker=dict(color=color, size=11, symbol=data.arch_symbol(arch)),
            error_y=dict(type="data", array=[None if _isnan(e["ci"]) else 100 * e["ci"]
                                             for e in mine], thickness=1.5, width=6),
            hovertext=[f"{_e(arch)}, {_e(e.get('hover', e['name']))}<br>mean test acc. "
                       f"{100 * e['mean']:.2f} %"
                       + (f" ± {100 * e['ci']:.2f}" if not _isnan(e["ci"]) else "")
                       + f" (95 % CI, {_plural(e['n_trials'], 'trial')})<br>"
                       f"{_plural(e['n_configs'], 'config')}, seeds {_e(e['seeds'])}"
                       for e in mine], hoverinfo="text",
        ), row=row, col=1)
    names = {e["position"]: e["name"] for e in entries}
    fig.update_xaxes(tickvals=sorted(names),
                     ticktext=[_e(names[k]).replace(" + ", "<br>+ ") for k in sorted(names)],
                     range=[-0.5, max(names) + 0.5], title_text=axis_title, row=row, col=1)
    fig.update_yaxes(title_text="test acc. (%)", row=row, col=1)


def _panel_ablation(data: _Data) -> _Panel:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    title = "Ablations: accuracy vs each knob"
    done = data.completed.dropna(subset=[ACC])
    if done.empty:
        return _Panel("ablation", title, "", note=_no_completed_note(data))
    kinds = kd_method(done)
    params = [
        ("kd.temperature", "KD temperature T (KD trials only)", done[done["kd.alpha"] > 0]),
        # DKD's loss has no α: its trials' α values would be noise on this axis
        ("kd.alpha", "KD weight α (0 = no KD)", done[kinds != "dkd"]),
        ("kd.label_smoothing", "label smoothing ε", done),
        ("prune.ratio", "prune ratio (fraction of weights or channels removed)", done),
    ]
    methods = method_ablation(data)
    teachers = teacher_ablation(data)
    n_rows = 2 + bool(methods) + bool(teachers)
    titles = [p[1] for p in params]
    specs = [[{}, {}], [{}, {}]]
    if methods:
        titles.append("distillation method (KD trials of each kd.method; no KD = α 0)")
        specs.append([{"colspan": 2}, None])
    if teachers:
        titles.append("teacher (KD trials of each teacher; no KD = α 0)")
        specs.append([{"colspan": 2}, None])
    fig = make_subplots(rows=n_rows, cols=2, specs=specs, subplot_titles=titles,
                        horizontal_spacing=0.08,
                        vertical_spacing={2: 0.16, 3: 0.1, 4: 0.075}[n_rows])
    for i, (key, label, sub) in enumerate(params):
        r, c = divmod(i, 2)
        for arch in data.arch_order:
            s = sub[sub["student.arch"] == arch]
            if s.empty:
                continue
            stats = [(float(v), *_mean_ci(g[ACC])) for v, g in s.groupby(key, dropna=True)]
            if not stats:
                continue
            xs, means, cis, ns = zip(*stats, strict=True)
            color = data.arch_color(arch)
            fig.add_trace(go.Scatter(
                x=s[key], y=100 * s[ACC], mode="markers", showlegend=False, legendgroup=arch,
                marker=dict(color=color, size=5, opacity=0.25), hoverinfo="skip",
            ), row=r + 1, col=c + 1)
            fig.add_trace(go.Scatter(
                x=xs, y=[100 * m for m in means], mode="lines+markers", name=_e(arch),
                legendgroup=arch, showlegend=i == 0,
                line=dict(color=color, width=2), marker=dict(color=color, size=9,
                                                             symbol=data.arch_symbol(arch)),
                error_y=dict(type="data", array=[100 * x if not _isnan(x) else None
                                                 for x in cis], thickness=1.2, width=4),
                hovertext=[f"{_e(arch)}, {_e(SHORT.get(key, key))} = {_num(x)}<br>"
                           f"mean test acc. {100 * m:.2f} %"
                           + (f" ± {100 * ci:.2f}" if not _isnan(ci) else "")
                           + f" (95 % CI, {n} trials)"
                           for x, m, ci, n in stats], hoverinfo="text",
            ), row=r + 1, col=c + 1)
        fig.update_xaxes(title_text=_e(label.split(" (")[0]), row=r + 1, col=c + 1)
        fig.update_yaxes(title_text="test acc. (%)", row=r + 1, col=c + 1)
        if key == "prune.ratio":
            fig.update_xaxes(tickformat=".0%", row=r + 1, col=c + 1)
    if methods:
        _add_kind_ablation(fig, data, methods, done, kinds.map(_method_name),
                           "distillation method", row=3)
    if teachers:
        names = _teachers_of(done).where(done["kd.alpha"] != 0, NO_TEACHER)
        _add_kind_ablation(fig, data, teachers, done, names, "teacher", row=n_rows)
    _teacher_hlines(fig, data, subplots=True)
    ys = [*(100 * done[ACC]).tolist(), *(100 * a for _, a in data.teacher_lines())]
    pad = max(0.5, 0.06 * (max(ys) - min(ys)))
    fig.update_yaxes(range=[min(ys) - pad, max(ys) + pad])
    height = {2: 740, 3: 1060, 4: 1380}[n_rows]
    _base_layout(fig, height=height)
    fig.update_layout(margin=dict(t=110), legend=dict(y={2: 1.07, 3: 1.05, 4: 1.04}[n_rows],
                                                      yanchor="bottom"))
    text = ("Marginal effect of each knob: for each value, the test accuracy averaged over "
            "every completed trial with that value (all other settings pooled), ± 95 % CI; "
            "faint dots are the single trials. A flat line means the knob barely matters.")
    if (kinds == "dkd").any():
        text += " DKD trials are left out of the α plot: DKD's loss does not use α."
    if methods:
        text += (" Distillation method: the KD trials of each method and the no-KD trials "
                 "(α = 0), pooled the same way; hover a point for its trials, distinct "
                 "configurations and seeds (the KD vs no KD panel compares like for like).")
    if teachers:
        text += (" Teacher: the KD trials of each teacher (every student, method and setting "
                 "pooled) and the no-KD trials (α = 0) as the reference; the dotted lines are "
                 "the teachers' own test accuracies.")
    return _Panel("ablation", title, text, fig, height=height)


def _best_by_val(agg: pd.DataFrame) -> pd.Series | None:
    """The config with the highest mean validation accuracy (ties: higher test, more seeds)."""
    if agg.empty:
        return None
    order = agg.assign(_v=agg["val_acc_mean"].fillna(-1), _t=agg[f"{ACC}_mean"].fillna(-1))
    order = order.sort_values(["_v", "n_seeds", "_t"], ascending=False)
    return order.iloc[0]


def _comparison(a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    return welch_diff(a[f"{ACC}_mean"], a[f"{ACC}_std"], a[f"{ACC}_n"],
                      b[f"{ACC}_mean"], b[f"{ACC}_std"], b[f"{ACC}_n"])


def _cnn_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose student has a stem (not a vision transformer)."""
    if "student_family" not in rows:
        return rows
    return rows[rows["student_family"].fillna("cnn") != "vit"]


def stem_comparisons(data: _Data) -> list[dict]:
    """Per student arch: best cifar-stem config vs best standard-stem config (by validation).
    Vision transformers are left out: they have no stem (their student.stem means nothing)."""
    out = []
    agg = _cnn_rows(data.agg)
    for arch in data.arch_order:
        sub = agg[agg["student.arch"] == arch]
        best = {stem: _best_by_val(sub[sub["student.stem"] == stem])
                for stem in ("cifar", "standard")}
        if best["cifar"] is None or best["standard"] is None:
            continue
        diff, lo, hi = _comparison(best["cifar"], best["standard"])
        out.append(dict(arch=arch, a=best["cifar"], b=best["standard"], diff=diff, lo=lo, hi=hi))
    return out


# A cell = what a trial is allowed to spend (architecture, stem, epochs, how it is pruned), not
# its searched hyperparameters: when prune.ratio is searched continuously a fixed-ratio no-KD
# config would otherwise never share a cell with a KD config. prune.method is part of the cell:
# channel pruning changes the network and its latency, unstructured pruning does not.
BUDGET_KEYS = ("student.arch", "student.stem", "train.epochs", "prune.finetune_epochs",
               "prune.method")
# The KD method and the keys only some methods use (kdtune.config.KD_METHOD_KEYS).
METHOD_KEYS = ("kd.method", *(f"kd.{key}" for key in KD_METHOD_KEYS))
# Config columns that may differ between a KD config and its no-KD twin: at α = 0 the loss is
# plain cross-entropy, so T, the method and its keys are inert (the sweep's no-KD run keeps the
# base config's method while the KD twin of each method sets its own); is_baseline only says
# how the sweep scheduled the trial.
KD_ONLY_KEYS = ("kd.alpha", "kd.temperature", *METHOD_KEYS, "is_baseline")
TEACHER_PREFIX = "teacher."
# What "held equal" names for twins, besides any other searched key.
HELD_EQUAL = (("kd.label_smoothing", "label smoothing"), ("prune.ratio", "prune method/ratio"),
              ("train.epochs", "epochs"))


def _key(x):
    return None if _isnan(x) else x  # NaN == NaN, for comparing configs


def _twin_key(row, cols: list[str]) -> tuple:
    """Everything a no-KD twin must share with a KD config: its config (α and T aside) and
    its seeds."""
    return (*(_key(row[c]) for c in cols), row["seeds"])


def _n_configs(rows: pd.DataFrame, inert: Sequence[str]) -> int:
    """How many distinct trainings the rows are: configs equal but for ``inert`` train alike."""
    cols = [c for c in config_columns(rows) if c not in inert and c != "seed"]
    return len(rows[cols].astype(str).drop_duplicates())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _differences(a: pd.Series, b: pd.Series, cols: list[str]) -> list[str]:
    """The settings in which two configs differ, e.g. ``"prune ratio 30 % vs 10 %"``."""
    out = [f"{SHORT.get(c, c)} {_value(c, a[c])} vs {_value(c, b[c])}" for c in cols
           if _key(a[c]) != _key(b[c])]
    if a["seeds"] != b["seeds"]:
        out.append(f"seeds {a['seeds']} vs {b['seeds']}")
    return out


def _held_equal(data: _Data) -> str:
    covered = {*KD_ONLY_KEYS, "student.arch", "student.stem", "prune.method",
               "prune.finetune_epochs", *(k for k, _ in HELD_EQUAL)}
    names = [name for _, name in HELD_EQUAL]
    # the teacher keys are no setting of the no-KD side (it learns from no teacher)
    names += [SHORT.get(k, k) for k in data.searched if k not in covered
              and not k.startswith(TEACHER_PREFIX)]
    return ", ".join(names)


def _teacher_cols(rows: pd.DataFrame) -> list[str]:
    """The teacher's config columns (teacher.arch, teacher.ensemble, ...): inert at α = 0, where
    no teacher is used, so they never make two no-KD configs different trainings."""
    return [c for c in config_columns(rows) if c.startswith(TEACHER_PREFIX)]


def _no_kd_inert(rows: pd.DataFrame) -> tuple[str, ...]:
    """Keys that cannot change a no-KD training: the KD keys and the teacher's."""
    return (*KD_ONLY_KEYS, *_teacher_cols(rows))


def _twin_pair(kd: pd.DataFrame, no_kd: pd.DataFrame, cols: list[str],
               inert: Sequence[str] = ("is_baseline",)):
    """(best KD config with a no-KD twin, its twin, number of KD configs with a twin) or None;
    ``inert``: keys that do not make two KD configs different trainings."""
    twins: dict[tuple, list] = {}
    for idx, row in no_kd.iterrows():
        twins.setdefault(_twin_key(row, cols), []).append(idx)
    has_twin = [_twin_key(row, cols) in twins for _, row in kd.iterrows()]
    best = _best_by_val(kd[has_twin])
    if best is None:
        return None
    twin = _best_by_val(no_kd.loc[twins[_twin_key(best, cols)]])
    return best, twin, _n_configs(kd[has_twin], inert)


def _kd_cell(data: _Data, kd: pd.DataFrame, no_kd: pd.DataFrame, cols: list[str],
             method: str = "logit", named: bool = False, teacher: str | None = None) -> dict:
    """One KD vs no-KD comparison in a cell, for the KD configs of one ``method``: twins when
    there are, else best against best. ``named``: the sweep has more methods than logit KD,
    so the texts name this one ("DKD adds", "FitNets: best of 3 configs").

    ``teacher``: the KD configs' teacher, named in the texts ("KD from vit_tiny") when the
    sweep has several.

    ``how``: what was held equal (twins) or how many configs each side had and what differs;
    ``pick``: how the KD side was picked; ``caveat``: why it is not like for like, if it is not.
    """
    name = _method_name(method) if named else "KD"
    if teacher is not None:
        name = f"{name} from {teacher}"
    inert = ("is_baseline", *_inert_kd_keys(method))  # DKD configs differing in α train alike
    twins = _twin_pair(kd, no_kd, cols, inert)
    n_no_kd = _n_configs(no_kd, _no_kd_inert(no_kd))
    common = dict(method=method, teacher=teacher, name=name, n_no_kd=n_no_kd)
    if twins:
        a, b, n_kd = twins
        # logit KD keeps the words it had before kd.method; another method is named with its
        # settings (DKD without α, which its loss does not use)
        setting = (f"α = {_num(a['kd.alpha'])} vs 0" if method == "logit" else
                   f"{_kd_text(a)} vs no KD (α = 0)")
        how = f"same config and seeds, {setting} ({_held_equal(data)} held equal)"
        pick = (f"the only {name} config with a no-KD twin" if n_kd == 1 else
                f"the best by validation of the {n_kd} {name} configs with a no-KD twin")
        return dict(common, kind="twins", a=a, b=b, n_kd=n_kd, untuned=False, differs=[],
                    how=how, pick=pick, caveat="", short="twins")
    a, b = _best_by_val(kd), _best_by_val(no_kd)
    n_kd = _n_configs(kd, inert)
    differs = _differences(a, b, cols)
    only = "α and T" if method == "logit" else "the KD settings"
    how = (f"{name}: best of {_plural(n_kd, 'config')}; no KD: best of "
           f"{_plural(n_no_kd, 'config')}"
           + (f"; the chosen configs differ in {', '.join(differs)}" if differs else
              f"; the chosen configs differ only in {only}"))
    untuned = n_no_kd == 1 and n_kd > 1
    return dict(common, kind="searched", a=a, b=b, n_kd=n_kd, untuned=untuned,
                differs=differs, how=how, pick="both chosen on validation accuracy",
                caveat=f"no-KD side untuned (1 config vs {n_kd})" if untuned else "",
                short=f"{n_kd} vs {n_no_kd} configs")


def _prune_short(a: pd.Series, b: pd.Series) -> str:
    """Pruning of a pair in a few characters, for a chart's tick label."""
    def ratio(r):
        value = r.get("prune.ratio")
        return f"{0 if _isnan(value) else 100 * value:.0f}"

    if _pruning(a) == "unpruned" and _pruning(b) == "unpruned":
        return "unpruned"
    what = "chan." if _channel_pruned(a) or _channel_pruned(b) else "weights"
    both = ratio(a) if ratio(a) == ratio(b) else f"{ratio(a)}/{ratio(b)}"
    return f"{both} % {what}"


def _cell_label(cell: dict, a: pd.Series, b: pd.Series, with_epochs: bool) -> str:
    pruning = _pruning(a)
    if _pruning(b) != pruning:
        pruning = f"{_pruning(a)} (KD) / {_pruning(b).replace('pruned ', '')} (no KD)"
    epochs = f" · {_num(cell.get('train.epochs'))} ep" if with_epochs else ""
    return f"{_student_text({**a, **cell})} · {pruning}{epochs}"


def kd_comparisons(data: _Data) -> list[dict]:
    """KD against no KD (kd.alpha = 0, whatever is_baseline says) per cell (:data:`BUDGET_KEYS`)
    and KD method: each method's KD configs face the same no-KD configs of the cell.

    Twins first: a KD config and a no-KD config equal in every config column but the KD keys
    (:data:`KD_ONLY_KEYS`: α, T, the method and its keys), with the same seeds; the best such
    KD config (by validation accuracy) against its twin. Otherwise the best KD config against
    the best no-KD config (both by validation accuracy), with how many configs each side had
    and what differs. Test accuracies compared (Welch 95 % CI). ``method`` names the KD side's
    kd.method; labels name it unless the sweep only ran logit KD.
    """
    agg = data.agg
    if agg.empty:
        return []
    keys = [k for k in BUDGET_KEYS if k in agg.columns]
    # the teacher is no setting of a no-KD config: a KD config's twin may name another one
    cols = [c for c in config_columns(agg) if c not in (*KD_ONLY_KEYS, "seed", *keys,
                                                          *_teacher_cols(agg))]
    with_epochs = agg["train.epochs"].nunique() > 1
    named = _methods_named(agg)
    methods = kd_method(agg)
    teachers = _teachers_of(agg)
    teacher_rank = {t: i for i, t in enumerate(data.teacher_names())}
    out = []
    for values, grp in agg.groupby(keys, dropna=False, sort=False):
        no_kd = grp[grp["kd.alpha"] == 0]
        if no_kd.empty:
            continue
        cell = dict(zip(keys, values, strict=True))
        for method in kd_methods(grp):
            kd = grp[(grp["kd.alpha"] > 0) & (methods[grp.index] == method)]
            per = list(dict.fromkeys(teachers[kd.index])) if data.multi_teacher else [None]
            for teacher in per:
                mine = kd if teacher is None else kd[teachers[kd.index] == teacher]
                pair = _kd_cell(data, mine, no_kd, cols, method, named, teacher)
                out.append(_kd_entry(pair, cell, with_epochs, named))
    arch_rank = {a: i for i, a in enumerate(data.arch_order)}
    out.sort(key=lambda d: (arch_rank.get(d["arch"], 99), d["ratio"], d["cell_label"],
                            _method_rank(d["method"]), teacher_rank.get(d["teacher"], -1)))
    return out


def _kd_entry(pair: dict, cell: dict, with_epochs: bool, named: bool) -> dict:
    """A comparison of :func:`_kd_cell` with its difference and its labels: ``cell_label``
    (student, stem, pruning), ``label`` (the same and the method when ``named``) and
    ``tick`` (the chart's x label)."""
    diff, lo, hi = _comparison(pair["a"], pair["b"])
    cell_label = _cell_label(cell, pair["a"], pair["b"], with_epochs)
    method = _method_name(pair["method"])
    label = f"{cell_label} · {method}" if named else cell_label
    teacher = pair.get("teacher")
    if teacher is not None:
        label += f" · teacher {teacher}"
    tick = (f"{_student_text({**pair['a'], **cell}, sep='<br>')}<br>"
            f"{_prune_short(pair['a'], pair['b'])}<br>"
            + (f"{_e(teacher).replace(' + ', '<br>+ ')}<br>" if teacher is not None else "")
            + (f"{method}, " if named else "") + pair["short"])
    ratio = pair["a"].get("prune.ratio")
    return dict(pair, arch=cell["student.arch"], cell=cell, cell_label=cell_label,
                label=label, tick=tick, diff=diff, lo=lo, hi=hi,
                ratio=0.0 if _isnan(ratio) else float(ratio))


def _kd_verdict(pair: dict) -> tuple[str, str]:
    """(css class, sentence); a comparison against an untuned side gets no yes/no."""
    if pair["caveat"]:
        return "unsure", (f"not like for like, {pair['caveat']}: {pair['name']} "
                          f"{_diff_text(pair['diff'], pair['lo'], pair['hi'])}")
    return _verdict(pair["diff"], pair["lo"], pair["hi"], f"{pair['name']} adds")


def _pair_figure(data: _Data, pairs: list[dict], x_labels: list[str], names: tuple[str, str],
                 colors: tuple[str, str]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for side, name, color, symbol in (("b", names[1], colors[1], "circle-open"),
                                      ("a", names[0], colors[0], "circle")):
        rows = [p[side] for p in pairs]
        fig.add_trace(go.Scatter(
            x=x_labels, y=[100 * r[f"{ACC}_mean"] for r in rows], mode="markers", name=name,
            marker=dict(size=13, color=color, symbol=symbol, line=dict(width=2, color=color)),
            error_y=dict(type="data", array=[None if _isnan(r[f"{ACC}_ci95"])
                                             else 100 * r[f"{ACC}_ci95"] for r in rows],
                         thickness=1.5, width=6),
            hovertext=[_hover_agg(r, data) for r in rows], hoverinfo="text",
        ))
    _teacher_hlines(fig, data)
    _base_layout(fig, height=460)
    ys = []
    for p in pairs:
        for side in ("a", "b"):
            m, ci = p[side][f"{ACC}_mean"], p[side][f"{ACC}_ci95"]
            ci = 0.0 if _isnan(ci) else ci
            ys += [100 * (m - ci), 100 * (m + ci)]
    ys += [100 * acc for _, acc in data.teacher_lines()]
    lo, hi = min(ys), max(ys)
    pad = max(0.5, 0.12 * (hi - lo))
    fig.update_layout(scattermode="group", scattergap=0.6,
                      yaxis=dict(title="test accuracy (%), mean ± 95 % CI",
                                 range=[max(lo - pad, 0.0), min(hi + pad, 100.0)]),
                      xaxis=dict(type="category", automargin=True, tickangle=0))
    if len(x_labels) > 8:
        # side by side, more than ~8 multi-line labels overlap (16 in a 3-teacher x 3-method
        # study): each on one line, turned upright, and room below for them
        fig.update_xaxes(tickvals=x_labels, tickangle=-90,
                         ticktext=[t.replace("<br>+ ", " + ").replace("<br>", " · ")
                                   for t in x_labels])
        fig.update_layout(height=460 + 7 * max(len(t) for t in x_labels) // 2)
    return fig


def _panel_stem(data: _Data) -> _Panel:
    title = "Stem: standard vs CIFAR"
    if data.agg.empty:
        return _Panel("stem", title, "", note=_no_completed_note(data))
    pairs = stem_comparisons(data)
    if not pairs:
        cnn = _cnn_rows(data.agg)
        if cnn.empty:
            return _Panel("stem", title, "",
                          note="Every student here is a vision transformer, which has no stem: "
                               "no stem comparison in this sweep.")
        stems = sorted(set(cnn["student.stem"].dropna().astype(str)))
        vits = " (vision transformers, which have no stem, left out)" if len(cnn) < len(
            data.agg) else ""
        return _Panel("stem", title, "",
                      note=f"Only the {', '.join(stems) or 'same'} stem was trained{vits}: no "
                           "stem comparison in this sweep.")
    fig = _pair_figure(data, pairs, [p["arch"] for p in pairs],
                       ("CIFAR stem (3×3 conv, stride 1, no max-pool)",
                        "standard ImageNet stem (7×7 conv, stride 2, max-pool)"),
                       ("#e76f51", "#264653"))
    fig.update_xaxes(title_text="student architecture")
    return _Panel("stem", title,
                  "For each student, the best configuration with each stem (chosen on validation "
                  "accuracy; test accuracy shown, ± 95 % CI over seeds). The CIFAR stem keeps the "
                  "32×32 input's resolution: usually more accurate, but slower (see the latency "
                  "chart)." + (" Vision transformers have no stem and are left out."
                               if len(_cnn_rows(data.agg)) < len(data.agg) else ""),
                  fig, height=460)


def _kd_table(pairs: list[dict], named: bool = False, teachers: bool = False) -> str:
    headers = ["student · stem · pruning" + (" · KD method" if named else "")
               + (" · teacher" if teachers else ""), "compared",
               "held equal / what differs",
               "KD: test acc. (%)", "no KD: test acc. (%)", "KD − no KD (95 % CI)"]
    rows = []
    for p in pairs:
        cls, verdict = _kd_verdict(p)
        compared = ("twins" if p["kind"] == "twins" else "best vs best") + f": {p['pick']}"
        rows.append([_e(p["label"]), _e(compared), _e(p["how"]),
                     _e(_metric(ACC, p["a"][f"{ACC}_mean"], p["a"][f"{ACC}_ci95"])),
                     _e(_metric(ACC, p["b"][f"{ACC}_mean"], p["b"][f"{ACC}_ci95"])),
                     f"<span class='{cls}'>{_e(verdict)}</span>"])
    return _table(headers, rows, "kd")


def _panel_kd(data: _Data) -> _Panel:
    title = "KD vs no KD, like for like"
    if data.agg.empty:
        return _Panel("kd_vs_baseline", title, "", note=_no_completed_note(data))
    if not (data.agg["kd.alpha"] == 0).any():
        return _Panel("kd_vs_baseline", title, "",
                      note="This sweep has no no-KD trial (no completed trial with kd.alpha = "
                           "0), so whether distillation helps cannot be measured here. Add "
                           "kd.alpha: 0 to the search space, or search.baseline: true.")
    pairs = kd_comparisons(data)
    if not pairs:
        return _Panel("kd_vs_baseline", title, "",
                      note="The no-KD (kd.alpha = 0) and the KD configurations never share a "
                           "cell (student, stem, epochs, fine-tune epochs, prune method), so "
                           "they cannot be compared fairly.")
    named = _methods_named(data.agg)
    kd_name = "KD (each method's best)" if named else "KD (α > 0)"
    fig = _pair_figure(data, pairs, [p["tick"] for p in pairs],
                       (kd_name, "no KD (α = 0)"), ("#2a9d8f", "#6c757d"))
    per = [w for w, on in (("KD method", named), ("teacher", data.multi_teacher)) if on]
    # meta: the title and subtitle of kd_vs_no_kd.png (the page has its own heading)
    fig.update_layout(meta={"title": "Test accuracy, KD vs no KD, like for like",
                            "subtitle": "best configurations chosen on validation accuracy; "
                                        "test accuracy shown, ± 95 % CI over seeds"})
    fig.update_xaxes(title_text="same student, stem, epochs and prune method"
                     + (", per " + " and ".join(per) if per else ""), tickfont=dict(size=11))
    n_twins = sum(p["kind"] == "twins" for p in pairs)
    inert = "the KD settings (α, T, method)" if named else "α and the then inert T"
    per_method = (" <b>Per distillation method</b>: each method's KD configurations face the "
                  "cell's no-KD configurations on their own, so every cell has one "
                  "comparison per method (DKD does not use α: for it only α = 0, no KD, "
                  "counts)." if named else "")
    if data.multi_teacher:
        per_method += (" <b>Per teacher</b>: the KD configurations of each teacher face the "
                       "cell's no-KD configurations on their own (a no-KD trial learns from no "
                       "teacher, so the teacher it names does not matter for it).")
    return _Panel("kd_vs_baseline", title,
                  "Within each cell (same student, stem, epochs, fine-tune epochs and prune "
                  "method) KD (α > 0) is compared with no KD (α = 0)." + per_method
                  + " <b>Twins</b> where a KD configuration has one: a no-KD configuration "
                  f"with every setting and the seeds equal, only {inert} differ; the best such "
                  "KD configuration by validation accuracy faces its twin. Otherwise <b>best vs "
                  "best</b>: the best KD against the best no-KD configuration by validation "
                  "accuracy, with how many configurations each side had. Test accuracy shown, "
                  f"± 95 % CI over seeds. {n_twins} of {len(pairs)} comparisons here are "
                  "twins; the table below says what each held equal.",
                  fig, height=500, after=_kd_table(pairs, named, data.multi_teacher))


def _panel_curves(data: _Data) -> _Panel:
    import plotly.graph_objects as go

    title = "ASHA learning curves"
    ep = data.epochs
    if ep.empty:
        return _Panel("curves", title, "", note="No epochs.parquet: no learning curves recorded.")
    info = data.trials[["run", "trial_id", "status", "student.arch"]]
    ep = ep.merge(info, on=["run", "trial_id"], how="inner")
    if ep.empty:
        return _Panel("curves", title, "", note="epochs.parquet names no trial of trials.parquet.")
    ep = ep.assign(_phase=(ep["phase"].astype(str) == "finetune").astype(int))
    ep = ep.sort_values(["run", "trial_id", "_phase", "epoch"])
    ep["x"] = ep.groupby(["run", "trial_id"]).cumcount() + 1
    fig = go.Figure()
    style = {
        "completed": dict(opacity=0.55, dash="solid", width=1.0, rank=1),
        "stopped": dict(opacity=0.35, dash="dot", width=1.2, rank=2),
        "errored": dict(opacity=0.7, dash="dash", width=1.2, rank=3),
    }
    for status in ("stopped", "errored", "completed"):
        for arch in data.arch_order:
            sub = ep[(ep["status"] == status) & (ep["student.arch"] == arch)]
            if sub.empty:
                continue
            xs, ys, texts = [], [], []
            for (_, tid), g in sub.groupby(["run", "trial_id"], sort=False):
                xs += g["x"].tolist() + [None]
                ys += (100 * g["val_acc"]).tolist() + [None]
                texts += [f"{_e(tid)} ({status})<br>{_e(p)} epoch {int(e)}: "
                          f"val. acc. {100 * v:.2f} %" if not _isnan(v) else ""
                          for p, e, v in zip(g["phase"], g["epoch"], g["val_acc"], strict=True)]
                texts.append("")
            color = STATUS_COLORS["errored"] if status == "errored" else data.arch_color(arch)
            st = style[status]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=f"{_e(arch)} — {status}",
                legendgroup=f"{arch}-{status}", opacity=st["opacity"], legendrank=st["rank"],
                line=dict(color=color, dash=st["dash"], width=st["width"]),
                marker=dict(size=4, color=color), hovertext=texts, hoverinfo="text",
                connectgaps=False,
            ))
    _teacher_hlines(fig, data)
    train_epochs = data.trials["train.epochs"].dropna().unique()
    if len(train_epochs) == 1 and (ep["_phase"] == 1).any():
        fig.add_vline(x=float(train_epochs[0]) + 0.5, line=dict(color="#999", dash="dash"),
                      annotation_text="pruning → fine-tune", annotation_position="bottom right")
    _base_layout(fig, height=500)
    fig.update_layout(xaxis_title="epoch (training, then fine-tuning after pruning)",
                      yaxis_title="validation accuracy (%)",
                      xaxis=dict(dtick=1 if ep["x"].max() <= 30 else None))
    n_stop = int((data.trials["status"] == "stopped").sum())
    return _Panel("curves", title,
                  "Validation accuracy after every epoch, one line per trial. Solid = ran to the "
                  f"end; dotted and faint = stopped early by ASHA ({n_stop} trial"
                  f"{'s' if n_stop != 1 else ''}) because it trailed its rung; dashed red = "
                  "errored.", fig, height=500)


def _no_completed_note(data: _Data) -> str:
    counts = data.trials["status"].value_counts()
    return (f"No trial completed ({int(counts.get('stopped', 0))} stopped early, "
            f"{int(counts.get('errored', 0))} errored), so there is nothing to plot here: see the "
            "learning curves and the trial table below.")


# ---------------------------------------------------------------------------------------------
# Tables and the answer box


def _diff_text(diff, lo, hi) -> str:
    pp = f"{100 * diff:+.2f} pp"
    if _isnan(lo):
        return f"{pp} (no CI: needs ≥ 2 seeds on each side)"
    return f"{pp}, 95 % CI [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _verdict(diff, lo, hi, what: str) -> tuple[str, str]:
    """(css class, sentence) for a difference in accuracy with its CI."""
    ci = _diff_text(diff, lo, hi)
    if _isnan(lo):
        return "unsure", ci
    if lo > 0:
        return "yes", f"yes: {what} {ci}"
    if hi < 0:
        return "no", f"no, it hurts: {ci}"
    return "unsure", f"no clear difference: {ci}"


def _front_rows(data: _Data, front_col: str = "on_front", x: str | None = None,
                select: str = SELECT) -> pd.DataFrame:
    """The configs of a front, cheapest first (ties: best by validation accuracy first)."""
    if data.agg.empty or front_col not in data.agg:
        return data.agg.iloc[0:0]
    front = data.agg[data.agg[front_col].astype(bool)]
    x = x or data.main_x
    return front.sort_values([x, select] if x else [select],
                             ascending=[True, False] if x else [False])


def _spread(row, x: str) -> tuple[float, float]:
    """(low, high) of a cost: the p10..p90 of a latency where measured, else the median alone."""
    mid = float(row[x])
    lo_col, hi_col = latency_spread_columns(x) if x.startswith("latency_ms") else ("", "")
    lo, hi = row.get(lo_col), row.get(hi_col)
    return (mid if _isnan(lo) else min(float(lo), mid), mid if _isnan(hi) else max(float(hi), mid))


def latency_budgets(front: pd.DataFrame, x: str, select: str = SELECT) -> pd.DataFrame:
    """The front as the budgets a user can pick from, cheapest first.

    Walking the front by increasing cost ``x``, an entry whose measured spread (p10–p90)
    overlaps the previous budget's is no new budget, since the two differ by timing noise: only
    the better by validation accuracy (``select``) is kept. Without p10/p90 only equal medians
    merge.
    """
    kept: list = []
    for idx, row in front.sort_values([x, select], ascending=[True, False]).iterrows():
        kept.append(idx)
        while len(kept) >= 2:
            earlier, later = front.loc[kept[-2]], front.loc[kept[-1]]
            (lo_a, hi_a), (lo_b, hi_b) = _spread(earlier, x), _spread(later, x)
            if lo_b > hi_a or lo_a > hi_b:
                break
            kept[-2:] = [kept[-1] if later[select] > earlier[select] else kept[-2]]
    return front.loc[kept]


def _cost(x, ref) -> str:
    """A cost with 3 significant digits of ``ref``, so a median and its spread align."""
    decimals = max(0, 2 - math.floor(math.log10(abs(float(ref))))) if ref else 2
    return f"{float(x):.{decimals}f}"


def _spread_text(row, x: str) -> str:
    if not x.startswith("latency_ms"):
        return ""
    lo, hi = (row.get(c) for c in latency_spread_columns(x))
    if not _isnan(lo) and not _isnan(hi):
        return f" (p10–p90 {_cost(lo, row[x])}–{_cost(hi, row[x])})"
    return f" (p90 {_cost(hi, row[x])})" if not _isnan(hi) else ""


def _budget_list(data: _Data, x: str, front_col: str, what: str, unit: str, where: str,
                 acc: str = ACC, select: str = SELECT) -> str:
    front = _front_rows(data, front_col, x, select)
    rows = latency_budgets(front, x, select)
    n_budgets = len(rows)
    if len(rows) > 8:  # thin a long front out: keep both ends
        idx = np.unique(np.linspace(0, len(rows) - 1, 8).round().astype(int))
        rows = rows.iloc[idx]
    lis = "".join(
        f"<li>≤ <b>{_cost(r[x], r[x])} {unit}</b>{_spread_text(r, x)} → "
        f"<b>{_pct(r[f'{acc}_mean'], 2)}</b>"
        + (f" ± {100 * r[f'{acc}_ci95']:.2f}" if not _isnan(r[f"{acc}_ci95"]) else "")
        + f" <span class='cfg'>{_e(_label(r, data))}</span></li>"
        for _, r in rows.iterrows())
    notes = [f"{_e(where)}; {CHOSEN_ON_VAL_INT8 if acc != ACC else CHOSEN_ON_VAL}."]
    if len(front) > n_budgets and what.endswith("latency"):
        notes.append(f"{len(front) - n_budgets} front configuration"
                     f"{'s' if len(front) - n_budgets != 1 else ''} within the timing spread "
                     "(p10–p90) of a neighbour merged into the better one by validation "
                     "accuracy: such budgets differ only by timing noise.")
    if what.endswith("latency") and not any(_spread_text(r, x) for _, r in rows.iterrows()):
        notes.append("No timing spread (p10/p90) was recorded: budgets are split at the median "
                     "latency, so neighbouring ones may differ only by timing noise.")
    best = "Best INT8 test accuracy" if acc != ACC else "Best test accuracy"
    return (f"<h3>{best} per {what} budget</h3><p class='cfg'>{' '.join(notes)}</p>"
            f"<ul>{lis}</ul>")


def _kd_answer(data: _Data) -> str:
    head = "<h3>Does KD help?</h3>"
    if not (data.agg["kd.alpha"] == 0).any():
        return (head + "<p class='unsure'>Cannot tell: no no-KD trial (kd.alpha = 0) completed "
                "in this sweep.</p>")
    kd = kd_comparisons(data)
    if not kd:
        return (head + "<p class='unsure'>Cannot tell: the no-KD (kd.alpha = 0) and KD "
                "configurations never share a cell (student, stem, epochs, prune method).</p>")
    lis = []
    for p in kd[:8]:
        cls, text = _kd_verdict(p)
        lis.append(f"<li class='{cls}'><b>{_e(p['label'])}</b>: {_e(text)} "
                   f"<span class='cfg'>({_pct(p['a'][f'{ACC}_mean'], 2)} with "
                   f"{_e(p['name'])} vs {_pct(p['b'][f'{ACC}_mean'], 2)} without; "
                   f"{_e(p['how'])})</span></li>")
    more = f"<li>… {len(kd) - 8} more in the KD panel</li>" if len(kd) > 8 else ""
    per = ["student", "stem", "pruning", *(["KD method"] if _methods_named(data.agg) else []),
           *(["teacher"] if data.multi_teacher else [])]
    per = ", ".join(per[:-1]) + " and " + per[-1]
    return (f"<h3>Does KD help? (KD vs no KD per {per}; configs chosen on validation accuracy, "
            f"test accuracy compared)</h3>{_largest_gain(kd)}<ul>{''.join(lis)}{more}</ul>")


def _largest_gain(pairs: list[dict]) -> str:
    """With several KD methods or teachers: the like-for-like comparison with the largest
    KD − no KD difference, with its CI and the same verdict as its row (so it never says more
    than the table). Nothing when one method and one teacher ran or no comparison is like for
    like."""
    fair = [p for p in pairs if not p["caveat"] and not _isnan(p["diff"])]
    if len({(p["method"], p.get("teacher")) for p in pairs}) < 2 or not fair:
        return ""
    top = max(fair, key=lambda p: p["diff"])
    cls, text = _kd_verdict(top)
    return (f"<p class='{cls}'>Where KD did best (highest KD − no KD), like for like: "
            f"<b>{_e(top['name'])}</b> ({_e(top['cell_label'])}): {_e(text)}</p>")


def _answer_box(data: _Data) -> str:
    t = data.trials
    counts = t["status"].value_counts()
    items = []
    label = "; ".join(dict.fromkeys(t["data.label"].dropna().astype(str))) or "unknown dataset"
    teach = "; ".join(lbl for lbl, _ in data.teacher_lines()) or "teacher accuracy not recorded"
    items.append(
        f"<p class='lead'><b>{_e(label)}</b> · {len(t)} trial{'s' if len(t) != 1 else ''}: "
        f"<span class='badge completed'>{int(counts.get('completed', 0))} completed</span> "
        f"<span class='badge stopped'>{int(counts.get('stopped', 0))} stopped early (ASHA)</span> "
        f"<span class='badge errored'>{int(counts.get('errored', 0))} errored</span> · "
        f"{_e(teach)}</p>")
    if data.agg.empty:
        items.append("<p class='warn'>No trial completed: there is no front and no comparison. "
                     "See the learning curves and the errors in the trial table.</p>")
    else:
        if data.latencies:
            items += [_budget_list(data, lat.col, lat.front_col, f"{lat.name} latency", "ms",
                                   lat.label, lat.acc, lat.select) for lat in data.latencies]
        elif data.size:
            items.append(_budget_list(data, data.size, "on_front_size", "size", "MB",
                                      data.size_label))
        else:
            best = _front_rows(data).iloc[0]
            items.append(f"<h3>Best configuration</h3><p><b>{_pct(best[f'{ACC}_mean'], 2)}</b> "
                         f"<span class='cfg'>{_e(_label(best, data))}</span> (no latency or size "
                         "measured: accuracy is the only objective; chosen on validation "
                         "accuracy, test accuracy shown)</p>")
        items.append(_kd_answer(data))
        stems = stem_comparisons(data)
        if stems:
            lis = []
            for p in stems:
                cls, text = _verdict(p["diff"], p["lo"], p["hi"], "the CIFAR stem adds")
                lat = ""
                if data.lat:
                    lat = (f"; {data.latencies[0].name} latency {_num(p['a'][data.lat], 3)} vs "
                           f"{_num(p['b'][data.lat], 3)} ms")
                lis.append(f"<li class='{cls}'><b>{_e(p['arch'])}</b>: {_e(text)}"
                           f" <span class='cfg'>({_pct(p['a'][f'{ACC}_mean'], 2)} vs "
                           f"{_pct(p['b'][f'{ACC}_mean'], 2)}{lat})</span></li>")
            items.append(f"<h3>Does the CIFAR stem help? (best config per stem by validation "
                         f"accuracy)</h3><ul>{''.join(lis)}</ul>")
    errored = t[t["status"] == "errored"]
    if not errored.empty:
        msgs = errored["error"].fillna("(no message)").astype(str).str.split("\n").str[0]
        lis = "".join(f"<li><code>{_e(m[:200])}</code> × {n}</li>"
                      for m, n in msgs.value_counts().items())
        items.append(f"<h3 class='no'>{len(errored)} trial{'s' if len(errored) != 1 else ''} "
                     f"errored</h3><ul>{lis}</ul>")
    items += [f"<p class='warn'>{_e(n)}</p>" for n in data.notes]
    return "<section class='answer'><h2>The answer</h2>" + "".join(items) + "</section>"


def _table(headers: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    head = ("<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>"
            if headers else "")
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class='tablewrap'><table class='{cls}'>{head}<tbody>{body}</tbody></table></div>"


def _front_table(data: _Data) -> str:
    front = _front_rows(data)
    if front.empty:
        return "<p class='note'>No front: no trial completed.</p>"
    named = _methods_named(data.agg)
    teacher = data.multi_teacher
    headers = ["#", "student", "stem", *(["KD method"] if named else []),
               *(["teacher"] if teacher else []), "T", "α", "ε",
               "prune", "val. acc. (%) (chosen on)", "test acc. (%) ± 95 % CI"]
    headers += [f"{lat.name} latency (ms), p10–p90" for lat in data.latencies]
    int8 = "test_acc_onnx_int8_mean" in data.agg and \
        data.agg["test_acc_onnx_int8_mean"].notna().any()
    if int8:
        headers.append("INT8 test acc. (%) (onnxruntime)")
    if data.size:
        headers.append("size (MB)")
    headers += ["seeds", "checkpoint (best seed by val. acc.)"]
    rows = []
    for i, (_, r) in enumerate(front.iterrows(), 1):
        row = [str(i), _e(r["student.arch"]), _e(_stem_cell(r)),
               *([_e(_method_text(r))] if named else []),
               *([_e(_teacher_cell(r))] if teacher else []),
               "—" if _no_kd(r) else _num(r["kd.temperature"]),
               _alpha_cell(r), _num(r["kd.label_smoothing"]),
               _e(_pruning(r).replace("pruned ", "")),
               _e(_metric("val_acc", r[SELECT])),
               f"<span class='acc'>{_e(_metric(ACC, r[f'{ACC}_mean'], r[f'{ACC}_ci95']))}"
               "</span>"]
        row += [_cost(r[lat.col], r[lat.col]) + _e(_spread_text(r, lat.col))
                for lat in data.latencies]
        if int8:
            row.append(_e(_metric("test_acc_onnx_int8", r["test_acc_onnx_int8_mean"],
                                  r["test_acc_onnx_int8_ci95"])))
        if data.size:
            row.append(_num(r[data.size], 4))
        row += [_e(f"{int(r['n_seeds'])} ({r['seeds']})"),
                f"<code class='path'>{_e(r['best_checkpoint'] or '—')}</code>"]
        rows.append(row)
    return _table(headers, rows, "front")


def _trials_table(data: _Data) -> str:
    t = data.trials.copy()
    order = {"completed": 0, "stopped": 1, "errored": 2}
    t = t.assign(_o=t["status"].map(order), _a=-t[ACC].fillna(-1), _v=-t["val_acc"].fillna(-1))
    t = t.sort_values(["_o", "_a", "_v"])
    lat = data.lat_raw
    named = _methods_named(t)
    teacher = data.multi_teacher
    headers = ["trial", "status", "student", "stem", *(["KD method"] if named else []),
               *(["teacher"] if teacher else []), "T",
               "α", "ε", "prune", "seed", "epochs", "val. acc.", "test acc."]
    if lat:
        headers.append("latency (ms)")
    headers += ["size (MB)", "error"]
    if t["run"].nunique() > 1:
        headers.insert(0, "run")
    rows = []
    for _, r in t.iterrows():
        row = [_e(r["trial_id"]), f"<span class='badge {r['status']}'>{_e(r['status'])}</span>",
               _e(r["student.arch"]), _e(_stem_cell(r)),
               *([_e(_method_text(r))] if named else []),
               *([_e(_teacher_cell(r))] if teacher else []), _num(r["kd.temperature"]),
               _alpha_cell(r), _num(r["kd.label_smoothing"]),
               _e(_pruning(r).replace("pruned ", "")), _num(r["seed"]),
               _num(r["epochs_trained"]), _pct(r["val_acc"], 2), _pct(r[ACC], 2)]
        if lat:
            row.append(_num(r[lat], 4))
        row += [_num(r[SIZE_COLUMN], 4),
                f"<code>{_e(str(r['error'])[:160])}</code>" if not _isnan(r["error"]) else ""]
        if t["run"].nunique() > 1:
            row.insert(0, _e(r["run"]))
        rows.append(row)
    counts = t["status"].value_counts()
    summary = (f"All {len(t)} trials ({int(counts.get('completed', 0))} completed, "
               f"{int(counts.get('stopped', 0))} stopped early by ASHA, "
               f"{int(counts.get('errored', 0))} errored) — click to show")
    return f"<details><summary>{_e(summary)}</summary>{_table(headers, rows, 'trials')}</details>"


def provenance(data: _Data) -> dict:
    t = data.trials
    prov: dict = {}
    for col in PROVENANCE_COLUMNS:
        if col not in t:
            continue
        vals = [v for v in dict.fromkeys(t[col].dropna().tolist())]
        vals = [int(v) if isinstance(v, float) and v.is_integer() else v for v in vals]
        prov[col] = vals[0] if len(vals) == 1 else (vals or None)
    prov["runs"] = data.sources or [str(p) for p in data.run_dirs]
    prov["latency_axis"] = "; ".join(lat.label for lat in data.latencies) or None
    try:
        from kdtune import __version__
    except ImportError:  # pragma: no cover
        __version__ = None
    prov["kdtune_version"] = __version__
    return prov


def _provenance_table(prov: dict) -> str:
    labels = {"device": "trained on", "precision": "training precision",
              "channels_last": "training in channels_last",
              "gpu_precision": "GPU latency precision", "cpu_precision": "CPU latency precision",
              "gpu_device": "GPU (latency)", "cpu_device": "CPU (latency)",
              "cpu_threads": "CPU threads (latency)", "git_sha": "git SHA",
              "onnx_device": "onnxruntime (latency)", "onnx_int8_recipe": "INT8 recipe",
              "data.dataset": "dataset kind", "data.label": "dataset",
              "latency_axis": "latency axis", "runs": "run folders"}
    rows = []
    for k, v in prov.items():
        if v is None or v == []:
            v = "—"
        text = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        rows.append([_e(labels.get(k, k.replace("_", " "))), f"<code>{_e(text)}</code>"])
    return _table(None, rows, "prov")


# ---------------------------------------------------------------------------------------------
# Exports


def _best_test(rows: pd.DataFrame) -> pd.Series | None:
    rows = rows.dropna(subset=[ACC])
    if rows.empty:
        return None
    return rows.loc[rows[ACC].idxmax()]


def _family_subset(done: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Unpruned completed trials if the family has any, else all of them (flagged)."""
    unpruned = done[done["prune.ratio"].fillna(0) == 0]
    return (unpruned, False) if not unpruned.empty else (done, True)


def _report_entry(data: _Data, r: pd.Series) -> dict:
    """One seed-averaged config as report.json lists it (front, budgets, comparisons)."""
    entry = {
        "config": {k: r[k] for k in data.agg.columns if "." in k or k == "is_baseline"},
        "test_accuracy": 100 * r[f"{ACC}_mean"],
        "test_accuracy_ci95": 100 * r[f"{ACC}_ci95"],
        "val_accuracy": 100 * r[SELECT],
        "latency_ms": r[data.lat] if data.lat else None,
    }
    for lat in data.latencies:
        lo, hi = latency_spread_columns(lat.col)
        entry[f"latency_ms_{lat.target}"] = r[lat.col]
        entry[f"latency_ms_{lat.target}_p10"] = r.get(lo)
        entry[f"latency_ms_{lat.target}_p90"] = r.get(hi)
        if lat.int8:  # the INT8 file's own accuracies (onnxruntime)
            entry["test_accuracy_int8"] = 100 * r[f"{lat.acc}_mean"]
            entry["test_accuracy_int8_ci95"] = 100 * r[f"{lat.acc}_ci95"]
            entry["val_accuracy_int8"] = 100 * r[lat.select]
    entry.update({
        "size_mb": r[data.size] if data.size else None,
        "arch_signature": r.get("arch_signature"),
        "n_seeds": r["n_seeds"],
        "seeds": r["seeds"],
        "trial_ids": r["trial_ids"].split(";"),
        "checkpoint": r["best_checkpoint"],
    })
    return entry


def _report_kd(data: _Data, p: dict) -> dict:
    return {
        "cell": p["cell"],
        "kd_method": p["method"],
        "teacher": p.get("teacher") or _teacher_of(p["a"]),
        "kind": p["kind"],
        "like_for_like": not p["untuned"],
        "how": p["how"],
        "n_kd_configs": p["n_kd"],
        "n_no_kd_configs": p["n_no_kd"],
        "differs": p["differs"],
        "diff_pp": 100 * p["diff"],
        "ci95_pp": [100 * p["lo"], 100 * p["hi"]],
        "kd": _report_entry(data, p["a"]),
        "no_kd": _report_entry(data, p["b"]),
    }


def _report_teachers(data: _Data) -> list[dict]:
    """Per teacher: its own accuracy (the teachers' rows), and the test accuracy of the KD
    students that distilled from it (completed trials with kd.alpha > 0, every student and
    setting pooled; per student arch too), mean and n."""
    done = data.completed.dropna(subset=[ACC])
    kd = done[done["kd.alpha"] > 0]
    names = _teachers_of(kd)
    own = {t["name"]: t for t in data.teachers()}
    out = []
    for name in dict.fromkeys([*data.teacher_names(), *own]):
        t = own.get(name, {})
        rows = kd[names == name]
        mean, ci, n = _mean_ci(rows[ACC])
        per_arch = {}
        for arch in data.arch_order:
            a_mean, a_ci, a_n = _mean_ci(rows.loc[rows["student.arch"] == arch, ACC])
            if a_n:
                per_arch[arch] = {"test_accuracy": 100 * a_mean, "test_accuracy_ci95": 100 * a_ci,
                                  "n_trials": a_n}
        members = t.get("members")
        out.append({
            "teacher": name,
            "teacher_test_accuracy": 100 * t["test_acc"] if t else None,
            "teacher_val_accuracy": 100 * t["val_acc"] if t else None,
            "members": [{"name": m.get("name"),
                         "test_accuracy": None if _isnan(m.get("test_acc")) else
                         100 * float(m["test_acc"]),
                         "val_accuracy": None if _isnan(m.get("val_acc")) else
                         100 * float(m["val_acc"])} for m in members] if members else None,
            "kd_students": {"test_accuracy": 100 * mean, "test_accuracy_ci95": 100 * ci,
                            "n_trials": n, "per_arch": per_arch},
        })
    return out


def _report_method(entry: dict) -> dict:
    return {"arch": entry["arch"], "kd_method": entry["method"],
            "test_accuracy": 100 * entry["mean"], "test_accuracy_ci95": 100 * entry["ci"],
            "n_trials": entry["n_trials"], "n_configs": entry["n_configs"],
            "seeds": entry["seeds"]}


def build_report(data: _Data, png: dict | None = None) -> dict:
    """The report.json document (see the module docstring for the selection rules)."""
    t = data.trials
    done = data.completed
    families = {}
    for arch in data.arch_order:
        fam, pruned = _family_subset(done[done["student.arch"] == arch])
        with_kd, without = fam[fam["kd.alpha"] > 0], fam[fam["kd.alpha"] == 0]
        bw, bwo = _best_test(with_kd), _best_test(without)
        teacher = t.loc[t["student.arch"] == arch, "teacher_test_acc"].dropna()
        if data.multi_teacher:  # the teacher of the best KD student, not a mix of teachers
            teacher = pd.Series([] if bw is None else [bw["teacher_test_acc"]],
                                dtype=float).dropna()
        families[arch] = {
            "teacher": _teacher_of(bw) if bw is not None else None,
            "teacher_accuracy": 100 * teacher.mean() if len(teacher) else None,
            "student_accuracy_without_kd": 100 * bwo[ACC] if bwo is not None else None,
            "student_accuracy_with_kd": 100 * bw[ACC] if bw is not None else None,
            "n_with_kd": int(with_kd[ACC].notna().sum()),
            "n_without_kd": int(without[ACC].notna().sum()),
            "trial_with_kd": bw["trial_id"] if bw is not None else None,
            "trial_without_kd": bwo["trial_id"] if bwo is not None else None,
            "includes_pruned": pruned,
        }
    front = [_report_entry(data, r) for _, r in _front_rows(data).iterrows()]
    budgets = {lat.target: [_report_entry(data, r) for _, r in latency_budgets(
        _front_rows(data, lat.front_col, lat.col, lat.select), lat.col, lat.select).iterrows()]
        for lat in data.latencies} if not data.agg.empty else {}
    counts = t["status"].value_counts()
    prov = provenance(data)
    report = {
        "name": data.names,
        "units": {
            "accuracy": "percent (0-100) on the test split (validation split where named)",
            "latency_ms": data.lat_label or "not measured",
            **{f"latency_ms_{lat.target}": lat.label for lat in data.latencies},
            "size_mb": data.size_label,
        },
        "selection": {
            "families": "best test accuracy among completed trials of the student arch, "
                        "unpruned only unless the family has no unpruned trial "
                        "(includes_pruned); with KD = kd.alpha > 0, without = kd.alpha == 0; "
                        "teacher: the best KD trial's (with several teachers, "
                        "teacher_accuracy is that teacher's)",
            "front": "Pareto front of seed-averaged completed configs chosen on validation "
                     "accuracy (max val_acc, min "
                     + ("latency" if data.lat else "size") + "); test accuracy reported"
                     if data.main_x else
                     "no latency or size measured: the front is the config with the highest "
                     "validation accuracy; test accuracy reported",
            "latency_budgets": "per latency target, its front by increasing latency; an entry "
                               "whose p10-p90 spread overlaps the previous budget's is merged "
                               "into the better one by validation accuracy; the onnx_int8 "
                               "target's front is chosen on the INT8 files' own validation "
                               "accuracy (test_accuracy_int8 is theirs, test_accuracy the "
                               "PyTorch student's)",
            "kd_vs_no_kd": "per cell (student, stem, epochs, fine-tune epochs, prune method) "
                           "and KD method (kd_method): the best KD config (kd.alpha > 0) of "
                           "the method with a no-KD twin (same config and seeds, kd.alpha = 0; "
                           "the KD keys aside) against its twin, else the best KD config of "
                           "the method against the best no-KD config; chosen on validation "
                           "accuracy, test accuracy compared (Welch 95 % CI, percentage "
                           "points)",
            "teachers": "per teacher_name: the teacher's own test/validation accuracy (an "
                        "ensemble's: of its members' mean probabilities, members listed) and "
                        "the test accuracy of the completed KD trials (kd.alpha > 0) that "
                        "distilled from it, every setting pooled: mean, 95 % CI and n over "
                        "trials, overall and per student arch",
            "kd_teacher_ablation": "per student arch and teacher_name (teacher null: the "
                                   "no-KD trials, kd.alpha 0): test accuracy of every "
                                   "completed trial pooled, mean and 95 % CI over trials; "
                                   "empty unless the KD trials span several teachers",
            "kd_method_ablation": "per student arch and kd_method (none = kd.alpha 0): test "
                                  "accuracy of every completed trial of that method pooled, "
                                  "mean and 95 % CI over trials; empty with a single "
                                  "kind (one method and no no-KD trial, or only no KD)",
        },
        "dataset": prov.get("data.label"),
        "dataset_kind": prov.get("data.dataset"),
        "device": prov.get("gpu_device") if data.lat_raw and "gpu" in data.lat_raw
        else prov.get("cpu_device"),
        "trained_on": prov.get("device"),
        "trials": {"total": len(t), **{s: int(counts.get(s, 0))
                                       for s in ("completed", "stopped", "errored")}},
        "families": families,
        "front_objectives": ["max val_acc"] + (
            [f"min {data.lat_raw}"] if data.lat else [f"min {SIZE_COLUMN}"] if data.size else []),
        "front": front,
        "latency_budgets": budgets,
        "kd_vs_no_kd": [_report_kd(data, p) for p in kd_comparisons(data)],
        "kd_method_ablation": [_report_method(e) for e in method_ablation(data)],
        "teachers": _report_teachers(data),
        "kd_teacher_ablation": [{"arch": e["arch"], "teacher": e["teacher"],
                                 "test_accuracy": 100 * e["mean"],
                                 "test_accuracy_ci95": 100 * e["ci"],
                                 "n_trials": e["n_trials"], "n_configs": e["n_configs"],
                                 "seeds": e["seeds"]} for e in teacher_ablation(data)],
        "provenance": prov,
    }
    if png is not None:
        report["png"] = png
    return _jsonable(report)


def results_rows(data: _Data) -> list[dict]:
    """results.csv rows: teacher, best KD student (unpruned), best pruned KD student.

    Accuracy in percent (test split), latency in ms on the dashboard's latency device, size in MB
    (smaller of dense/sparse storage; the teacher's dense size). A student kind with no completed
    trial gets no row; the teacher's latency/size are empty unless the sweep measured them
    (``teacher_latency_ms_b1_*``, ``teacher_size_mb_dense``). With several teachers the
    teacher row is the best KD student's teacher (report.json's ``teachers`` lists them all).
    """
    t = data.trials
    lat = data.lat_raw
    rows = []
    kd = data.completed[data.completed["kd.alpha"] > 0]
    pruned = kd["prune.ratio"].fillna(0) > 0
    if data.multi_teacher:
        best = _best_test(kd[~pruned]) if (~pruned).any() else _best_test(kd)
        if best is not None:
            t = t[_teachers_of(t) == _teacher_of(best)]
    teacher = t["teacher_test_acc"].dropna()
    if len(teacher):
        tlat = f"teacher_{lat}" if lat else None
        tl = t[tlat].dropna() if tlat and tlat in t else pd.Series(dtype=float)
        ts = t["teacher_size_mb_dense"].dropna()
        rows.append({"Variant": "Teacher", "Accuracy": 100 * teacher.mean(),
                     "LatencyMs": tl.mean() if len(tl) else None,
                     "SizeMB": ts.mean() if len(ts) else None})
    for name, subset in (("KD student", kd[~pruned]), ("Pruned KD student", kd[pruned])):
        best = _best_test(subset)
        if best is None:
            continue
        rows.append({"Variant": name, "Accuracy": 100 * best[ACC],
                     "LatencyMs": best[lat] if lat else None, "SizeMB": best[SIZE_COLUMN]})
    return rows


def report_label(data: _Data) -> str:
    labels = list(dict.fromkeys(data.trials["data.label"].dropna().astype(str)))
    name = ", ".join(data.names) or ", ".join(p.name or str(p) for p in data.run_dirs)
    return f"{'; '.join(labels) or 'unknown dataset'} · {name}"


def png_name(key: str) -> str:
    """The PNG file of a panel: accuracy_vs_latency[_<target>].png, accuracy_vs_size.png,
    kd_vs_no_kd.png."""
    if key.startswith("front_latency"):
        return f"accuracy_vs_latency{key[len('front_latency'):]}.png"
    return {"front_size": "accuracy_vs_size.png", "kd_vs_baseline": "kd_vs_no_kd.png"}[key]


#: Every PNG write_dashboard may write: the main chart and one per key panel.
PNG_NAMES = (PNG_NAME, png_name("front_latency"),
             *(png_name(f"front_latency_{t}") for t in LATENCY_TARGETS),
             png_name("front_size"), png_name("kd_vs_baseline"))
#: What write_dashboard may write (a PNG only where its chart could be drawn): what a sweep at a
#: URI uploads, RunStore.push skipping the absent ones.
OUTPUT_FILES = (HTML_NAME, REPORT_NAME, CSV_NAME, *PNG_NAMES)


def _png_panels(panels: list[_Panel]) -> list[tuple[str, _Panel | None]]:
    """(file name, panel) of front.png and each key panel, in the page's order; the panel is
    None where the page has no such panel (accuracy the only objective)."""
    by_key = {p.key: p for p in panels}
    latency = [k for k in by_key if k.startswith("front_latency")] or ["front_latency"]
    main = next((by_key[k] for k in (*latency, "front_size") if k in by_key
                 and by_key[k].figure is not None),
                by_key.get(latency[0]))
    return [(PNG_NAME, main), *((png_name(k), by_key.get(k))
                                for k in (*latency, "front_size", "kd_vs_baseline"))]


def _write_pngs(data: _Data, panels: list[_Panel], folder: Path, wanted: bool) -> dict:
    """Draw front.png and the key panels with matplotlib (:mod:`kdtune.figures`; no browser).
    Returns report.json's ``png``: ``written`` (file names) and ``not_written`` (name -> why).
    Unless ``wanted`` is off, a PNG of an earlier dashboard that this one does not write is
    removed, so the folder matches the report. A chart that fails to draw is reported, not
    raised: the page and the other files matter more."""
    from kdtune import figures

    written, not_written, drawn = [], {}, {}
    for name, panel in _png_panels(panels):
        if not wanted:
            not_written[name] = "PNG export not requested"
        elif panel is None:
            not_written[name] = "accuracy is the only objective here (no latency or size " \
                                "measured): no such chart"
        elif panel.figure is None:
            not_written[name] = panel.note
        elif id(panel) in drawn:  # the main chart: drawn once, for front.png
            shutil.copyfile(folder / drawn[id(panel)], folder / name)
            written.append(name)
        else:
            try:
                figures.write_png(panel.figure, folder / name, report_label(data))
            except Exception as exc:  # matplotlib raises its own types; the page still counts
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                not_written[name] = f"drawing failed ({type(exc).__name__}: {msg[:200]})"
                continue
            drawn[id(panel)] = name
            written.append(name)
    if wanted:
        for name in set(PNG_NAMES) - set(written):
            (folder / name).unlink(missing_ok=True)
    return {"written": written, "not_written": not_written}


CSS = """
:root { --fg:#1d2430; --muted:#5b6472; --line:#e3e7ee; --bg:#f6f8fb; }
* { box-sizing: border-box; }
body { font-family: %(font)s; color: var(--fg); background: var(--bg); margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 60px; }
header h1 { font-size: 26px; margin: 8px 0 4px; }
header p { color: var(--muted); margin: 2px 0; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
          padding: 16px 22px; margin: 18px 0; }
section h2 { font-size: 19px; margin: 4px 0 6px; }
section h3 { font-size: 15px; margin: 14px 0 4px; }
p.expl { color: var(--muted); margin: 2px 0 10px; max-width: 980px; line-height: 1.45; }
p.note { background: #fff8e1; border-left: 4px solid #f4b400; padding: 10px 14px;
         color: #5f4b00; }
.answer { border: 2px solid #2a9d8f; }
.answer ul { margin: 4px 0; padding-left: 22px; line-height: 1.6; }
.answer .lead { font-size: 15px; }
.cfg { color: var(--muted); font-size: 13px; }
.yes { color: #1b7a3a; } .no { color: #b3261e; } .unsure { color: #8a6d00; }
.warn { color: #b3261e; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         color: #fff; }
.badge.completed { background: #2ca02c; } .badge.stopped { background: #7f7f7f; }
.badge.errored { background: #d62728; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { background: #f0f3f8; position: sticky; top: 0; }
table.front .acc { font-weight: 600; white-space: nowrap; }
code { font-size: 12px; } code.path { word-break: break-all; }
table.prov td:first-child { width: 220px; color: var(--muted); }
details summary { cursor: pointer; font-weight: 600; padding: 6px 0; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 20px; }
""".replace("%(font)s", FONT)


def _panel_html(panel: _Panel) -> tuple[str, int]:
    """HTML of one panel; returns (html, number of plotly figures in it)."""
    import plotly.io as pio

    head = f"<h2>{_e(panel.title)}</h2>"
    if panel.figure is None:
        return (f"<section id='{panel.key}'>{head}<p class='note'>{_e(panel.note)}</p></section>",
                0)
    div = pio.to_html(panel.figure, full_html=False, include_plotlyjs=False,
                      div_id=f"fig-{panel.key}", config=PLOTLY_CONFIG, default_width="100%",
                      default_height=f"{panel.height}px")
    return (f"<section id='{panel.key}' data-kdtune-figure='{panel.key}'>{head}"
            f"<p class='expl'>{panel.explanation}</p>{div}{panel.after}</section>", 1)


def _latency_panels(data: _Data) -> list[_Panel]:
    """One accuracy/latency chart per measured target (keyed by device when there are two)."""
    if len(data.latencies) <= 1:
        return [_panel_latency(data, data.latencies[0] if data.latencies else None,
                               "front_latency")]
    return [_panel_latency(data, lat, f"front_latency_{lat.target}") for lat in data.latencies]


def build_panels(data: _Data) -> list[_Panel]:
    if data.agg.empty or data.main_x:
        main = [*_latency_panels(data), _panel_size(data)]
    else:
        main = [_panel_best_only(data)]
    return [*main, _panel_3d(data), _panel_parcoords(data), _panel_ablation(data),
            _panel_stem(data), _panel_kd(data), _panel_curves(data)]


def render_html(data: _Data, panels: list[_Panel], report: dict) -> str:
    import plotly.offline as po

    parts, n_figs = [], 0
    by_key = {p.key: p for p in panels}
    sections = []
    for p in panels:
        text, n = _panel_html(p)
        n_figs += n
        sections.append((p.key, text))
    sec = dict(sections)
    main_keys = [k for k in by_key if k.startswith("front_latency")
                 or k in ("front_size", "best_only")]
    parts.append(_answer_box(data))
    parts += [sec[k] for k in main_keys]
    parts.append(f"<section id='front-table'><h2>The front: what to deploy</h2><p class='expl'>"
                 f"Configurations on the Pareto front of the first chart ({CHOSEN_ON_VAL}), "
                 f"cheapest first, with the checkpoint of their best seed. Load one, pruned "
                 f"or not, with <code>kdtune.models.load_student(path)</code>: a weights-only "
                 f"file whose layer widths come from its tensors; or write it as one ONNX file "
                 f"with its card, <code>kdtune export RUN_DIR --trial ID [--int8]</code>.</p>"
                 f"{_front_table(data)}</section>")
    parts.append(sec["front_3d"])
    parts.append(sec["parcoords"])
    parts.append(sec["ablation"])
    parts.append(sec["kd_vs_baseline"])
    parts.append(sec["stem"])
    parts.append(sec["curves"])
    parts.append(f"<section id='trials'><h2>Every trial</h2><p class='expl'>Stopped trials were "
                 f"cut by ASHA and errored ones crashed: neither has final measurements nor can "
                 f"be on a front.</p>{_trials_table(data)}</section>")
    parts.append(f"<section id='provenance'><h2>Provenance</h2>"
                 f"{_provenance_table(report['provenance'])}</section>")
    label = report.get("dataset") or "unknown dataset"
    label = ", ".join(label) if isinstance(label, list) else label
    runs = ", ".join(p.name or str(p) for p in data.run_dirs)
    name = ", ".join(data.names) or runs
    folders = "run folder" + ("s" if len(data.run_dirs) != 1 else "")
    latency = "; ".join(lat.label for lat in data.latencies) or "not measured"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    jpeg = (" <b>Accuracies are on the JPEG copy of the data set, not the original "
            "images.</b>" if "jpeg" in str(label).lower() else "")
    exports = " · ".join([REPORT_NAME, CSV_NAME, *report.get("png", {}).get("written", [])])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="kdtune-figures" content="{n_figs}">
<title>{_e(name)}</title>
<style>{CSS}</style>
<script type="text/javascript">{po.get_plotlyjs()}</script>
</head><body><main>
<header><h1>{_e(name)}</h1>
<p>kdtune knowledge distillation + pruning sweep · {_e(folders)}: {_e(runs)}</p>
<p>Dataset: <b>{_e(label)}</b>.{jpeg} Latency: {_e(latency)}.</p>
<p>Generated {now} · exports next to this file: {exports}</p></header>
{''.join(parts)}
<footer>kdtune dashboard · self-contained: works offline</footer>
</main></body></html>
"""


def figures(*runs: str | Path, cache_dir: str | Path | None = None) -> dict:
    """The dashboard's Plotly figures of one or more sweep runs (folders or URIs), by panel key
    (``front_latency`` or ``front_latency_<target>`` per latency target, ``front_size``,
    ``front_3d``, ``parcoords``, ``ablation``, ``stem``, ``kd_vs_baseline``, ``curves``; or
    ``best_only`` when only accuracy was measured), for a notebook to show or restyle. A panel
    that has nothing to draw (no latency measured, no no-KD trial, ...) is left out; its
    reason is what the HTML page says there."""
    from kdtune.storage import local_run

    if not runs:
        raise KDTuneError("figures: name at least one run folder")
    data = _prepare([local_run(r, cache_dir) for r in runs])
    return {p.key: p.figure for p in build_panels(data) if p.figure is not None}


def write_dashboard(
    run_dirs: Sequence[str | Path] | str | Path,
    out: str | Path | None = None,
    *,
    png: bool = True,
    quiet: bool = False,
    sources: Sequence[str] | None = None,
) -> Path:
    """Write the dashboard HTML and, next to it, report.json, results.csv and the PNGs.

    ``run_dirs``: one or several sweep run folders (pooled into one dashboard). ``out``: the HTML
    file (default ``<first run folder>/dashboard.html``). ``png``: draw front.png (the main
    chart) and the key charts (accuracy vs each latency, vs size, KD vs no KD) as PNGs with
    matplotlib, no browser needed; report.json's ``png`` lists the files ``written`` and why each
    other was not (``not_written``: no such chart in this sweep; a chart that failed to draw also
    gets one line on stderr unless ``quiet``). ``sources``: how
    the provenance names the runs (a run at a URI is read from a local copy). Returns the HTML
    path. Raises :class:`~kdtune.errors.KDTuneError` for unusable run folders.
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise KDTuneError("no run folder given")
    data = _prepare(dirs)
    data.sources = [str(s) for s in sources] if sources else []
    out_path = Path(out) if out is not None else dirs[0] / HTML_NAME
    if out_path.suffix.lower() not in (".html", ".htm"):
        raise KDTuneError(f"--out {out_path}: the dashboard is an HTML file (use a .html name)")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KDTuneError(f"cannot create {out_path.parent}: {exc.strerror}") from None
    panels = build_panels(data)
    png_info = _write_pngs(data, panels, out_path.parent, png)
    for name, reason in png_info["not_written"].items():
        if reason.startswith("drawing failed") and not quiet:
            print(f"kdtune dashboard: no {name}: {reason}", file=sys.stderr)
    report = build_report(data, png_info)
    html_text = render_html(data, panels, report)
    try:
        out_path.write_text(html_text, encoding="utf-8")
        (out_path.parent / REPORT_NAME).write_text(
            json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
            encoding="utf-8")
        pd.DataFrame(results_rows(data), columns=list(CSV_COLUMNS)).to_csv(
            out_path.parent / CSV_NAME, index=False)
    except OSError as exc:
        raise KDTuneError(f"cannot write the dashboard next to {out_path}: {exc.strerror}") \
            from None
    return out_path
