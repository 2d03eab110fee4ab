"""kdtune from Python and notebooks: the command line's work as functions that return tables.

    import kdtune                                     # no torch, no Ray: those load on first use
    df = kdtune.run_sweep("sweeps/smoke.yaml", {"search.seeds": [0, 1]}, out="results/nb")
    df = kdtune.load_results("results/nb")           # trials.parquet, one row per trial
    front = kdtune.pareto_front(df[df.status == "completed"], "val_acc", "latency_ms_b1_cpu")
    figs = kdtune.dashboard.figures("results/nb")     # the dashboard's Plotly figures, by panel
    result = kdtune.run_trial("sweeps/trial_cpu.yaml", {"kd.alpha": 0.5})

Each function does what its command does (`kdtune sweep`, `kdtune trial`, `kdtune dashboard`),
so a study started in a notebook resumes from the shell and the other way round. User mistakes
raise :class:`~kdtune.errors.KDTuneError` with the same one-line message the command prints.
`import kdtune` stays light (2 ms measured, no torch or Ray) because these functions import the heavy
stages inside their bodies: a notebook that only reads results never pays for torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import KDTuneError

#: run_sweep's keyword options (what `kdtune sweep` takes besides the space and --set)
SWEEP_OPTIONS = ("resume", "out", "address", "verbose")


def _overrides(overrides: dict | None, what: str) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    if not isinstance(overrides, dict):
        raise KDTuneError(f"{what}: overrides are a dict of dotted keys, e.g. "
                          f"{{'kd.alpha': 0.5}}; got {type(overrides).__name__}")
    return list(overrides.items())


def run_sweep(space: str | Path | dict, overrides: dict | None = None, **options):
    """Run a sweep (`kdtune sweep`) and return its trials.parquet as a DataFrame.

    ``space``: a sweep YAML path, or the same content as a dict (it needs a ``search:``
    section). ``overrides``: dotted keys to set, as ``--set`` does: ``{"search.seeds": [0, 1],
    "kd.temperature": 2}``. ``options``: ``out`` (run folder or URI), ``resume`` (continue an
    interrupted sweep), ``address`` (a Ray cluster), ``verbose`` (Ray's own logs). The
    DataFrame's ``attrs["run"]`` names the run folder. Ctrl+C (the notebook's interrupt)
    stops it with its state saved: run it again with ``resume=True``."""
    bad = [k for k in options if k not in SWEEP_OPTIONS]
    if bad:
        raise KDTuneError(f"run_sweep: unknown option {bad[0]!r}; allowed: "
                          + ", ".join(SWEEP_OPTIONS))
    if isinstance(space, dict) and "search" not in space:
        raise KDTuneError("run_sweep: the space dict has no 'search' section; a single "
                          "configuration is kdtune.run_trial(config)")
    from .sweep.run import run_sweep as _run

    run_dir = _run(space, overrides=_overrides(overrides, "run_sweep"), **options)
    df = load_results(run_dir)
    df.attrs["run"] = str(options.get("out") or run_dir)
    return df


def run_trial(config, overrides: dict | None = None, out: str | Path | None = None,
              log=print) -> dict:
    """Train, prune, fine-tune and measure one student (`kdtune trial`); returns its metrics
    (``val_acc``, ``test_acc``, latency, sizes, ...) with ``history`` (one dict per epoch),
    ``model`` (the trained student, a torch module) and ``checkpoint`` (its weights file).

    ``config``: a trial YAML path, its content as a dict, or a TrialConfig. ``out``: the
    trial folder (default results/trials/<config name>); an unfinished trial there is
    resumed, as the command does. ``result.json`` is written there too."""
    from .config import TrialConfig, checked_trial_config, load_trial_config
    from .train import resolve_device
    from .trial import CKPT, STUDENT, provenance
    from .trial import run_trial as _run

    ov = _overrides(overrides, "run_trial")
    if isinstance(config, TrialConfig):
        cfg, name = checked_trial_config(config.to_dict(), ov), "trial"
    elif isinstance(config, dict):
        if "search" in config:
            raise KDTuneError("run_trial: the config has a 'search' section; a sweep is "
                              "kdtune.run_sweep(space)")
        cfg, name = checked_trial_config(config, ov), "trial"
    else:
        cfg, name = load_trial_config(config, ov), Path(config).stem
    folder = Path(out or Path("results") / "trials" / name)
    folder.mkdir(parents=True, exist_ok=True)
    result = _run(cfg, checkpoint_dir=folder, resume_from=folder, log=log)
    result.update(provenance(resolve_device(cfg.device)), seed=cfg.seed,
                  checkpoint=str(folder / STUDENT))
    _write_result(folder, result, cfg)
    (folder / CKPT).unlink(missing_ok=True)  # finished: a rerun starts fresh
    return result


def jsonable(v):
    """`v` with NaN and infinities as None (JSON has neither), through dicts and lists."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def _write_result(folder: Path, result: dict, cfg) -> None:
    from .storage import atomic_path

    metrics = {k: v for k, v in result.items() if k not in ("model", "history")}
    with atomic_path(folder / "result.json") as tmp:
        tmp.write_text(json.dumps(jsonable({"metrics": metrics, "config": cfg.to_dict(),
                                            "history": result.get("history")}),
                                  indent=1, sort_keys=True))


def load_results(*runs: str | Path, cache_dir: str | Path | None = None):
    """trials.parquet of one or more sweep runs (folders or URIs) as one DataFrame, a row per
    trial, with ``run``, ``run_dir`` and ``size_mb_min`` added (kdtune.results.load_runs)."""
    from .results import load_runs
    from .storage import local_run

    if not runs:
        raise KDTuneError("load_results: name at least one run folder")
    return load_runs(*(local_run(r, cache_dir) for r in runs))


def pareto_front(df, maximize: str | Sequence[str] = (), minimize: str | Sequence[str] = ()):
    """The rows of ``df`` no other row beats on every objective (2 or 3 of them), cheapest
    first. Rows with a missing value in an objective are never on it. Choose on validation
    accuracy (``val_acc``) and read test accuracy off the rows you chose: a front chosen on
    test accuracy overstates it."""
    from .results import pareto_front as mask

    maximize = [maximize] if isinstance(maximize, str) else list(maximize)
    minimize = [minimize] if isinstance(minimize, str) else list(minimize)
    try:
        on = mask(df, maximize, minimize)
    except ValueError as e:
        raise KDTuneError(f"pareto_front: {e}") from None
    return df[on].sort_values(minimize + maximize, ascending=[True] * len(minimize)
                              + [False] * len(maximize))
