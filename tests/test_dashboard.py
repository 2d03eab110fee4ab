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

from browser_helper import chromium_path, open_dashboards  # noqa: E402
from test_results import CONFIGS, make_fake_run, write_trials  # noqa: E402

from kdtune.dashboard import CSV_COLUMNS, write_dashboard  # noqa: E402
from kdtune.errors import KDTuneError  # noqa: E402

ALL_PANELS = {"front_latency", "front_size", "front_3d", "parcoords", "ablation", "stem",
              "kd_vs_baseline", "curves"}


def figure_keys(html_text: str) -> set[str]:
    return set(re.findall(r"data-kdtune-figure='([a-z_0-9]+)'", html_text))


def meta_count(html_text: str) -> int:
    return int(re.search(r'<meta name="kdtune-figures" content="(\d+)">', html_text).group(1))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A realistic sweep and its dashboard (with the PNG), shared by the tests below."""
    try:
        chromium_path()  # kaleido's PNG export drives the same Debian chromium
        have_browser = True
    except pytest.skip.Exception:  # not root and no chromium: only the PNG/browser tests skip
        have_browser = False
    root = tmp_path_factory.mktemp("runs")
    run = make_fake_run(root, "sweep-a")
    html_path = write_dashboard([run], quiet=True)
    return run, html_path, have_browser


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


def test_png_export(sweep):
    run, _, have_browser = sweep
    if not have_browser:
        pytest.skip("no chromium for kaleido (not root, cannot install it)")
    report = json.loads((run / "report.json").read_text())
    assert report["png"] == {"written": True, "path": "front.png"}, report["png"]
    head = (run / "front.png").read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n"
    assert (run / "front.png").stat().st_size > 20_000


def test_png_failure_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    import plotly.graph_objects as go

    def broken(*args, **kwargs):
        raise RuntimeError("Could not find a Chrome executable\nsecond line")

    monkeypatch.setattr(go.Figure, "write_image", broken)
    run = _one_trial(tmp_path)
    write_dashboard([run])
    png = json.loads((run / "report.json").read_text())["png"]
    assert png["written"] is False and "Could not find a Chrome" in png["reason"]
    assert not (run / "front.png").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no front.png" in err


def test_report_json_equals_parquet(sweep):
    run, _, _ = sweep
    report = json.loads((run / "report.json").read_text())
    done = _completed(run)
    assert report["units"]["accuracy"].startswith("percent")
    assert report["dataset"] == "CIFAR-10 (JPEG copy)"
    assert report["device"] == "cpu Intel Xeon Platinum 8480"
    assert report["trials"] == {"total": 91, "completed": 84, "stopped": 5, "errored": 2}
    assert set(report["families"]) == {"resnet18", "mobilenetv2"}
    for arch, fam in report["families"].items():
        unpruned = done[(done["student.arch"] == arch) & (done["prune.ratio"] == 0)]
        kd, base = unpruned[unpruned["kd.alpha"] > 0], unpruned[unpruned["kd.alpha"] == 0]
        assert fam["student_accuracy_with_kd"] == pytest.approx(100 * kd.test_acc.max())
        assert fam["student_accuracy_without_kd"] == pytest.approx(100 * base.test_acc.max())
        assert fam["teacher_accuracy"] == pytest.approx(100 * done.teacher_test_acc.iloc[0])
        assert fam["n_with_kd"] == len(kd) and fam["n_without_kd"] == len(base)
        assert fam["includes_pruned"] is False
    # the front: seed means straight from the Parquet, and no entry dominated by another
    assert report["front"]
    for entry in report["front"]:
        members = done[done.trial_id.isin(entry["trial_ids"])]
        assert len(members) == entry["n_seeds"] == 3
        assert entry["test_accuracy"] == pytest.approx(100 * members.test_acc.mean())
        assert entry["latency_ms"] == pytest.approx(members.latency_ms_b1_cpu.mean())
        assert entry["checkpoint"] in set(members.checkpoint)
    pts = [(e["test_accuracy"], e["latency_ms"]) for e in report["front"]]
    for a in pts:
        assert not any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in pts)
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


EDGE_CASES = {
    # name: (builder, panels drawn as figures, text the page must contain)
    "one_trial": (_one_trial, {"front_latency", "front_size", "front_3d", "ablation", "curves"},
                  ["Nothing was searched", "no no-KD baseline", "Only the cifar stem"]),
    "no_completed": (_no_completed, {"curves"}, ["No trial completed"]),
    "one_objective": (_one_objective, {"best_only", "parcoords", "ablation", "stem",
                                       "kd_vs_baseline", "curves"},
                      ["accuracy is the only objective", "needs both latency and size"]),
    "no_baseline": (_no_baseline, ALL_PANELS - {"kd_vs_baseline"}, ["no no-KD baseline"]),
    "size_only_no_epochs": (_size_only_no_epochs, {"front_size", "parcoords", "ablation", "stem",
                                                   "kd_vs_baseline"},
                            ["No latency was measured", "no learning curves"]),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_render(tmp_path, case):
    build, figures, texts = EDGE_CASES[case]
    run = build(tmp_path)
    out = tmp_path / "out" / "dash.html"
    assert write_dashboard(run, out, png=False) == out
    text = out.read_text()
    assert figure_keys(text) == figures
    assert meta_count(text) == len(figures)
    for snippet in texts:
        assert snippet in text, snippet
    report = json.loads((out.parent / "report.json").read_text())  # strict JSON, no NaN
    assert report["png"]["written"] is False
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
        assert report["front_objectives"] == ["max test_acc"] and len(report["front"]) == 1


def test_several_runs_and_gpu(tmp_path):
    a = make_fake_run(tmp_path, "a", students=("resnet18",), seeds=(0,), n_errored=0)
    b = make_fake_run(tmp_path, "b", students=("resnet18",), seeds=(1,), gpu=True, rng_seed=2)
    out = write_dashboard([a, b], tmp_path / "both.html", png=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["front_objectives"] == ["max test_acc", "min latency_ms_b1_gpu"]
    assert report["device"] == "cuda NVIDIA H100 80GB HBM3"
    assert "NVIDIA H100" in out.read_text()
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
