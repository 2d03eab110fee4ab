"""Sweeps: a YAML search space run as Ray Tune trials, chosen by Optuna, stopped early by ASHA.

One module per concern; only the ones that schedule work import Ray:

    plan.py     what a sweep implies: trials, teachers, baselines, epochs (no Ray, no torch)
    space.py    the search space as Optuna distributions; SeededSearch, the Tune searcher
    asha.py     GroupedASHA, one ASHA per student architecture
    writer.py   ResultsWriter, the Tune callback writing the tables and the snapshot copy
    resume.py   --resume: restoring Tune's experiment and reconciling our tables with it
    nodes.py    a cluster's nodes: per-node resources, version and GPU checks, shipped code
    remote.py   the work that runs on workers: trainable, teacher preparation, latency (and
                the ONNX export and onnxruntime measurement of measure.onnx)
    run.py      run_sweep, `kdtune sweep` itself

Layout of a run folder:

    sweep.yaml        the resolved sweep (base config + search section), as run
    teachers.json     each distinct teacher, prepared once before any trial (node, times)
    trials.parquet    a row per finished trial: status, flattened config, metrics, provenance
    epochs.parquet    per-epoch history of every trial
    asha_rungs.json   ASHA's rungs per cost group, arch|stem|input size (what each stop was judged against)
    checkpoints/      final student state_dicts of completed trials
    export/           what `kdtune export RUN --trial ID` writes: ID[_int8].onnx + .card.json
    ray/              Ray Tune's experiment state (what --resume restores)
    ray-snapshot.pkl  the last whole copy of it (a kill can tear Tune's own files)
    dashboard.html    written at the end (kdtune.dashboard)

The run folder may be a URI (s3://, gs://, ...): see kdtune.storage for who writes what where.
"""

from .plan import (BASELINE_KEY, GROUP_KEY, SEED_KEY, baseline_configs, expand, max_epochs,
                   n_trials, resolve_paths, teacher_configs, trial_cfg)

__all__ = ["BASELINE_KEY", "GROUP_KEY", "SEED_KEY", "baseline_configs", "expand", "max_epochs",
           "n_trials", "resolve_paths", "teacher_configs", "trial_cfg"]

# Runs written before kdtune.sweep was a package pickled these by their old names (Tune's
# tuner.pkl and snapshots). Resolved on first use so that planning still imports no Ray.
_MOVED = {"SeededSearch": "space", "GroupedASHA": "asha", "ResultsWriter": "writer",
          "trainable": "remote"}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
