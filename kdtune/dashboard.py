"""One self-contained HTML dashboard of one or several sweeps, plus report.json, results.csv and
front.png next to it.

``kdtune dashboard RUN_DIR... [--out FILE]`` calls :func:`write_dashboard`; a sweep calls it on
its own run folder when it ends. The page inlines plotly.js once and fetches nothing at view time.

What the reader gets, top to bottom:

* an answer box: best accuracy per latency budget (the Pareto front), whether KD beats the no-KD
  baseline at equal budget and whether the CIFAR stem beats the standard one (differences with
  95 % confidence intervals), what went wrong (errored trials);
* accuracy vs latency and accuracy vs size with the front highlighted and joined, a 3-D view, and
  a table of the front with checkpoint paths;
* parallel coordinates of the searched hyperparameters, ablation panels, ASHA learning curves;
* every trial (stopped and errored ones marked) and the provenance.

Accuracies are test accuracies in percent, averaged over seeds: each point is one distinct config
(:func:`kdtune.results.aggregate_seeds`), error bars are 95 % CIs. Only completed trials can be on
a front. Where a choice is made among configs (best KD config, best stem), it is made on
*validation* accuracy and reported on *test* accuracy, so the comparison is not tuned on the test
split. The course-lab exports (``report.json``, ``results.csv``) instead report the best test
accuracy per kind, as the lab does.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdtune.errors import KDTuneError
from kdtune.results import (
    PROVENANCE_COLUMNS,
    SIZE_COLUMN,
    aggregate_seeds,
    ci95_halfwidth,
    latency_column,
    latency_label,
    load_epochs,
    load_runs,
    pareto_front,
    searched_keys,
    size_label,
    welch_diff,
)

HTML_NAME = "dashboard.html"
REPORT_NAME = "report.json"
CSV_NAME = "results.csv"
PNG_NAME = "front.png"
OUTPUT_FILES = (HTML_NAME, REPORT_NAME, CSV_NAME, PNG_NAME)  # what write_dashboard writes
CSV_COLUMNS = ("Variant", "Accuracy", "LatencyMs", "SizeMB")

ACC = "test_acc"
ACC_LABEL = "test accuracy (%)"

SHORT = {
    "student.arch": "student",
    "student.stem": "stem",
    "kd.temperature": "T",
    "kd.alpha": "α",
    "kd.label_smoothing": "ε (label smoothing)",
    "prune.ratio": "prune ratio",
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
    "latency_ms_b1_gpu_p90": ("GPU latency p90, batch 1", "ms"),
    "throughput_ips_gpu": ("GPU throughput", "images/s"),
    "latency_ms_b1_cpu": ("CPU latency, batch 1", "ms"),
    "latency_ms_b1_cpu_p90": ("CPU latency p90, batch 1", "ms"),
    "throughput_ips_cpu": ("CPU throughput", "images/s"),
    "size_mb_min": ("size (smaller of dense/sparse)", "MB"),
    "size_mb_dense": ("size, dense", "MB"),
    "size_mb_sparse": ("size, sparse", "MB"),
    "size_mb_disk": ("size on disk", "MB"),
    "params": ("parameters", ""),
    "nonzero_params": ("non-zero parameters", ""),
    "flops": ("FLOPs per image", ""),
    "sparsity_pruned": ("sparsity of pruned layers", "%"),
    "sparsity_total": ("sparsity, whole model", "%"),
    "epochs_trained": ("epochs trained", ""),
    "wall_s": ("wall time", "s"),
}
PERCENT_METRICS = {k for k, (_, unit) in METRIC_LABELS.items() if unit == "%"}

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


def _config_label(row, *, arch: bool = True) -> str:
    parts = []
    if arch:
        parts.append(str(row.get("student.arch")))
    parts.append(f"{row.get('student.stem')} stem")
    if bool(row.get("is_baseline")) or row.get("kd.alpha") == 0:
        parts.append("no KD")
    else:
        parts.append(f"T {_num(row.get('kd.temperature'))}, α {_num(row.get('kd.alpha'))}")
    if not _isnan(row.get("kd.label_smoothing")) and row.get("kd.label_smoothing"):
        parts.append(f"ε {_num(row.get('kd.label_smoothing'))}")
    ratio = row.get("prune.ratio")
    parts.append("unpruned" if _isnan(ratio) or ratio == 0 else f"pruned {100 * ratio:.0f} %")
    return " · ".join(parts)


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
class _Data:
    run_dirs: list[Path]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    agg: pd.DataFrame
    searched: list[str]
    lat_raw: str | None  # latency column of the trials table
    lat: str | None  # ..._mean column of agg
    lat_label: str
    size: str | None  # ..._mean column of agg
    size_label: str
    arch_order: list[str]
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the runs live (a URI or a folder)

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

    def teacher_lines(self) -> list[tuple[str, float]]:
        """(label, accuracy fraction) per teacher."""
        t = self.trials
        out = []
        keys = [c for c in ("teacher.arch", "teacher.stem") if c in t]
        for key, grp in t.groupby(keys, dropna=False, sort=False):
            acc = grp["teacher_test_acc"].dropna()
            if acc.empty:
                continue
            arch, stem = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
            stem_txt = f", {stem} stem" if not _isnan(stem) else ""
            out.append((f"teacher {arch}{stem_txt}: {_pct(acc.mean())}", float(acc.mean())))
        return out

    def arch_color(self, arch) -> str:
        return ARCH_COLORS[self.arch_order.index(arch) % len(ARCH_COLORS)] if arch in \
            self.arch_order else "#555555"

    def arch_symbol(self, arch, symbols=SYMBOLS) -> str:
        return symbols[self.arch_order.index(arch) % len(symbols)] if arch in self.arch_order \
            else symbols[0]


def _prepare(run_dirs: Sequence[Path]) -> _Data:
    trials = load_runs(*run_dirs)
    epochs = load_epochs(*run_dirs, missing_ok=True)
    agg = aggregate_seeds(trials)
    lat_raw = latency_column(trials[trials["status"] == "completed"])
    lat = f"{lat_raw}_mean" if lat_raw else None
    size = f"{SIZE_COLUMN}_mean" if not agg.empty and agg[f"{SIZE_COLUMN}_mean"].notna().any() \
        else None
    arch_order = list(dict.fromkeys(trials["student.arch"].dropna().astype(str)))
    data = _Data(
        run_dirs=list(run_dirs),
        trials=trials,
        epochs=epochs,
        agg=agg,
        searched=searched_keys(trials, run_dirs),
        lat_raw=lat_raw,
        lat=lat,
        lat_label=latency_label(trials[trials["status"] == "completed"]) if lat_raw else "",
        size=size,
        size_label=size_label(),
        arch_order=arch_order,
    )
    if not agg.empty:
        acc = f"{ACC}_mean"
        agg["on_front_latency"] = pareto_front(agg, [acc], [lat]) if lat else False
        agg["on_front_size"] = pareto_front(agg, [acc], [size]) if size else False
        agg["on_front_3d"] = pareto_front(agg, [acc], [lat, size]) if lat and size else False
        main = "on_front_latency" if lat else "on_front_size" if size else None
        if main:
            agg["on_front"] = agg[main]
        else:  # one objective: the "front" is the best row
            best = agg[acc].fillna(-np.inf)
            agg["on_front"] = agg[acc].notna() & (best == best.max())
    if len(set(trials["gpu_device"].dropna())) > 1 or len(set(trials["cpu_device"].dropna())) > 1:
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


def _hover_agg(row, data: _Data) -> str:
    """Hover text of one seed-averaged config: the full config and every metric, compact."""
    n = int(row["n_seeds"])
    head = [f"<b>{_e(_config_label(row))}</b>",
            f"<b>{ACC_LABEL}: {_metric(ACC, row.get(f'{ACC}_mean'), row.get(f'{ACC}_ci95'))}"
            f"</b> (95 % CI, {n} seed{'s' if n != 1 else ''}: {_e(row['seeds'])})"]
    config = [f"{key}={_value(key, row.get(key))}"
              for key in data.agg.columns if "." in key or key == "is_baseline"]
    metrics = []
    for m, (label, _) in METRIC_LABELS.items():
        mean = row.get(f"{m}_mean")
        if _isnan(mean) or m == ACC:
            continue
        ci = row.get(f"{m}_ci95")
        if not _isnan(ci) and abs(ci) <= 1e-9 * max(abs(mean), 1e-12):
            ci = None  # constant across seeds: no interval worth printing
        metrics.append(f"{label}: {_metric(m, mean, ci)}")
    devices = [f"{c}: {row.get(c)}" for c in ("gpu_device", "cpu_device")
               if not _isnan(row.get(c))]
    lines = [*head, "<i>config</i>", *(_e(x) for x in _wrap(config)),
             "<i>metrics, mean ± 95 % CI over seeds</i>",
             *(_e(x) for x in _wrap(metrics, sep="; ")),
             *(_e(x) for x in _wrap(devices)),
             _e(f"trials: {row['trial_ids'].replace(';', ', ')}"),
             _e(f"checkpoint (best seed): {row.get('best_checkpoint') or '—'}")]
    return "<br>".join(lines)


def _teacher_hlines(fig, data: _Data, subplots: bool = False):
    """The teacher's test accuracy as a dotted reference line, named in the legend (an
    annotation on the line would hide the points next to it)."""
    import plotly.graph_objects as go

    where = dict(row="all", col="all") if subplots else {}
    for label, acc in data.teacher_lines():
        fig.add_hline(y=100 * acc, line=dict(color="#444", dash="dot", width=1.5), **where)
        trace = go.Scatter(x=[None], y=[None], mode="lines", name=_e(label),
                           line=dict(color="#444", dash="dot", width=1.5), hoverinfo="skip")
        if subplots:
            fig.add_trace(trace, row=1, col=1)
        else:
            fig.add_trace(trace)


def _front_scatter(data: _Data, x: str, front_col: str, x_label: str, title: str) -> object:
    import plotly.graph_objects as go

    agg = data.agg[data.agg[x].notna() & data.agg[f"{ACC}_mean"].notna()]
    fig = go.Figure()
    cmax = max(float(data.agg["prune.ratio"].max() or 0), 0.5)
    for arch in data.arch_order:
        sub = agg[agg["student.arch"] == arch]
        if sub.empty:
            continue
        on = sub[front_col].astype(bool).to_numpy()
        fig.add_trace(go.Scatter(
            x=sub[x], y=100 * sub[f"{ACC}_mean"], mode="markers", name=_e(arch),
            legendgroup=arch,
            marker=dict(symbol=data.arch_symbol(arch), size=np.where(on, 14, 10),
                        color=sub["prune.ratio"], coloraxis="coloraxis",
                        opacity=1.0, line=dict(color=np.where(on, "#000", "#fff").tolist(),
                                               width=np.where(on, 2.0, 0.8).tolist())),
            error_y=dict(type="data", array=(100 * sub[f"{ACC}_ci95"]).tolist(),
                         thickness=1, width=3, color="rgba(90,90,90,0.6)"),
            hovertext=[_hover_agg(r, data) for _, r in sub.iterrows()], hoverinfo="text",
        ))
    front = agg[agg[front_col].astype(bool)].sort_values([x, f"{ACC}_mean"])
    if not front.empty:
        fig.add_trace(go.Scatter(
            x=front[x], y=100 * front[f"{ACC}_mean"], mode="lines", name="Pareto front",
            line=dict(color="#000", width=2, shape="hv"), hoverinfo="skip",
        ))
    # Trials that did not complete but still have both coordinates (rare): shown, marked.
    raw_x = x[: -len("_mean")]
    others = data.trials[(data.trials["status"] != "completed") & data.trials[raw_x].notna()
                         & data.trials["val_acc"].notna()]
    if not others.empty:
        fig.add_trace(go.Scatter(
            x=others[raw_x], y=100 * others["val_acc"], mode="markers",
            name="stopped / errored (last val. acc., not eligible)",
            marker=dict(symbol="x-thin-open", size=9, color="#888"),
            hovertext=[f"{_e(r['trial_id'])} ({_e(r['status'])})<br>{_e(_config_label(r))}"
                       for _, r in others.iterrows()], hoverinfo="text",
        ))
    _teacher_hlines(fig, data)
    _base_layout(fig, height=560)
    fig.update_layout(meta={"title": title}, margin=dict(t=80))
    fig.update_layout(
        coloraxis=dict(colorscale=PRUNE_SCALE, cmin=0, cmax=cmax,
                       colorbar=dict(title=dict(text="prune<br>ratio", side="top"),
                                     thickness=14, len=0.75, tickformat=".0%")),
        xaxis_title=_e(x_label), yaxis_title=f"{ACC_LABEL}, mean over seeds ± 95 % CI",
    )
    return fig


def _panel_front(data: _Data, which: str) -> _Panel:
    n_bad = int((data.trials["status"] != "completed").sum())
    tail = (f" {n_bad} stopped or errored trial{'s' if n_bad != 1 else ''} "
            "had no final measurement and cannot be on a front (see the learning curves and "
            "the trial table)." if n_bad else "")
    common = ("Each point is one configuration, its test accuracy averaged over seeds (bar: "
              "95 % confidence interval). Symbol = student architecture, colour = prune ratio. "
              "Black outline and staircase = Pareto front: no other configuration is both more "
              "accurate and {cheaper}. Hover a point for its full config and every metric."
              + tail)
    if which == "latency":
        title = "Accuracy vs latency"
        if data.agg.empty:
            return _Panel("front_latency", title, "", note=_no_completed_note(data))
        if not data.lat:
            return _Panel("front_latency", title, "",
                          note="No latency was measured in this sweep, so there is no "
                               "accuracy/latency trade-off to show.")
        fig = _front_scatter(data, data.lat, "on_front_latency", data.lat_label,
                             "Test accuracy vs batch-1 latency")
        return _Panel("front_latency", title, common.format(cheaper="faster"), fig, height=560)
    title = "Accuracy vs model size"
    if data.agg.empty:
        return _Panel("front_size", title, "", note=_no_completed_note(data))
    if not data.size:
        return _Panel("front_size", title, "", note="No model size was measured in this sweep.")
    fig = _front_scatter(data, data.size, "on_front_size", data.size_label,
                         "Test accuracy vs model size")
    return _Panel("front_size", title, common.format(cheaper="smaller"), fig, height=560)


def _panel_best_only(data: _Data) -> _Panel:
    """One objective (no latency, no size): rank the configurations by accuracy."""
    import plotly.graph_objects as go

    agg = data.agg.dropna(subset=[f"{ACC}_mean"]).sort_values(f"{ACC}_mean").tail(30)
    fig = go.Figure(go.Scatter(
        x=100 * agg[f"{ACC}_mean"], y=[_config_label(r) for _, r in agg.iterrows()],
        mode="markers",
        marker=dict(size=np.where(agg["on_front"], 14, 9),
                    color=np.where(agg["on_front"], "#d62728", "#1f77b4").tolist()),
        error_x=dict(type="data", array=(100 * agg[f"{ACC}_ci95"]).tolist(), thickness=1),
        hovertext=[_hover_agg(r, data) for _, r in agg.iterrows()], hoverinfo="text",
        name="configurations",
    ))
    for label, acc in data.teacher_lines():
        fig.add_vline(x=100 * acc, line=dict(color="#444", dash="dot"),
                      annotation_text=_e(label), annotation_position="bottom left")
    _base_layout(fig, height=max(320, 60 + 24 * len(agg)))
    fig.update_layout(meta={"title": "Configurations ranked by test accuracy (best in red)"})
    fig.update_layout(xaxis_title=f"{ACC_LABEL}, mean over seeds ± 95 % CI",
                      margin=dict(l=20), yaxis=dict(automargin=True))
    return _Panel("best_only", "Best configuration (accuracy is the only objective)",
                  "Neither latency nor size was measured, so there is no trade-off: the "
                  "configurations are simply ranked by test accuracy.", fig,
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
        scene=dict(xaxis_title="latency (ms)", yaxis_title="size (MB)",
                   zaxis_title="test accuracy (%)", camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9))),
        coloraxis=dict(colorscale=PRUNE_SCALE, cmin=0, cmax=cmax,
                       colorbar=dict(title=dict(text="prune<br>ratio", side="top"),
                                     thickness=14, len=0.6, tickformat=".0%")),
        margin=dict(l=0, r=0, t=40, b=0),
    )
    return _Panel("front_3d", title,
                  "Drag to rotate. Large outlined points are on the 3-objective front (nothing "
                  "else is more accurate, faster and smaller at once). Axes: "
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


def _panel_ablation(data: _Data) -> _Panel:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    title = "Ablations: accuracy vs each knob"
    done = data.completed.dropna(subset=[ACC])
    if done.empty:
        return _Panel("ablation", title, "", note=_no_completed_note(data))
    params = [
        ("kd.temperature", "KD temperature T (KD trials only)", done[~done["is_baseline"]]),
        ("kd.alpha", "KD weight α (0 = no-KD baseline)", done),
        ("kd.label_smoothing", "label smoothing ε", done),
        ("prune.ratio", "prune ratio (fraction of weights removed)", done),
    ]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in params],
                        horizontal_spacing=0.08, vertical_spacing=0.16)
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
    _teacher_hlines(fig, data, subplots=True)
    ys = [*(100 * done[ACC]).tolist(), *(100 * a for _, a in data.teacher_lines())]
    pad = max(0.5, 0.06 * (max(ys) - min(ys)))
    fig.update_yaxes(range=[min(ys) - pad, max(ys) + pad])
    _base_layout(fig, height=740)
    fig.update_layout(margin=dict(t=110), legend=dict(y=1.07, yanchor="bottom"))
    return _Panel("ablation", title,
                  "Marginal effect of each knob: for each value, the test accuracy averaged over "
                  "every completed trial with that value (all other settings pooled), ± 95 % CI; "
                  "faint dots are the single trials. A flat line means the knob barely matters.",
                  fig, height=740)


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


def stem_comparisons(data: _Data) -> list[dict]:
    """Per student arch: best cifar-stem config vs best standard-stem config (by validation)."""
    out = []
    for arch in data.arch_order:
        sub = data.agg[data.agg["student.arch"] == arch]
        best = {stem: _best_by_val(sub[sub["student.stem"] == stem])
                for stem in ("cifar", "standard")}
        if best["cifar"] is None or best["standard"] is None:
            continue
        diff, lo, hi = _comparison(best["cifar"], best["standard"])
        out.append(dict(arch=arch, a=best["cifar"], b=best["standard"], diff=diff, lo=lo, hi=hi))
    return out


# Budget = what a trial is allowed to spend (architecture, stem, epochs), not its searched
# hyperparameters: when prune.ratio is searched continuously the baselines (fixed ratio) would
# otherwise never share a cell with a KD trial. The prune ratios of both sides are shown.
BUDGET_KEYS = ("student.arch", "student.stem", "train.epochs", "prune.finetune_epochs")


def kd_comparisons(data: _Data) -> list[dict]:
    """Per equal-budget cell (arch, stem, epochs, fine-tune epochs) holding both a
    no-KD baseline and KD configs: the best of each kind (by validation), test acc. compared."""
    out = []
    agg = data.agg
    if agg.empty:
        return out
    keys = [k for k in BUDGET_KEYS if k in agg.columns]
    several_budgets = agg["train.epochs"].nunique() > 1
    for cell, grp in agg.groupby(keys, dropna=False, sort=False):
        base = _best_by_val(grp[grp["is_baseline"].astype(bool)])
        kd = _best_by_val(grp[~grp["is_baseline"].astype(bool)])
        if base is None or kd is None:
            continue
        diff, lo, hi = _comparison(kd, base)
        cell = dict(zip(keys, cell, strict=True))
        ratio = kd.get("prune.ratio")
        base_ratio = base.get("prune.ratio")

        def pruned(r):
            return "0" if _isnan(r) or r == 0 else f"{100 * r:.0f}"

        label = (f"{cell['student.arch']}<br>{cell['student.stem']} stem<br>"
                 f"pruned {pruned(ratio)} % (KD) / {pruned(base_ratio)} % (no KD)"
                 + (f" · {_num(cell.get('train.epochs'))} ep" if several_budgets else ""))
        out.append(dict(arch=cell["student.arch"], label=label, a=kd, b=base, diff=diff, lo=lo,
                        hi=hi, ratio=0.0 if _isnan(ratio) else float(ratio)))
    arch_rank = {a: i for i, a in enumerate(data.arch_order)}
    out.sort(key=lambda d: (arch_rank.get(d["arch"], 99), d["ratio"], d["label"]))
    return out


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
                                 range=[lo - pad, hi + pad]),
                      xaxis=dict(type="category", automargin=True, tickangle=0))
    return fig


def _panel_stem(data: _Data) -> _Panel:
    title = "Stem: standard vs CIFAR"
    if data.agg.empty:
        return _Panel("stem", title, "", note=_no_completed_note(data))
    pairs = stem_comparisons(data)
    if not pairs:
        stems = sorted(set(data.agg["student.stem"].dropna().astype(str)))
        return _Panel("stem", title, "",
                      note=f"Only the {', '.join(stems) or 'same'} stem was trained: no stem "
                           "comparison in this sweep.")
    fig = _pair_figure(data, pairs, [p["arch"] for p in pairs],
                       ("CIFAR stem (3×3 conv, stride 1, no max-pool)",
                        "standard ImageNet stem (7×7 conv, stride 2, max-pool)"),
                       ("#e76f51", "#264653"))
    fig.update_xaxes(title_text="student architecture")
    return _Panel("stem", title,
                  "For each student, the best configuration with each stem (chosen on validation "
                  "accuracy; test accuracy shown, ± 95 % CI over seeds). The CIFAR stem keeps the "
                  "32×32 input's resolution: usually more accurate, but slower (see the latency "
                  "chart).", fig, height=460)


def _panel_kd(data: _Data) -> _Panel:
    title = "KD vs the no-KD baseline at equal budget"
    if data.agg.empty:
        return _Panel("kd_vs_baseline", title, "", note=_no_completed_note(data))
    if not data.agg["is_baseline"].astype(bool).any():
        return _Panel("kd_vs_baseline", title, "",
                      note="This sweep has no no-KD baseline (no completed trial with kd.alpha = "
                           "0), so whether distillation helps cannot be measured here. Add "
                           "kd.alpha: 0 to the search space to get one.")
    pairs = kd_comparisons(data)
    if not pairs:
        return _Panel("kd_vs_baseline", title, "",
                      note="The no-KD baselines and the KD trials never share a budget "
                           "(student, stem, epochs, prune ratio), so they cannot be compared "
                           "fairly.")
    fig = _pair_figure(data, pairs, [p["label"] for p in pairs],
                       ("KD (best T, α)", "no KD (α = 0)"), ("#2a9d8f", "#6c757d"))
    fig.update_xaxes(title_text="equal budget: same student, stem and epochs")
    return _Panel("kd_vs_baseline", title,
                  "Same student, stem, number of epochs and pruning: the best KD configuration "
                  "against the best no-KD baseline (both chosen on validation accuracy, test "
                  "accuracy shown ± 95 % CI over seeds).", fig, height=460)


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


def _verdict(diff, lo, hi, what: str) -> tuple[str, str]:
    """(css class, sentence) for a difference in accuracy with its CI."""
    pp = f"{100 * diff:+.2f} pp"
    if _isnan(lo):
        return "unsure", f"{pp} (no CI: needs ≥ 2 seeds on each side)"
    ci = f"{pp}, 95 % CI [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    if lo > 0:
        return "yes", f"yes: {what} {ci}"
    if hi < 0:
        return "no", f"no, it hurts: {ci}"
    return "unsure", f"no clear difference: {ci}"


def _front_rows(data: _Data) -> pd.DataFrame:
    if data.agg.empty or "on_front" not in data.agg:
        return data.agg.iloc[0:0]
    front = data.agg[data.agg["on_front"].astype(bool)]
    x = data.main_x
    return front.sort_values([x, f"{ACC}_mean"] if x else [f"{ACC}_mean"],
                             ascending=[True, False] if x else [False])


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
        front = _front_rows(data)
        if data.main_x:
            x = data.main_x
            what = "latency" if x == data.lat else "size"
            unit = "ms" if what == "latency" else "MB"
            rows = front
            if len(rows) > 8:  # thin a long front out: keep both ends
                idx = np.unique(np.linspace(0, len(rows) - 1, 8).round().astype(int))
                rows = rows.iloc[idx]
            lis = "".join(
                f"<li>≤ <b>{_num(r[x], 3)} {unit}</b> → <b>{_pct(r[f'{ACC}_mean'], 2)}</b>"
                + (f" ± {100 * r[f'{ACC}_ci95']:.2f}" if not _isnan(r[f"{ACC}_ci95"]) else "")
                + f" <span class='cfg'>{_e(_config_label(r))}</span></li>"
                for _, r in rows.iterrows())
            items.append(f"<h3>Best test accuracy per {what} budget</h3><ul>{lis}</ul>")
        else:
            best = front.iloc[0]
            items.append(f"<h3>Best configuration</h3><p><b>{_pct(best[f'{ACC}_mean'], 2)}</b> "
                         f"<span class='cfg'>{_e(_config_label(best))}</span> (no latency or size "
                         "measured: accuracy is the only objective)</p>")
        kd = kd_comparisons(data)
        if not data.agg["is_baseline"].astype(bool).any():
            items.append("<h3>Does KD help?</h3><p class='unsure'>Cannot tell: no no-KD "
                         "baseline (kd.alpha = 0) completed in this sweep.</p>")
        elif not kd:
            items.append("<h3>Does KD help?</h3><p class='unsure'>Cannot tell: baselines and KD "
                         "trials never share a budget.</p>")
        else:
            lis = []
            for p in kd[:8]:
                cls, text = _verdict(p["diff"], p["lo"], p["hi"], "KD adds")
                where = _e(p["label"].replace("<br>", " · "))
                lis.append(f"<li class='{cls}'><b>{where}</b>: {_e(text)} "
                           f"<span class='cfg'>({_pct(p['a'][f'{ACC}_mean'], 2)} with KD vs "
                           f"{_pct(p['b'][f'{ACC}_mean'], 2)} without)</span></li>")
            more = f"<li>… {len(kd) - 8} more in the KD panel</li>" if len(kd) > 8 else ""
            items.append(f"<h3>Does KD help? (best KD vs best no-KD config, equal budget)</h3>"
                         f"<ul>{''.join(lis)}{more}</ul>")
        stems = stem_comparisons(data)
        if stems:
            lis = []
            for p in stems:
                cls, text = _verdict(p["diff"], p["lo"], p["hi"], "the CIFAR stem adds")
                lat = ""
                if data.lat:
                    lat = (f"; latency {_num(p['a'][data.lat], 3)} vs "
                           f"{_num(p['b'][data.lat], 3)} ms")
                lis.append(f"<li class='{cls}'><b>{_e(p['arch'])}</b>: {_e(text)}"
                           f" <span class='cfg'>({_pct(p['a'][f'{ACC}_mean'], 2)} vs "
                           f"{_pct(p['b'][f'{ACC}_mean'], 2)}{lat})</span></li>")
            items.append(f"<h3>Does the CIFAR stem help? (best config per stem)</h3>"
                         f"<ul>{''.join(lis)}</ul>")
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
    headers = ["#", "student", "stem", "T", "α", "ε", "prune", "test acc. (%) ± 95 % CI"]
    if data.lat:
        headers.append("latency (ms)")
    if data.size:
        headers.append("size (MB)")
    headers += ["seeds", "checkpoint (best seed by val. acc.)"]
    rows = []
    for i, (_, r) in enumerate(front.iterrows(), 1):
        row = [str(i), _e(r["student.arch"]), _e(r["student.stem"]),
               "—" if r["is_baseline"] else _num(r["kd.temperature"]),
               _num(r["kd.alpha"]), _num(r["kd.label_smoothing"]),
               f"{100 * r['prune.ratio']:.0f} %" if not _isnan(r["prune.ratio"]) else "—",
               _e(_metric(ACC, r[f"{ACC}_mean"], r[f"{ACC}_ci95"]))]
        if data.lat:
            row.append(_num(r[data.lat], 4))
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
    headers = ["trial", "status", "student", "stem", "T", "α", "ε", "prune", "seed", "epochs",
               "val. acc.", "test acc."]
    if lat:
        headers.append("latency (ms)")
    headers += ["size (MB)", "error"]
    if t["run"].nunique() > 1:
        headers.insert(0, "run")
    rows = []
    for _, r in t.iterrows():
        row = [_e(r["trial_id"]), f"<span class='badge {r['status']}'>{_e(r['status'])}</span>",
               _e(r["student.arch"]), _e(r["student.stem"]), _num(r["kd.temperature"]),
               _num(r["kd.alpha"]), _num(r["kd.label_smoothing"]), _num(r["prune.ratio"]),
               _num(r["seed"]), _num(r["epochs_trained"]), _pct(r["val_acc"], 2),
               _pct(r[ACC], 2)]
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
    prov["latency_axis"] = data.lat_label or None
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


def build_report(data: _Data, png: dict | None = None) -> dict:
    """The report.json document (see the module docstring for the selection rules)."""
    t = data.trials
    done = data.completed
    families = {}
    for arch in data.arch_order:
        fam, pruned = _family_subset(done[done["student.arch"] == arch])
        with_kd, without = fam[~fam["is_baseline"]], fam[fam["is_baseline"]]
        bw, bwo = _best_test(with_kd), _best_test(without)
        teacher = t.loc[t["student.arch"] == arch, "teacher_test_acc"].dropna()
        families[arch] = {
            "teacher_accuracy": 100 * teacher.mean() if len(teacher) else None,
            "student_accuracy_without_kd": 100 * bwo[ACC] if bwo is not None else None,
            "student_accuracy_with_kd": 100 * bw[ACC] if bw is not None else None,
            "n_with_kd": int(with_kd[ACC].notna().sum()),
            "n_without_kd": int(without[ACC].notna().sum()),
            "trial_with_kd": bw["trial_id"] if bw is not None else None,
            "trial_without_kd": bwo["trial_id"] if bwo is not None else None,
            "includes_pruned": pruned,
        }
    front = []
    for _, r in _front_rows(data).iterrows():
        entry = {
            "config": {k: r[k] for k in data.agg.columns if "." in k or k == "is_baseline"},
            "test_accuracy": 100 * r[f"{ACC}_mean"],
            "test_accuracy_ci95": 100 * r[f"{ACC}_ci95"],
            "latency_ms": r[data.lat] if data.lat else None,
            "size_mb": r[data.size] if data.size else None,
            "n_seeds": r["n_seeds"],
            "seeds": r["seeds"],
            "trial_ids": r["trial_ids"].split(";"),
            "checkpoint": r["best_checkpoint"],
        }
        front.append(entry)
    counts = t["status"].value_counts()
    prov = provenance(data)
    report = {
        "units": {
            "accuracy": "percent (0-100) on the test split",
            "latency_ms": data.lat_label or "not measured",
            "size_mb": data.size_label,
        },
        "selection": {
            "families": "best test accuracy among completed trials of the student arch, "
                        "unpruned only unless the family has no unpruned trial "
                        "(includes_pruned); with KD = kd.alpha > 0, without = kd.alpha == 0",
            "front": "Pareto front of seed-averaged completed configs: max accuracy, min "
                     + ("latency" if data.lat else "size") if data.main_x else
                     "no latency or size measured: the front is the most accurate config",
        },
        "dataset": prov.get("data.label"),
        "dataset_kind": prov.get("data.dataset"),
        "device": prov.get("gpu_device") if data.lat_raw and "gpu" in data.lat_raw
        else prov.get("cpu_device"),
        "trained_on": prov.get("device"),
        "trials": {"total": len(t), **{s: int(counts.get(s, 0))
                                       for s in ("completed", "stopped", "errored")}},
        "families": families,
        "front_objectives": ["max test_acc"] + (
            [f"min {data.lat_raw}"] if data.lat else [f"min {SIZE_COLUMN}"] if data.size else []),
        "front": front,
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
    (``teacher_latency_ms_b1_*``, ``teacher_size_mb_dense``).
    """
    t = data.trials
    lat = data.lat_raw
    rows = []
    teacher = t["teacher_test_acc"].dropna()
    if len(teacher):
        tlat = f"teacher_{lat}" if lat else None
        tl = t[tlat].dropna() if tlat and tlat in t else pd.Series(dtype=float)
        ts = t["teacher_size_mb_dense"].dropna()
        rows.append({"Variant": "Teacher", "Accuracy": 100 * teacher.mean(),
                     "LatencyMs": tl.mean() if len(tl) else None,
                     "SizeMB": ts.mean() if len(ts) else None})
    kd = data.completed[~data.completed["is_baseline"]]
    pruned = kd["prune.ratio"].fillna(0) > 0
    for name, subset in (("KD student", kd[~pruned]), ("Pruned KD student", kd[pruned])):
        best = _best_test(subset)
        if best is None:
            continue
        rows.append({"Variant": name, "Accuracy": 100 * best[ACC],
                     "LatencyMs": best[lat] if lat else None, "SizeMB": best[SIZE_COLUMN]})
    return rows


def report_label(data: _Data) -> str:
    labels = list(dict.fromkeys(data.trials["data.label"].dropna().astype(str)))
    runs = ", ".join(p.name or str(p) for p in data.run_dirs)
    return f"{'; '.join(labels) or 'unknown dataset'} · {runs}"


def _write_png(data: _Data, fig, path: Path) -> dict:
    """Static PNG of the main chart through kaleido (which drives a local Chrome/Chromium)."""
    if fig is None:
        return {"written": False, "reason": "no chart to export (no completed trial)"}
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return {"written": False, "reason": "kaleido is not installed"}
    try:
        static = type(fig)(fig)
        title = (static.layout.meta or {}).get("title") if isinstance(static.layout.meta, dict) \
            else None
        static.update_layout(width=1200, height=680, margin=dict(t=110),
                             legend=dict(y=1.02, yanchor="bottom"))
        if title:
            label = report_label(data)
            static.update_layout(title=dict(text=f"{_e(title)} — {_e(label)}", x=0.01, y=0.97,
                                            font=dict(size=17)))
        static.write_image(str(path), format="png", scale=1.5)
    except Exception as exc:  # kaleido raises its own types when no Chrome can be started
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"written": False,
                "reason": f"static image export failed ({type(exc).__name__}: {msg[:200]}); "
                          "kaleido needs a local Chrome/Chromium (e.g. apt-get install chromium)"}
    return {"written": True, "path": path.name}


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
table.front td:nth-child(8) { font-weight: 600; white-space: nowrap; }
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
            f"<p class='expl'>{panel.explanation}</p>{div}</section>", 1)


def build_panels(data: _Data) -> list[_Panel]:
    if data.agg.empty or data.main_x:
        main = [_panel_front(data, "latency"), _panel_front(data, "size")]
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
    main_keys = [k for k in ("front_latency", "front_size", "best_only") if k in by_key]
    parts.append(_answer_box(data))
    parts += [sec[k] for k in main_keys]
    parts.append(f"<section id='front-table'><h2>The front: what to deploy</h2><p class='expl'>"
                 f"Configurations on the Pareto front of the first chart, cheapest first, with "
                 f"the checkpoint of their best seed.</p>{_front_table(data)}</section>")
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
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    jpeg = (" <b>Accuracies are on the JPEG copy of the data set, not the original "
            "images.</b>" if "jpeg" in str(label).lower() else "")
    exports = "report.json · results.csv" + (" · front.png" if report.get("png", {}).get(
        "written") else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="kdtune-figures" content="{n_figs}">
<title>kdtune · {_e(runs)}</title>
<style>{CSS}</style>
<script type="text/javascript">{po.get_plotlyjs()}</script>
</head><body><main>
<header><h1>Knowledge distillation + pruning sweep: {_e(runs)}</h1>
<p>Dataset: <b>{_e(label)}</b>.{jpeg} Latency: {_e(data.lat_label or 'not measured')}.</p>
<p>Generated {now} · exports next to this file: {exports}</p></header>
{''.join(parts)}
<footer>kdtune dashboard · self-contained: works offline</footer>
</main></body></html>
"""


def write_dashboard(
    run_dirs: Sequence[str | Path] | str | Path,
    out: str | Path | None = None,
    *,
    png: bool = True,
    quiet: bool = False,
    sources: Sequence[str] | None = None,
) -> Path:
    """Write the dashboard HTML and, next to it, report.json, results.csv and front.png.

    ``run_dirs``: one or several sweep run folders (pooled into one dashboard). ``out``: the HTML
    file (default ``<first run folder>/dashboard.html``). ``png``: try the static PNG of the main
    chart (needs kaleido and a local Chrome/Chromium; when it cannot, no PNG is written, the reason
    goes into report.json under ``png`` and one line to stderr unless ``quiet``). ``sources``: how
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
    main_fig = panels[0].figure if panels[0].figure is not None else None
    if main_fig is None and len(panels) > 1 and panels[1].key == "front_size":
        main_fig = panels[1].figure
    png_info = (_write_png(data, main_fig, out_path.parent / PNG_NAME) if png
                else {"written": False, "reason": "PNG export not requested"})
    if png and not png_info["written"] and not quiet:
        print(f"kdtune dashboard: no {PNG_NAME}: {png_info['reason']}", file=sys.stderr)
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
