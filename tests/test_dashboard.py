"""Tests of kdtune.dashboard: exports equal the Parquet's values, edge cases render, and the HTML
renders in real headless Chromium with no console error and no network request."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers next to this file

from browser_helper import open_dashboards  # noqa: E402
from test_results import CONFIGS, _trial_row, make_fake_run, write_trials  # noqa: E402

from kdtune.dashboard import CSV_COLUMNS, OUTPUT_FILES, write_dashboard  # noqa: E402
from kdtune.errors import KDTuneError  # noqa: E402
from kdtune.results import t_quantile  # noqa: E402

ALL_PANELS = {"front_latency", "front_size", "front_3d", "parcoords", "ablation", "stem",
              "kd_vs_baseline", "curves"}


def figure_keys(html_text: str) -> set[str]:
    return set(re.findall(r"data-kdtune-figure='([a-z_0-9]+)'", html_text))


def meta_count(html_text: str) -> int:
    return int(re.search(r'<meta name="kdtune-figures" content="(\d+)">', html_text).group(1))


def answer_box(html_text: str) -> str:
    return re.search(r"<section class='answer'>.*?</section>", html_text, re.S).group(0)


def section(html_text: str, key: str) -> str:
    return re.search(rf"<section id='{key}'.*?</section>", html_text, re.S).group(0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A realistic sweep and its dashboard (with the PNGs), shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    run = make_fake_run(root, "sweep-a", sweep_name="kd_prune_study")
    html_path = write_dashboard([run], quiet=True)
    return run, html_path, None


# ---------------------------------------------------------------------------------------------
# exports


def _completed(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "trials.parquet")
    return df[df["status"] == "completed"]


def test_writes_every_file(sweep):
    run, html_path, _ = sweep
    assert html_path == run / "dashboard.html"
    for name in ("report.json", "results.csv"):
        assert (run / name).is_file(), name
    text = html_path.read_text()
    assert figure_keys(text) == ALL_PANELS and meta_count(text) == len(ALL_PANELS)
    # self-contained: plotly.js inlined once, nothing loaded from elsewhere
    assert text.count("<script") == len(ALL_PANELS) + 1
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img[^>]+src=|@import", text)
    assert "CIFAR-10 (JPEG copy)" in text and "RuntimeError: CUDA out of memory" in text
    for path in ("/runs/sweep-a/", "0123456789abcdef"):
        assert path in text  # checkpoint paths and provenance


MAIN_PNGS = ["front.png", "accuracy_vs_latency.png", "accuracy_vs_size.png", "kd_vs_no_kd.png"]


def _png_size(path: Path) -> tuple[str, tuple[int, int]]:
    from PIL import Image

    with Image.open(path) as img:
        img.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as img:
        return img.format, img.size


def test_png_export(sweep):
    run, html_path, _ = sweep
    report = json.loads((run / "report.json").read_text())
    assert report["png"] == {"written": MAIN_PNGS, "not_written": {}}, report["png"]
    for name in MAIN_PNGS:
        fmt, (width, height) = _png_size(run / name)
        assert fmt == "PNG" and width == 1800 and 1000 < height < 2500, (name, width, height)
        assert name in OUTPUT_FILES  # what a sweep at a URI uploads
    # front.png is the (only) latency chart
    assert (run / "front.png").read_bytes() == (run / "accuracy_vs_latency.png").read_bytes()
    assert ("exports next to this file: report.json · results.csv · " + " · ".join(MAIN_PNGS)
            in html_path.read_text())


def _rendered(run: Path, key: str):
    """(dashboard data, the panel's Plotly figure, its matplotlib rendering's axes)."""
    from kdtune import figures
    from kdtune.dashboard import _prepare, build_panels, report_label

    data = _prepare([run])
    panel = next(p for p in build_panels(data) if p.key == key)
    fig = figures.render(panel.figure, report_label(data))
    return data, panel.figure, fig


def _collections(ax, prefix: str = ""):
    from matplotlib.collections import PathCollection

    return [c for c in ax.collections if isinstance(c, PathCollection)
            and c.get_label().startswith(prefix)]


def test_png_front_is_the_dashboards_front(sweep):
    from matplotlib.lines import Line2D

    from kdtune.figures import text

    run, _, _ = sweep
    report = json.loads((run / "report.json").read_text())
    data, plotly_fig, fig = _rendered(run, "front_latency")
    ax = fig.axes[0]
    # labels: the Plotly axis titles, units included; title with dataset and sweep name
    assert ax.get_xlabel() == "batch-1 latency (ms, cpu Intel Xeon Platinum 8480, 1 thread)"
    assert ax.get_xlabel() == text(plotly_fig.layout.xaxis.title.text)
    assert ax.get_ylabel() == "test accuracy (%), mean over seeds ± 95 % CI"
    assert fig.get_suptitle() == ("Test accuracy vs batch-1 CPU latency — "
                                  "CIFAR-10 (JPEG copy) · kd_prune_study")
    assert ax.get_title(loc="left") == "front chosen on validation accuracy; test accuracy shown"
    # the staircase: report.json's front, cheapest first, at its test accuracy
    stair = [ln for ln in ax.lines if ln.get_label().startswith("Pareto front")]
    assert len(stair) == 1 and stair[0].get_drawstyle() == "steps-post"
    assert stair[0].get_xdata().tolist() == pytest.approx([e["latency_ms"] for e in
                                                           report["front"]])
    assert stair[0].get_ydata().tolist() == pytest.approx([e["test_accuracy"] for e in
                                                           report["front"]])
    # one point per config shown (40 seed-averaged configs), at its test accuracy
    points = np.concatenate([c.get_offsets() for c in _collections(ax)
                             if not c.get_label().startswith("stopped")])
    shown = data.agg[data.agg["latency_ms_b1_cpu_mean"].notna()]
    assert len(points) == len(shown) == 40
    assert sorted(points[:, 1]) == pytest.approx(sorted(100 * shown["test_acc_mean"]))
    # channel-pruned configs hollow, coloured by prune ratio like the page's colour axis
    hollow = _collections(ax, "resnet18 · channel-pruned")
    assert hollow and (hollow[0].get_facecolors().size == 0
                       or (hollow[0].get_facecolors()[:, 3] == 0).all())
    filled = _collections(ax, "resnet18")[0]
    assert len({tuple(c) for c in filled.get_facecolors()}) > 1  # several prune ratios
    assert fig.axes[1].get_title(loc="left") == "prune\nratio"  # the colour bar
    # the teacher's accuracy as a horizontal line
    teacher = 100 * pd.read_parquet(run / "trials.parquet").teacher_test_acc.mean()
    flat = [ln for ln in ax.lines if isinstance(ln, Line2D) and len(set(ln.get_ydata())) == 1]
    assert [ln.get_ydata()[0] for ln in flat] == pytest.approx([teacher])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"teacher resnet50/cifar: {teacher:.1f} %" in legend
    # the legend sits below the chart: it covers no point
    renderer = fig.canvas.get_renderer()
    assert fig.legends[0].get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0


def test_png_kd_vs_no_kd_is_the_dashboards_comparison(sweep):
    from kdtune.dashboard import kd_comparisons
    from kdtune.figures import text

    run, _, _ = sweep
    data, plotly_fig, fig = _rendered(run, "kd_vs_baseline")
    ax = fig.axes[0]
    pairs = kd_comparisons(data)
    assert len(pairs) == 12  # > 8: one line per label, upright, as on the page
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [text(p["tick"].replace("<br>", " · ")) for p in pairs]
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())
    assert ax.get_ylabel() == text(plotly_fig.layout.yaxis.title.text)
    assert ax.get_xlabel() == "same student, stem, epochs and prune method"
    assert ax.get_ylim() == pytest.approx(tuple(plotly_fig.layout.yaxis.range))
    # side by side in each category: no KD left, KD right, at the compared configs' accuracy
    (kd,), (no_kd,) = _collections(ax, "KD (α > 0)"), _collections(ax, "no KD")
    for side, points, shift in (("a", kd, 0.1), ("b", no_kd, -0.1)):
        xy = points.get_offsets()
        assert xy[:, 0].tolist() == pytest.approx([i + shift for i in range(len(pairs))])
        assert xy[:, 1].tolist() == pytest.approx([100 * p[side]["test_acc_mean"]
                                                   for p in pairs])
    assert "KD vs no KD" in fig.get_suptitle() and "kd_prune_study" in fig.get_suptitle()


def test_pngs_need_no_browser_and_match_the_report(tmp_path, monkeypatch):
    # no kaleido importable, no chromium on PATH
    monkeypatch.setitem(sys.modules, "kaleido", None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("KDTUNE_CHROMIUM", raising=False)
    run = _one_trial(tmp_path)
    (run / "kd_vs_no_kd.png").write_bytes(b"stale")  # from an earlier dashboard
    write_dashboard([run], quiet=True)
    png = json.loads((run / "report.json").read_text())["png"]
    assert png["written"] == MAIN_PNGS[:3]
    assert list(png["not_written"]) == ["kd_vs_no_kd.png"]
    assert "no no-KD trial" in png["not_written"]["kd_vs_no_kd.png"]
    assert not (run / "kd_vs_no_kd.png").exists()  # the folder matches the report
    for name in png["written"]:
        assert _png_size(run / name)[0] == "PNG"


def test_png_failure_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    from kdtune import figures

    def broken(fig, path, label=""):
        if "size" in str(fig.layout.meta):
            raise RuntimeError("no room for the legend\nsecond line")
        return real(fig, path, label)

    real = figures.write_png
    monkeypatch.setattr(figures, "write_png", broken)
    run = _one_trial(tmp_path)
    write_dashboard([run])
    png = json.loads((run / "report.json").read_text())["png"]
    assert png["written"] == MAIN_PNGS[:2]
    assert png["not_written"]["accuracy_vs_size.png"] == (
        "drawing failed (RuntimeError: no room for the legend)")
    assert not (run / "accuracy_vs_size.png").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no accuracy_vs_size.png" in err


def test_report_json_equals_parquet(sweep):
    run, _, _ = sweep
    report = json.loads((run / "report.json").read_text())
    done = _completed(run)
    assert report["units"]["accuracy"].startswith("percent")
    assert report["dataset"] == "CIFAR-10 (JPEG copy)"
    assert report["device"] == "cpu Intel Xeon Platinum 8480"
    assert report["trials"] == {"total": 127, "completed": 120, "stopped": 5, "errored": 2}
    assert set(report["families"]) == {"resnet18", "mobilenetv2"}
    for arch, fam in report["families"].items():
        unpruned = done[(done["student.arch"] == arch) & (done["prune.ratio"] == 0)]
        kd, base = unpruned[unpruned["kd.alpha"] > 0], unpruned[unpruned["kd.alpha"] == 0]
        assert fam["student_accuracy_with_kd"] == pytest.approx(100 * kd.test_acc.max())
        assert fam["student_accuracy_without_kd"] == pytest.approx(100 * base.test_acc.max())
        assert fam["teacher_accuracy"] == pytest.approx(100 * done.teacher_test_acc.iloc[0])
        assert fam["n_with_kd"] == len(kd) and fam["n_without_kd"] == len(base)
        assert fam["includes_pruned"] is False
    # the front: seed means straight from the Parquet; no entry dominated by another on
    # validation accuracy and latency, nor by any config of the sweep
    assert report["front_objectives"] == ["max val_acc", "min latency_ms_b1_cpu"]
    assert report["front"]
    for entry in report["front"]:
        members = done[done.trial_id.isin(entry["trial_ids"])]
        assert len(members) == entry["n_seeds"] == 3
        assert entry["test_accuracy"] == pytest.approx(100 * members.test_acc.mean())
        assert entry["val_accuracy"] == pytest.approx(100 * members.val_acc.mean())
        assert entry["latency_ms"] == pytest.approx(members.latency_ms_b1_cpu.mean())
        assert entry["latency_ms_cpu_p90"] == pytest.approx(members.latency_ms_b1_cpu_p90.mean())
        assert entry["checkpoint"] in set(members.checkpoint)
    per_config = [(100 * g.val_acc.mean(), g.latency_ms_b1_cpu.mean())
                  for _, g in done.groupby(["student.arch", "student.stem", "kd.temperature",
                                            "kd.alpha", "kd.label_smoothing", "prune.ratio",
                                            "prune.method"])]
    for e in report["front"]:
        a = (e["val_accuracy"], e["latency_ms"])
        assert not any(b[0] > a[0] + 1e-9 and b[1] < a[1] - 1e-9 for b in per_config)
    assert len(per_config) == 40
    # the budgets: the front, cheapest first, none within another's timing spread
    budgets = report["latency_budgets"]["cpu"]
    assert 0 < len(budgets) <= len(report["front"])
    for prev, nxt in zip(budgets, budgets[1:]):
        assert nxt["latency_ms_cpu_p10"] > prev["latency_ms_cpu_p90"]
        assert nxt["val_accuracy"] > prev["val_accuracy"]
    assert report["provenance"]["git_sha"] == "0123456789abcdef0123456789abcdef01234567"
    assert report["provenance"]["torch_version"] == "2.9.0"


def test_results_csv_equals_parquet(sweep):
    run, _, _ = sweep
    csv = pd.read_csv(run / "results.csv")
    assert tuple(csv.columns) == CSV_COLUMNS
    assert csv["Variant"].tolist() == ["Teacher", "KD student", "Pruned KD student"]
    df = pd.read_parquet(run / "trials.parquet")
    done = _completed(run)
    kd = done[done["kd.alpha"] > 0]
    teacher, best, pruned = (csv.iloc[i] for i in range(3))
    assert teacher.Accuracy == pytest.approx(100 * df.teacher_test_acc.mean())
    assert teacher.LatencyMs == pytest.approx(df.teacher_latency_ms_b1_cpu.iloc[0])
    assert teacher.SizeMB == pytest.approx(df.teacher_size_mb_dense.iloc[0])
    for row, subset in ((best, kd[kd["prune.ratio"] == 0]), (pruned, kd[kd["prune.ratio"] > 0])):
        top = subset.loc[subset.test_acc.idxmax()]
        assert row.Accuracy == pytest.approx(100 * top.test_acc)
        assert row.LatencyMs == pytest.approx(top.latency_ms_b1_cpu)
        assert row.SizeMB == pytest.approx(min(top.size_mb_dense, top.size_mb_sparse))


# ---------------------------------------------------------------------------------------------
# edge cases: each renders a complete page without exceptions


def _rewrite(run: Path, fn) -> Path:
    df = pd.read_parquet(run / "trials.parquet")
    return write_trials(run, fn(df))


def _one_trial(root):
    return make_fake_run(root, "one", students=("resnet18",), stems=("cifar",),
                         configs=[CONFIGS[3]], seeds=(0,), n_stopped=0, n_errored=0,
                         sweep_yaml=False, teacher_measured=False)


def _no_completed(root):
    return make_fake_run(root, "none-done", configs=[], n_stopped=3, n_errored=2)


def _one_objective(root):
    run = make_fake_run(root, "acc-only", students=("mobilenetv2",), seeds=(0, 1))
    nan_cols = [c for c in pd.read_parquet(run / "trials.parquet").columns
                if c.startswith(("latency_ms", "size_mb", "throughput", "teacher_latency"))]
    return _rewrite(run, lambda df: df.assign(**{c: np.nan for c in nan_cols}))


def _no_baseline(root):
    return make_fake_run(root, "kd-only", configs=[c for c in CONFIGS if c[1] > 0])


def _size_only_no_epochs(root):
    run = make_fake_run(root, "no-latency", seeds=(0,), sweep_yaml=False)
    (run / "epochs.parquet").unlink()
    return _rewrite(run, lambda df: df.assign(latency_ms_b1_cpu=np.nan))


def _old_run(root):
    """Written before prune.method, p10 and signatures existed: unstructured pruning only, and
    every trial timed on its own (so one architecture's latencies differ by noise)."""
    run = make_fake_run(root, "old", configs=CONFIGS[:7], sweep_yaml=False)
    new = ["prune.method", "prune.round_to", "prune_ratio_achieved", "arch_signature",
           "latency_ms_b1_cpu_p10", "latency_ms_b1_gpu_p10"]
    rng = np.random.default_rng(5)
    return _rewrite(run, lambda df: df.drop(columns=new).assign(
        latency_ms_b1_cpu=df.latency_ms_b1_cpu * (1 + rng.normal(0, 0.02, len(df)))))


EDGE_CASES = {
    # name: (builder, panels drawn as figures, text the page must contain)
    "one_trial": (_one_trial, {"front_latency", "front_size", "front_3d", "ablation", "curves"},
                  ["Nothing was searched", "no no-KD trial (kd.alpha = 0) completed",
                   "Only the cifar stem"]),
    "no_completed": (_no_completed, {"curves"}, ["No trial completed"]),
    "one_objective": (_one_objective, {"best_only", "parcoords", "ablation", "stem",
                                       "kd_vs_baseline", "curves"},
                      ["accuracy is the only objective", "needs both latency and size"]),
    "no_baseline": (_no_baseline, ALL_PANELS - {"kd_vs_baseline"},
                    ["Cannot tell: no no-KD trial (kd.alpha = 0) completed"]),
    "size_only_no_epochs": (_size_only_no_epochs, {"front_size", "parcoords", "ablation", "stem",
                                                   "kd_vs_baseline"},
                            ["No latency was measured", "no learning curves"]),
    "old_run": (_old_run, ALL_PANELS, ["cannot change latency", "(p90 "]),
}


#: The edge cases that draw their PNGs, and the files they get.
PNG_CASES = {"no_completed": [], "one_objective": ["kd_vs_no_kd.png"],
             "size_only_no_epochs": ["accuracy_vs_size.png", "front.png", "kd_vs_no_kd.png"]}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_render(tmp_path, case):
    build, figures, texts = EDGE_CASES[case]
    run = build(tmp_path)
    out = tmp_path / "out" / "dash.html"
    png = case in PNG_CASES  # the others: drawing them is what the sweep fixture tests
    assert write_dashboard(run, out, png=png, quiet=True) == out
    text = out.read_text()
    assert figure_keys(text) == figures
    assert meta_count(text) == len(figures)
    for snippet in texts:
        assert snippet in text, snippet
    report = json.loads((out.parent / "report.json").read_text())  # strict JSON, no NaN
    written = sorted(p.name for p in out.parent.glob("*.png"))
    assert sorted(report["png"]["written"]) == written
    assert written == PNG_CASES.get(case, [])
    if case not in PNG_CASES:
        assert set(report["png"]["not_written"].values()) == {"PNG export not requested"}
    for name, why in report["png"]["not_written"].items():
        assert why and name not in written
    if case == "size_only_no_epochs":
        assert report["png"]["not_written"] == {
            "accuracy_vs_latency.png": "No latency was measured in this sweep, so there is no "
                                       "accuracy/latency trade-off to show."}
    if case == "no_completed":
        assert report["png"]["not_written"]["front.png"].startswith("No trial completed")
    if case == "one_objective":
        assert "only objective" in report["png"]["not_written"]["front.png"]
    csv = pd.read_csv(out.parent / "results.csv")
    assert tuple(csv.columns) == CSV_COLUMNS
    if case == "no_completed":
        assert csv["Variant"].tolist() == ["Teacher"] and report["front"] == []
        assert report["families"]["resnet18"]["student_accuracy_with_kd"] is None
    if case == "one_trial":
        assert len(report["front"]) == 1
        assert csv["Variant"].tolist() == ["Teacher", "KD student"]
        assert math.isnan(csv.iloc[0]["LatencyMs"])  # teacher not measured: left empty
    if case == "one_objective":
        assert report["front_objectives"] == ["max val_acc"] and len(report["front"]) == 1
        done = _completed(run)
        best_val = done.groupby(["student.stem", "kd.temperature", "kd.alpha",
                                 "kd.label_smoothing", "prune.ratio", "prune.method"]
                                ).val_acc.mean().max()
        assert report["front"][0]["val_accuracy"] == pytest.approx(100 * best_val)
    if case == "old_run":  # no p10: budgets split at the median, and the page says so
        assert "Channel pruning" not in section(text, "front_latency")
        assert report["latency_budgets"]["cpu"]
        assert all(e["latency_ms_cpu_p10"] is None for e in report["front"])


def test_several_runs_and_gpu(tmp_path):
    a = make_fake_run(tmp_path, "a", students=("resnet18",), seeds=(0,), n_errored=0)
    b = make_fake_run(tmp_path, "b", students=("resnet18",), seeds=(1,), gpu=True, rng_seed=2)
    out = write_dashboard([a, b], tmp_path / "both.html")
    report = json.loads((tmp_path / "report.json").read_text())
    # one PNG per latency chart, named after its target; front.png is the first (GPU) one
    assert report["png"]["written"] == ["front.png", "accuracy_vs_latency_gpu.png",
                                        "accuracy_vs_latency_cpu.png", "accuracy_vs_size.png",
                                        "kd_vs_no_kd.png"]
    assert (tmp_path / "front.png").read_bytes() == \
        (tmp_path / "accuracy_vs_latency_gpu.png").read_bytes()
    from kdtune.dashboard import _prepare, build_panels, report_label
    from kdtune.figures import render

    data = _prepare([a, b])
    cpu = next(p for p in build_panels(data) if p.key == "front_latency_cpu")
    assert render(cpu.figure, report_label(data)).axes[0].get_xlabel() == \
        "batch-1 latency (ms, cpu Intel Xeon Platinum 8480, 1 thread)"
    assert report["front_objectives"] == ["max val_acc", "min latency_ms_b1_gpu"]
    assert report["device"] == "cuda NVIDIA H100 80GB HBM3"
    text = out.read_text()
    # both devices measured: one latency chart per device, each named after it
    assert figure_keys(text) == ALL_PANELS - {"front_latency"} | {"front_latency_gpu",
                                                                  "front_latency_cpu"}
    gpu, cpu = section(text, "front_latency_gpu"), section(text, "front_latency_cpu")
    assert "<h2>Accuracy vs GPU latency — cuda NVIDIA H100 80GB HBM3</h2>" in gpu
    assert "batch-1 latency (ms, cuda NVIDIA H100 80GB HBM3)" in gpu
    assert "<h2>Accuracy vs CPU latency — cpu Intel Xeon Platinum 8480, 1 thread</h2>" in cpu
    assert "batch-1 latency (ms, cpu Intel Xeon Platinum 8480, 1 thread)" in cpu
    assert set(report["latency_budgets"]) == {"gpu", "cpu"}
    box = answer_box(text)
    assert "per GPU latency budget" in box and "per CPU latency budget" in box
    # each device's budgets walk that device's own front
    gpu_front = [e["latency_ms_gpu"] for e in report["latency_budgets"]["gpu"]]
    assert gpu_front == sorted(gpu_front)
    assert "<title>a, b</title>" in text and "<h1>a, b</h1>" in text
    # seeds of the same config in two runs are pooled (GPU latency only measured in b)
    assert {e["n_seeds"] for e in report["front"]} == {2}


def test_user_mistakes_are_kdtune_errors(tmp_path):
    with pytest.raises(KDTuneError, match="missing-run"):
        write_dashboard([tmp_path / "missing-run"], png=False)
    run = _one_trial(tmp_path)
    with pytest.raises(KDTuneError, match="HTML"):
        write_dashboard([run], tmp_path / "dash.txt", png=False)


# ---------------------------------------------------------------------------------------------
# the real browser


def test_renders_in_headless_chromium(sweep, tmp_path):
    _, html_path, _ = sweep
    # the realistic page (every panel, WebGL ones included) and one made only of notes + curves
    paths = [html_path, write_dashboard(_no_completed(tmp_path), png=False)]
    pages = open_dashboards(paths)
    for path, page in zip(paths, pages, strict=True):
        assert page.console_errors == [] and page.page_errors == [], path
        assert page.requests == [path.resolve().as_uri()], "no network request at view time"
        assert page.expected_figures == len(page.figures) > 0
        for fig in page.figures:
            assert fig["traces"] >= 1 and fig["svg"] >= 1 and fig["height"] > 100, fig
            if fig["id"] in ("fig-front_3d", "fig-parcoords"):
                assert fig["canvas"] >= 1, f"{fig['id']}: WebGL canvas missing"
            else:
                assert fig["points"] >= 1, f"{fig['id']}: no point or line drawn"
    main = {f["id"]: f for f in pages[0].figures}
    assert set(main) == {f"fig-{k}" for k in ALL_PANELS}
    assert [f["id"] for f in pages[1].figures] == ["fig-curves"]
    assert "batch-1 latency (ms, cpu Intel Xeon Platinum 8480, 1 thread)" in \
        main["fig-front_latency"]["text"]


# ---------------------------------------------------------------------------------------------
# hand-made sweeps: fronts, budgets and KD comparisons a user acts on


def _hand_run(root, name: str, specs: list[dict], seeds=(0, 1, 2)) -> Path:
    """A run folder with one config per spec (overrides of a completed resnet18/cifar KD trial;
    ``val_acc``/``test_acc`` are the seed means, the seeds spread ±0.2 pp around them)."""
    base = _trial_row(np.random.default_rng(0), 0, "resnet18", "cifar", (4.0, 0.9, 0.0, 0.0), 0,
                      "completed", gpu=False, run_tag=name)
    rows = []
    for k, spec in enumerate(specs):
        for j, seed in enumerate(seeds):
            jitter = 0.002 * (j - (len(seeds) - 1) / 2)
            rows.append({**base, **spec, "trial_id": f"{name}_{k}_{seed}", "seed": seed,
                         "val_acc": spec["val_acc"] + jitter,
                         "test_acc": spec["test_acc"] + jitter})
    run = Path(root) / name
    run.mkdir(parents=True)
    return write_trials(run, rows)


def _timed(ms: float, p10: float | None = None, p90: float | None = None) -> dict:
    return {"latency_ms_b1_cpu": ms, "latency_ms_b1_cpu_p10": p10 or 0.99 * ms,
            "latency_ms_b1_cpu_p90": p90 or 1.01 * ms, "arch_signature": None}


def _dash(run: Path) -> tuple[str, dict]:
    out = write_dashboard([run], run / "dashboard.html", png=False)
    return out.read_text(), json.loads((run / "report.json").read_text())


def _front_eps(entries: list[dict]) -> list[float]:
    """Each entry's label smoothing: what tells the hand-made configs apart."""
    return [e["config"]["kd.label_smoothing"] for e in entries]


def test_fronts_are_chosen_on_validation_not_test(tmp_path):
    # on validation the front is A, B, C; on test it would be A, D (B looks worse than A and
    # D better than C, but only on the split the choice must not see)
    specs = [
        {"kd.label_smoothing": 0.0, "val_acc": 0.80, "test_acc": 0.85, **_timed(1.0)},   # A
        {"kd.label_smoothing": 0.05, "val_acc": 0.85, "test_acc": 0.82, **_timed(2.0)},  # B
        {"kd.label_smoothing": 0.1, "val_acc": 0.90, "test_acc": 0.90, **_timed(3.0)},   # C
        {"kd.label_smoothing": 0.15, "val_acc": 0.70, "test_acc": 0.95, **_timed(2.5)},  # D
    ]
    text, report = _dash(_hand_run(tmp_path, "val-front", specs))
    assert _front_eps(report["front"]) == [0.0, 0.05, 0.1]
    assert [round(e["test_accuracy"], 6) for e in report["front"]] == [85.0, 82.0, 90.0]
    assert _front_eps(report["latency_budgets"]["cpu"]) == [0.0, 0.05, 0.1]
    box = answer_box(text)
    assert "82.00 %" in box and "95.00 %" not in box  # B listed, D not
    assert "front chosen on validation accuracy; test accuracy shown" in box
    assert "front chosen on validation accuracy; test accuracy shown" in section(
        text, "front_latency")
    table = section(text, "front-table")
    assert table.count("<tr>") == 1 + 3 and "95.00" not in table


@pytest.mark.parametrize("overlap", [True, False])
def test_budgets_within_timing_noise_are_one_budget(tmp_path, overlap):
    # one architecture, unstructured pruning (same dense kernels): 1.41 vs 1.48 ms is noise
    # when the spreads overlap; a third, clearly slower config stays its own budget
    slow_p10 = 1.44 if overlap else 1.475
    fast_p90 = 1.47 if overlap else 1.43
    specs = [
        {"prune.ratio": 0.0, "val_acc": 0.90, "test_acc": 0.895,
         **_timed(1.41, 1.38, fast_p90)},
        {"prune.ratio": 0.3, "prune.scope": "global", "val_acc": 0.91, "test_acc": 0.905,
         **_timed(1.48, slow_p10, 1.52)},
        {"prune.ratio": 0.0, "kd.label_smoothing": 0.1, "val_acc": 0.93, "test_acc": 0.925,
         **_timed(3.0, 2.9, 3.1)},
    ]
    text, report = _dash(_hand_run(tmp_path, "noise", specs))
    assert len(report["front"]) == 3  # all three are on the front
    budgets = report["latency_budgets"]["cpu"]
    lines = re.findall(r"<li>≤ <b>([\d.]+) ms</b>", answer_box(text))
    if overlap:  # one budget, the better by validation accuracy of the two
        assert lines == ["1.48", "3.00"] and len(budgets) == 2
        assert budgets[0]["config"]["prune.ratio"] == 0.3
        assert "≤ <b>1.48 ms</b> (p10–p90 1.44–1.52) → <b>90.50 %</b>" in answer_box(text)
        assert "1 front configuration within the timing spread" in answer_box(text)
    else:
        assert lines == ["1.41", "1.48", "3.00"] and len(budgets) == 3
    assert "cannot change latency" in section(text, "front_latency")


def _kd(alpha: float, eps: float, val: float, test: float, **more) -> dict:
    return {"kd.alpha": alpha, "kd.label_smoothing": eps, "val_acc": val, "test_acc": test,
            "is_baseline": False, **more}


def test_kd_alpha_searched_without_baseline_rows(tmp_path):
    # kd.alpha gridded over {0, 0.9} by the search space: no row is_baseline, and still the
    # α = 0 trials are the no-KD side
    specs = [_kd(0.9, 0.0, 0.91, 0.90), _kd(0.0, 0.0, 0.89, 0.88),
             _kd(0.9, 0.1, 0.92, 0.915), _kd(0.0, 0.1, 0.895, 0.885)]
    text, report = _dash(_hand_run(tmp_path, "alpha-grid", specs))
    assert not pd.read_parquet(tmp_path / "alpha-grid" / "trials.parquet").is_baseline.any()
    [cmp] = report["kd_vs_no_kd"]
    assert cmp["kind"] == "twins" and cmp["like_for_like"]
    assert cmp["kd"]["config"]["kd.label_smoothing"] == 0.1  # the best KD config by val
    assert cmp["no_kd"]["config"]["kd.alpha"] == 0
    assert cmp["diff_pp"] == pytest.approx(3.0)
    assert 0 < cmp["ci95_pp"][0] < 3.0 < cmp["ci95_pp"][1]
    box = answer_box(text)
    assert "Cannot tell" not in box and "yes: KD adds +3.00 pp" in box
    assert "same config and seeds, α = 0.9 vs 0 (label smoothing, prune method/ratio, epochs " \
           "held equal)" in box
    assert "kd_vs_baseline" in figure_keys(text)


def test_kd_twin_beats_better_non_twin(tmp_path):
    run = _hand_run(tmp_path, "twins", [
        _kd(0.9, 0.0, 0.91, 0.90),                        # KD with a twin
        _kd(0.0, 0.0, 0.88, 0.87, **{"kd.temperature": 1.0, "is_baseline": True}),  # its twin:
        # T is inert at α = 0 and is_baseline only says how the sweep scheduled it
        _kd(0.0, 0.1, 0.90, 0.905),                       # a better no-KD config, no twin
        _kd(0.9, 0.05, 0.95, 0.94),                       # a better KD config, no twin
    ])
    # the twin's config again, better still but on other seeds: no twin either
    other_seeds = _hand_run(tmp_path, "other-seeds", [_kd(0.0, 0.0, 0.97, 0.97)], seeds=(5, 6))
    write_trials(run, pd.concat([pd.read_parquet(d / "trials.parquet")
                                 for d in (run, other_seeds)]))
    _, report = _dash(run)
    [cmp] = report["kd_vs_no_kd"]
    assert cmp["kind"] == "twins"
    assert cmp["kd"]["trial_ids"] == [f"twins_0_{s}" for s in (0, 1, 2)]
    assert cmp["no_kd"]["trial_ids"] == [f"twins_1_{s}" for s in (0, 1, 2)]
    assert cmp["diff_pp"] == pytest.approx(3.0)  # 90 - 87, not the better configs' numbers


@pytest.mark.parametrize("n_no_kd", [2, 1])
def test_kd_counts_when_both_sides_searched(tmp_path, n_no_kd):
    kd = [_kd(0.9, 0.0, 0.90, 0.89), _kd(0.9, 0.05, 0.92, 0.91), _kd(0.5, 0.1, 0.91, 0.90)]
    no_kd = [_kd(0.0, 0.07, 0.89, 0.88), _kd(0.0, 0.02, 0.88, 0.87)][:n_no_kd]
    text, report = _dash(_hand_run(tmp_path, "searched", kd + no_kd))
    [cmp] = report["kd_vs_no_kd"]
    assert cmp["kind"] == "searched"
    assert (cmp["n_kd_configs"], cmp["n_no_kd_configs"]) == (3, n_no_kd)
    assert cmp["kd"]["config"]["kd.label_smoothing"] == 0.05
    assert cmp["diff_pp"] == pytest.approx(3.0)
    box = answer_box(text)
    counts = f"KD: best of 3 configs; no KD: best of {n_no_kd} config{'s' * (n_no_kd > 1)}"
    assert counts in box and counts in section(text, "kd_vs_baseline")
    assert "the chosen configs differ in ε (label smoothing) 0.05 vs 0.07" in box
    if n_no_kd == 1:
        assert not cmp["like_for_like"]
        assert "not like for like, no-KD side untuned (1 config vs 3)" in box
        assert "yes: KD adds" not in box
    else:
        assert cmp["like_for_like"] and "yes: KD adds +3.00 pp" in box


def test_channel_pruning_is_told_apart(sweep):
    _, html_path, _ = sweep
    text = html_path.read_text()
    front = section(text, "front_latency")
    assert "Channel pruning (open symbols) removes whole channels and so moves latency" in front
    assert "channel-pruned (open symbol)" in front  # its legend entry
    assert '"symbol":"circle-open"' in front.replace(" ", "")
    assert "pruned 30 % of channels" in front  # hover text
    # the channel-pruned cells have no no-KD twin and one no-KD config: flagged as untuned
    assert "no-KD side untuned (1 config vs 2)" in answer_box(text)


def test_title_is_the_sweep_name(sweep, tmp_path):
    _, html_path, _ = sweep
    text = html_path.read_text()
    assert "<title>kd_prune_study</title>" in text and "<h1>kd_prune_study</h1>" in text
    other = make_fake_run(tmp_path, "b", students=("resnet18",), sweep_name="stem_ablation")
    both = write_dashboard([html_path.parent, other], tmp_path / "both.html", png=False)
    text = both.read_text()
    assert "<title>kd_prune_study, stem_ablation</title>" in text
    assert "<h1>kd_prune_study, stem_ablation</h1>" in text
    assert json.loads((tmp_path / "report.json").read_text())["name"] == [
        "kd_prune_study", "stem_ablation"]


def _onnx(fp32_ms: float, int8_ms: float, val8: float, test8: float) -> dict:
    device = "cpu AMD EPYC 9654, onnxruntime 1.32.0, 1 thread"
    return {"latency_ms_b1_onnx_fp32": fp32_ms, "latency_ms_b1_onnx_fp32_p10": 0.99 * fp32_ms,
            "latency_ms_b1_onnx_fp32_p90": 1.01 * fp32_ms, "latency_ms_b1_onnx_int8": int8_ms,
            "latency_ms_b1_onnx_int8_p10": 0.99 * int8_ms,
            "latency_ms_b1_onnx_int8_p90": 1.01 * int8_ms, "onnx_device": device,
            "val_acc_onnx_int8": val8, "test_acc_onnx_int8": test8,
            "size_mb_onnx_fp32": 1.1, "size_mb_onnx_int8": 0.3,
            "onnx_int8_recipe": "QDQ u8/s8 per-channel, MinMax on 512 train images"}


def test_onnxruntime_targets_get_their_own_fronts_int8_chosen_on_int8_validation(tmp_path):
    # PyTorch CPU front: A, B, C. The INT8 files: B's lost accuracy on validation, so its INT8
    # front is A, C; chosen on INT8 test accuracy B (90 %) would wrongly be on it.
    specs = [
        {"kd.label_smoothing": 0.0, "val_acc": 0.80, "test_acc": 0.85, **_timed(1.0),
         **_onnx(0.8, 0.5, 0.79, 0.84)},   # A
        {"kd.label_smoothing": 0.05, "val_acc": 0.85, "test_acc": 0.82, **_timed(2.0),
         **_onnx(1.6, 1.0, 0.60, 0.90)},   # B
        {"kd.label_smoothing": 0.1, "val_acc": 0.90, "test_acc": 0.90, **_timed(3.0),
         **_onnx(2.4, 1.5, 0.89, 0.88)},   # C
    ]
    text, report = _dash(_hand_run(tmp_path, "onnx", specs))
    assert {"front_latency_cpu", "front_latency_onnx_fp32", "front_latency_onnx_int8"} <= \
        figure_keys(text)
    assert _front_eps(report["latency_budgets"]["cpu"]) == [0.0, 0.05, 0.1]
    assert _front_eps(report["latency_budgets"]["onnx_fp32"]) == [0.0, 0.05, 0.1]
    int8 = report["latency_budgets"]["onnx_int8"]
    assert _front_eps(int8) == [0.0, 0.1]
    assert [round(e["test_accuracy_int8"], 6) for e in int8] == [84.0, 88.0]
    assert [round(e["latency_ms_onnx_int8"], 6) for e in int8] == [0.5, 1.5]
    device = "cpu AMD EPYC 9654, onnxruntime 1.32.0, 1 thread"
    panel = section(text, "front_latency_onnx_int8")
    assert f"<h2>Accuracy vs onnxruntime INT8 latency — {device}</h2>" in panel
    assert f"batch-1 latency (ms, INT8 ONNX file, {device})" in panel
    assert "INT8 test accuracy (%, onnxruntime)" in panel and "INT8 files' validation" in panel
    assert f"<h2>Accuracy vs onnxruntime fp32 latency — {device}</h2>" in section(
        text, "front_latency_onnx_fp32")
    box = answer_box(text)
    assert "Best INT8 test accuracy per onnxruntime INT8 latency budget" in box
    table = section(text, "front-table")
    assert "INT8 test acc. (%) (onnxruntime)" in table and "kdtune export" in table
    assert report["units"]["latency_ms_onnx_int8"] == (
        f"batch-1 latency (ms, INT8 ONNX file, {device})")
    assert report["provenance"]["onnx_device"] == device


# ---------------------------------------------------------------------------------------------
# kd.method: ablation per method, KD vs no KD per method, labels


def _method(method: str, alpha: float, eps: float, val: float, test: float, **more) -> dict:
    return _kd(alpha, eps, val, test, **{"kd.method": method, **more})


def test_kd_vs_no_kd_per_method_pairs_each_with_its_twin(tmp_path):
    # search.baseline with kd.method searched: one no-KD run (the base config's method, logit)
    # and a KD twin per method; the space adds DKD configs, one of them (ε 0.1) with no twin
    specs = [
        _kd(0.0, 0.0, 0.88, 0.87, is_baseline=True),                                      # 0
        _kd(0.9, 0.0, 0.90, 0.89, is_baseline=True),                                      # 1
        _method("dkd", 0.9, 0.0, 0.92, 0.915, is_baseline=True),                          # 2
        _method("fitnets", 0.9, 0.0, 0.91, 0.905, is_baseline=True),                      # 3
        _method("dkd", 0.9, 0.0, 0.93, 0.92, **{"kd.dkd_beta": 4.0}),                     # 4
        _method("dkd", 0.5, 0.0, 0.90, 0.90, **{"kd.dkd_beta": 4.0}),  # 4 but α: inert  # 5
        _method("dkd", 0.9, 0.1, 0.95, 0.94),  # better, but no no-KD config with ε 0.1    # 6
    ]
    text, report = _dash(_hand_run(tmp_path, "methods", specs))
    cmps = report["kd_vs_no_kd"]
    assert [c["kd_method"] for c in cmps] == ["logit", "fitnets", "dkd"]
    no_kd = [f"methods_0_{s}" for s in (0, 1, 2)]
    for cmp, kd_config, diff in zip(cmps, (1, 3, 4), (2.0, 3.5, 5.0), strict=True):
        assert cmp["kind"] == "twins" and cmp["like_for_like"]
        assert cmp["kd"]["trial_ids"] == [f"methods_{kd_config}_{s}" for s in (0, 1, 2)]
        assert cmp["no_kd"]["trial_ids"] == no_kd  # the logit no-KD run is every method's twin
        assert cmp["diff_pp"] == pytest.approx(diff)
    # configs 4 and 5 train alike (DKD has no α): two DKD configs have a twin, not three
    assert cmps[2]["n_kd_configs"] == 2
    box = answer_box(text)
    assert "Where KD did best (highest KD − no KD), like for like: <b>DKD</b> (resnet18 · " \
           "cifar stem · unpruned): yes: DKD adds +5.00 pp" in box
    for label in ("logit KD", "FitNets", "DKD"):
        assert f"<b>resnet18 · cifar stem · unpruned · {label}</b>: yes: {label} adds" in box
    panel = section(text, "kd_vs_baseline")
    assert "same config and seeds, α = 0.9 vs 0 (" in panel  # logit KD: as before kd.method
    assert "same config and seeds, FitNets w 100, T 4, α 0.9 vs no KD (α = 0)" in panel
    assert "same config and seeds, DKD β 4, T 4 vs no KD (α = 0)" in panel
    assert "the best by validation of the 2 DKD configs with a no-KD twin" in panel
    assert "Per distillation method" in panel
    # DKD never shows an α: not in labels, not in the tables
    assert "DKD β 4, T 4, α" not in text and "DKD β 8, T 4, α" not in text
    front = section(text, "front-table")
    assert "<th>KD method</th>" in front
    assert "<td>DKD β 8</td><td>4</td><td>—</td>" in front  # T 4, α "—"
    trials = section(text, "trials")
    assert "<td>FitNets w 100</td><td>4</td><td>0.9</td>" in trials
    assert "<td>DKD β 4</td><td>4</td><td>—</td>" in trials
    assert "<td>no KD</td>" in trials


def test_method_ablation_means_and_cis(tmp_path):
    specs = [
        _kd(0.0, 0.0, 0.88, 0.87),
        _kd(0.9, 0.0, 0.90, 0.89),
        _kd(0.5, 0.1, 0.92, 0.91),
        _method("dkd", 0.9, 0.0, 0.93, 0.92),
        _method("dkd", 0.5, 0.0, 0.94, 0.93),  # α is inert for DKD: the same training
    ]
    run = _hand_run(tmp_path, "ablation", specs)
    text, report = _dash(run)
    df = pd.read_parquet(run / "trials.parquet")
    kind = np.where(df["kd.alpha"] == 0, "none", df["kd.method"].fillna("logit"))
    entries = {e["kd_method"]: e for e in report["kd_method_ablation"]}
    assert list(entries) == ["none", "logit", "dkd"]  # no KD first, then KD_METHODS' order
    expected = {"none": (87.0, 3, 1), "logit": (90.0, 6, 2), "dkd": (92.5, 6, 1)}
    for method, (mean, n_trials, n_configs) in expected.items():
        e = entries[method]
        values = 100 * df.loc[kind == method, "test_acc"]
        half = t_quantile(0.975, n_trials - 1) * values.std(ddof=1) / math.sqrt(n_trials)
        assert e["test_accuracy"] == pytest.approx(mean) == pytest.approx(values.mean())
        assert e["test_accuracy_ci95"] == pytest.approx(half)
        assert (e["n_trials"], e["n_configs"], e["seeds"]) == (n_trials, n_configs, "0,1,2")
        assert e["arch"] == "resnet18"
    # no KD: seeds 87 ± 0.2 pp, so the CI is t(0.975, 2) × 0.2 / √3
    assert entries["none"]["test_accuracy_ci95"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3))
    panel = section(text, "ablation")  # plotly's JSON writes α as \u03b1
    assert "distillation method (KD trials of each kd.method; no KD = \\u03b1 0)" in panel
    assert "DKD trials are left out of the α plot" in panel


def _ablation_x(fig, axis: str) -> list[float]:
    return [x for tr in fig.data if tr.xaxis == axis and tr.x is not None for x in tr.x
            if x is not None]


def test_dkd_rows_are_left_out_of_the_alpha_ablation(tmp_path):
    from kdtune.dashboard import _panel_ablation, _prepare

    specs = [_kd(0.0, 0.0, 0.88, 0.87), _kd(0.9, 0.0, 0.90, 0.89),
             _method("dkd", 0.7, 0.0, 0.93, 0.92, **{"kd.temperature": 3.0})]
    fig = _panel_ablation(_prepare([_hand_run(tmp_path, "alpha", specs)])).figure
    # T (x): every KD trial, DKD's T 3 included; α (x2): DKD's α 0.7 means nothing, left out
    assert set(_ablation_x(fig, "x")) == {3.0, 4.0}
    assert set(_ablation_x(fig, "x2")) == {0.0, 0.9}
    assert list(fig.layout.xaxis5.ticktext) == ["no KD (α = 0)", "logit KD", "DKD"]


def test_logit_only_runs_look_as_before(sweep):
    # the fake runs predate kd.method (no kd.* method columns): logit KD throughout
    run, html_path, _ = sweep
    text = html_path.read_text()
    report = json.loads((run / "report.json").read_text())
    assert {c["kd_method"] for c in report["kd_vs_no_kd"]} == {"logit"}
    assert "<th>KD method</th>" not in text and "logit KD" not in answer_box(text)
    assert "Where KD did best" not in text and "Per distillation method" not in text
    assert "resnet18 · cifar stem · T 4, α 0.9" in text  # the config label as it was
    # one method and no KD: the method ablation compares the two, per student
    assert {(e["arch"], e["kd_method"]) for e in report["kd_method_ablation"]} == {
        (arch, m) for arch in ("resnet18", "mobilenetv2") for m in ("none", "logit")}
    assert "distillation method" in section(text, "ablation")


def test_one_kind_draws_no_method_ablation(tmp_path):
    run = _hand_run(tmp_path, "kd-only", [_kd(0.9, 0.0, 0.90, 0.89), _kd(0.5, 0.0, 0.91, 0.9)])
    text, report = _dash(run)
    assert report["kd_method_ablation"] == []
    assert "distillation method" not in section(text, "ablation")


# ---------------------------------------------------------------------------------------------
# several teachers (a searched teacher, ensembles) and ViT students


def _teacher(name: str, acc: float, **more) -> dict:
    """A row's teacher: teacher_name and its accuracy (NaN for a no-KD row)."""
    arch = "resnet20" if name.startswith("ensemble") else name.split("/")[0]
    return {"teacher.arch": arch, "teacher.stem": "cifar", "teacher_name": name,
            "teacher_test_acc": acc, "teacher_val_acc": acc + 0.005, "student_family": "cnn",
            **more}


def _teachers_run(tmp_path) -> Path:
    from test_results import ENSEMBLE, MEMBERS

    ens = "ensemble resnet20/cifar + vit_tiny"
    return _hand_run(tmp_path, "teachers", [
        _kd(0.0, 0.0, 0.88, 0.87, **_teacher("resnet20/cifar", math.nan)),         # no KD
        _kd(0.9, 0.0, 0.90, 0.89, **_teacher("resnet20/cifar", 0.92)),
        _kd(0.9, 0.1, 0.92, 0.91, **_teacher("resnet20/cifar", 0.92)),
        _kd(0.9, 0.0, 0.86, 0.85, **_teacher("vit_tiny", 0.80)),
        _kd(0.9, 0.0, 0.93, 0.925, **_teacher(ens, 0.93, **{"teacher.ensemble": ENSEMBLE,
                                                             "teacher_members": MEMBERS})),
    ])


def test_teacher_lines_name_each_teacher(tmp_path):
    from kdtune.dashboard import _prepare

    run = _teachers_run(tmp_path)
    assert _prepare([run]).teacher_lines() == [
        ("teacher resnet20/cifar: 92.0 %", pytest.approx(0.92)),
        ("teacher vit_tiny: 80.0 %", pytest.approx(0.80)),
        ("teacher ensemble resnet20/cifar + vit_tiny: 93.0 % (members 92.0 %, 80.0 %)",
         pytest.approx(0.93))]
    text, report = _dash(run)
    assert "teacher vit_tiny: 80.0 %; teacher ensemble resnet20/cifar + vit_tiny: 93.0 %" in \
        answer_box(text)
    # the hover names an ensemble by its members, not by its JSON config
    assert "teacher.ensemble=ensemble resnet20\\u002fcifar + vit_tiny" in section(
        text, "front_latency")  # (plotly's JSON writes / as \u002f)
    assert "&quot;arch&quot;" not in text and '\\"arch\\"' not in text
    for key in ("front_latency", "ablation", "kd_vs_baseline"):  # one legend entry each
        assert section(text, key).count('"name":"teacher vit_tiny: 80.0 %"') == 1, key
    teachers = {t["teacher"]: t for t in report["teachers"]}
    assert list(teachers) == ["resnet20/cifar", "vit_tiny", "ensemble resnet20/cifar + vit_tiny"]
    assert teachers["vit_tiny"]["teacher_test_accuracy"] == pytest.approx(80.0)
    ens = teachers["ensemble resnet20/cifar + vit_tiny"]
    assert ens["teacher_test_accuracy"] == pytest.approx(93.0)
    assert [(m["name"], m["test_accuracy"]) for m in ens["members"]] == [
        ("resnet20/cifar", pytest.approx(92.0)), ("vit_tiny", pytest.approx(80.0))]
    # the KD students of each teacher (the no-KD trials are nobody's)
    df = pd.read_parquet(run / "trials.parquet")
    for name, t in teachers.items():
        acc = 100 * df.loc[(df.teacher_name == name) & (df["kd.alpha"] > 0), "test_acc"]
        assert t["kd_students"]["test_accuracy"] == pytest.approx(acc.mean())
        assert t["kd_students"]["n_trials"] == len(acc) == (6 if name == "resnet20/cifar" else 3)
    # one teacher per KD student: results.csv pairs the best one with its own teacher
    csv = pd.read_csv(run / "results.csv")
    assert csv.iloc[0].Accuracy == pytest.approx(93.0)
    assert report["families"]["resnet18"]["teacher"] == "ensemble resnet20/cifar + vit_tiny"


def test_teacher_ablation_row(tmp_path):
    from kdtune.dashboard import _panel_ablation, _prepare

    run = _teachers_run(tmp_path)
    text, report = _dash(run)
    df = pd.read_parquet(run / "trials.parquet")
    entries = report["kd_teacher_ablation"]
    assert [e["teacher"] for e in entries] == [None, "resnet20/cifar", "vit_tiny",
                                              "ensemble resnet20/cifar + vit_tiny"]
    expected = {None: (87.0, 3, 1), "resnet20/cifar": (90.0, 6, 2), "vit_tiny": (85.0, 3, 1),
                "ensemble resnet20/cifar + vit_tiny": (92.5, 3, 1)}
    for e in entries:
        mean, n_trials, n_configs = expected[e["teacher"]]
        rows = df["kd.alpha"] == 0 if e["teacher"] is None else \
            (df["kd.alpha"] > 0) & (df.teacher_name == e["teacher"])
        values = 100 * df.loc[rows, "test_acc"]
        half = t_quantile(0.975, n_trials - 1) * values.std(ddof=1) / math.sqrt(n_trials)
        assert e["test_accuracy"] == pytest.approx(mean) == pytest.approx(values.mean())
        assert e["test_accuracy_ci95"] == pytest.approx(half)
        assert (e["n_trials"], e["n_configs"], e["seeds"]) == (n_trials, n_configs, "0,1,2")
    fig = _panel_ablation(_prepare([run])).figure
    # the method row (no KD vs logit KD) and then the teacher row
    assert list(fig.layout.xaxis5.ticktext) == ["no KD (α = 0)", "logit KD"]
    assert list(fig.layout.xaxis6.ticktext) == [
        "no KD (α = 0)", "resnet20/cifar", "vit_tiny", "ensemble resnet20/cifar<br>+ vit_tiny"]
    assert fig.layout.xaxis6.title.text == "teacher"
    means = [y for tr in fig.data if tr.xaxis == "x6" and tr.hovertext for y in tr.y]
    assert means == pytest.approx([87.0, 90.0, 85.0, 92.5])
    assert any("teacher vit_tiny<br>mean test acc. 85.00 %" in h and "3 trials" in h
               for tr in fig.data if tr.hovertext for h in tr.hovertext)
    # KD vs no KD per teacher: the no-KD run is every teacher's twin (it used none)
    cmps = {c["teacher"]: c for c in report["kd_vs_no_kd"]}
    assert {k: (c["kind"], round(c["diff_pp"], 6)) for k, c in cmps.items()} == {
        "resnet20/cifar": ("twins", 2.0), "vit_tiny": ("twins", -2.0),
        "ensemble resnet20/cifar + vit_tiny": ("twins", 5.5)}
    box = answer_box(text)
    assert "<b>resnet18 · cifar stem · unpruned · teacher vit_tiny</b>: no, it hurts" in box
    assert "yes: KD from ensemble resnet20/cifar + vit_tiny adds +5.50 pp" in box
    # labels and tables name the teacher of a KD config, none for no KD
    assert "resnet18 · cifar stem · T 4, α 0.9 · teacher ensemble resnet20/cifar + vit_tiny" \
        in box
    trials = section(text, "trials")
    assert "<th>teacher</th>" in trials and "<td>vit_tiny</td>" in trials
    assert "<td>cifar</td><td>—</td><td>4</td><td>0</td>" in trials  # a no-KD row


def test_one_teacher_draws_no_teacher_row(sweep):
    # the fake runs predate teacher_name: derived as arch/stem, one teacher, no teacher row
    run, html_path, _ = sweep
    text = html_path.read_text()
    report = json.loads((run / "report.json").read_text())
    assert report["kd_teacher_ablation"] == []
    assert [t["teacher"] for t in report["teachers"]] == ["resnet50/cifar"]
    assert "teacher resnet50/cifar: 95.1 %" in answer_box(text)
    assert "<th>teacher</th>" not in text and "KD from" not in text
    assert "teacher (KD trials" not in section(text, "ablation")


def _vit(stem: str, val: float, test: float, alpha: float = 0.9) -> dict:
    return _kd(alpha, 0.0, val, test, **{"student.arch": "vit_tiny_d6", "student.stem": stem,
                                         "student_family": "vit"})


def test_vit_students_have_no_stem(tmp_path):
    from kdtune.dashboard import _config_label, _prepare, stem_comparisons

    # a ViT's student.stem column means nothing: even rows reading "standard" (as no real run
    # writes) must not make a stem comparison of it
    run = _hand_run(tmp_path, "vit", [
        _kd(0.9, 0.0, 0.90, 0.89, student_family="cnn"),
        _kd(0.9, 0.0, 0.86, 0.85, **{"student.stem": "standard", "student_family": "cnn"}),
        _kd(0.0, 0.0, 0.87, 0.86, student_family="cnn"),
        _vit("cifar", 0.80, 0.79), _vit("standard", 0.82, 0.81), _vit("cifar", 0.78, 0.77, 0.0),
    ])
    data = _prepare([run])
    assert [p["arch"] for p in stem_comparisons(data)] == ["resnet18"]
    vit = data.agg[data.agg["student.arch"] == "vit_tiny_d6"].iloc[0]
    assert _config_label(vit) == "vit_tiny_d6 · T 4, α 0.9 · unpruned"
    text, report = _dash(run)
    assert "vit_tiny_d6 · cifar stem" not in text and "vit_tiny_d6 · standard stem" not in text
    assert "vit_tiny_d6<br>cifar stem" not in text
    box = answer_box(text)
    assert "<b>vit_tiny_d6 · unpruned</b>" in box  # KD vs no KD of the ViT, no stem
    assert "<b>resnet18</b>: yes: the CIFAR stem adds" in box and "<b>vit_tiny_d6</b>:" not in box
    assert "Vision transformers have no stem and are left out." in section(text, "stem")
    assert "<td>vit_tiny_d6</td><td>—</td>" in section(text, "trials")
    hover = section(text, "front_latency")
    assert "student.arch=vit_tiny_d6" in hover and "vit_tiny_d6, student.stem" not in hover


def test_only_vit_students_have_no_stem_panel(tmp_path):
    run = _hand_run(tmp_path, "vit-only", [_vit("cifar", 0.80, 0.79),
                                           _vit("cifar", 0.78, 0.77, 0.0)])
    text, _ = _dash(run)
    assert "Every student here is a vision transformer, which has no stem" in section(text,
                                                                                    "stem")
