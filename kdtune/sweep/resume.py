"""--resume: a sweep continues from the last snapshot, on this machine or another.

Ray Tune snapshots the experiment (trial states and checkpoints, the searcher's state, our
callback's state, which carries the ASHA rungs and the epochs of running trials) into ray/
after every epoch a trial reports, and once more on Ctrl+C; ray-snapshot.pkl keeps a whole copy
of the last one, since a kill can leave Tune's files torn or mixed. A resumed sweep continues
from that snapshot: finished trials are kept, unfinished ones continue from their last epoch
checkpoint, errored ones are rerun from scratch (as new trials), the searcher and the rungs go
on where they were. trials.parquet and epochs.parquet are reconciled with the snapshot when the
resumed run starts (ResultsWriter), so every planned trial ends up in trials.parquet exactly
once.

Runs written before kdtune.sweep became a package name its classes kdtune.sweep.SeededSearch,
GroupedASHA, ResultsWriter and trainable in their pickles: kdtune.sweep keeps those names as
aliases, so they resume.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import yaml

from ..config import SearchConfig, SweepConfig, TrialConfig
from ..errors import KDTuneError
from ..storage import RunStore
from ..teacher import teacher_key
from ._ray import ray, tune
from .plan import teacher_configs
from .writer import SNAPSHOT, SNAPSHOT_FILES


def first_difference(a, b, prefix=""):
    """Dotted key of the first difference between two nested dicts, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


# Free-form mappings of a sweep.yaml: compared whole, never filled in key by key
_LEAVES = ("search.space", "search.objectives")


def defaults() -> dict:
    """Every key's default, shaped as run_sweep writes sweep.yaml."""
    s = SearchConfig()
    return yaml.safe_load(yaml.safe_dump(
        {**TrialConfig().to_dict(), "search": {**s.__dict__, "asha": s.asha.__dict__,
                                               "resources": s.resources.__dict__}}))


def with_defaults(stored: dict, default: dict | None = None, prefix: str = "") -> dict:
    """A stored sweep.yaml with the keys it lacks set to their defaults: a sweep written before
    a key existed (search.max_failures, say) ran as that key's default, so resuming it with
    the default is no difference, and with another value is one."""
    default = defaults() if default is None else default
    out = copy.deepcopy(stored)
    for k, v in default.items():
        if k not in out:
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(out[k], dict) and f"{prefix}{k}" not in _LEAVES:
            out[k] = with_defaults(out[k], v, f"{prefix}{k}.")
    return out


# Where this machine keeps things: a sweep resumed elsewhere (its run folder at a URI) may have
# them somewhere else. The data itself must be the same: checked by `check_same_data`.
MACHINE_LOCAL_KEYS = (("cache_dir",), ("data", "root"))


# Where a sweep's records also go: not what the sweep is. A resumed sweep may log to MLflow
# when the first session did not, or keep its Optuna study in another database (the searcher's
# snapshot rebuilds what that one lacks: kdtune.sweep.space.SeededSearch.reconcile).
SIDE_KEYS = (("search", "log_to"), ("search", "optuna_storage"))


def portable(resolved: dict) -> dict:
    out = copy.deepcopy(resolved)
    for path in MACHINE_LOCAL_KEYS + SIDE_KEYS:
        d = out
        for k in path[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(path[-1], None)
    return out


def check_same_data(sw: SweepConfig, base: dict, split, run_dir: Path) -> None:
    """A resumed sweep trains on the data it started with: the teachers it would prepare now
    (keyed by the data's content, kdtune.teacher.teacher_key) are those it prepared then."""
    path = run_dir / "teachers.json"
    if not path.is_file():
        return  # killed before its teachers were ready: nothing was trained on any data yet
    then = {m["key"] for m in json.loads(path.read_text())}
    now = {teacher_key(cfg, split) for cfg in teacher_configs(sw, base)}
    if now != then:
        raise KDTuneError(f"--resume: the data at data.root={base['data'].get('root')} "
                          f"({split.label}) is not the data this sweep started with; point "
                          "data.root at the same data")


def restore_snapshot(store: RunStore) -> None:
    """Put the last whole snapshot ResultsWriter saved back in place of Tune's files, which a
    kill may have left torn or mixed (see writer.ResultsWriter._write_snapshot)."""
    path = store.local / SNAPSHOT
    if not path.is_file():
        return
    try:
        files = pickle.loads(path.read_bytes())["files"]
    except Exception:  # noqa: BLE001 - it is renamed into place whole; unreadable: leave Tune's
        return
    ours = max(n for n in files if n.startswith("experiment_state-"))
    theirs = store.ray_glob("experiment_state-*.json")
    if theirs and theirs[-1] > ours:
        return  # Tune's files are of a later session than ours (ours was not written): keep
    for pattern in SNAPSHOT_FILES + ("callback-states-*.pkl",):
        for old in store.ray_glob(pattern):
            if old not in files:
                store.ray_delete(old)
    for name, data in files.items():
        store.ray_write(name, data)


def recreate_missing_checkpoints(store: RunStore) -> None:
    """Tune registers a trial's new checkpoint, deletes the one before and only then writes the
    snapshot that names the new one: a kill in between leaves a snapshot naming a deleted
    checkpoint, and Tune refuses to restore that trial ("does not exist on storage anymore").
    An empty folder in its place lets it restore; the trial, finding no state in it, starts
    over (see `trainable`). Best effort: reads Tune's own state format."""
    try:
        from ray.tune.utils.serialization import _loads_with_cloudpickle

        states = store.ray_glob("experiment_state-*.json")
        if not states:
            return
        for _, meta in _loads_with_cloudpickle(store.ray_read_text(states[-1]))["trial_data"]:
            manager = _loads_with_cloudpickle(meta).get("checkpoint_manager")
            latest = getattr(manager, "latest_checkpoint_result", None)
            if latest is None or latest.checkpoint is None:
                continue
            old = Path(latest.checkpoint.path)
            rel = f"{old.parent.name}/{old.name}"  # the run folder may have moved
            if store.ray_is_dir(old.parent.name) and not store.ray_exists(rel):
                store.ray_mkdir(rel)
                print(f"--resume: the last checkpoint of {old.parent.name.split('_')[1]} was "
                      "lost when the sweep was killed; that trial starts over", flush=True)
    except Exception:  # noqa: BLE001 - Tune's format changed: restore without the repair
        pass


def restore_tuner(store: RunStore, fn, run_config, searcher, scheduler):
    """Tuner.restore brings back the trials, the searcher (its saved state) and the tuner.pkl
    copies of the callbacks and scheduler. Those copies are frozen at the sweep's start, so the
    live ones of this process (this run folder, this code version, this verbosity) are put in
    their place; their state comes from the snapshot through ResultsWriter.set_state."""
    restore_snapshot(store)
    recreate_missing_checkpoints(store)
    tuner = tune.Tuner.restore(store.ray_path, trainable=fn, resume_unfinished=True,
                               resume_errored=False, restart_errored=True,
                               storage_filesystem=store.ray_storage()[1])
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_run_config") or \
            not hasattr(internal, "_tune_config"):
        raise KDTuneError(f"--resume: Ray {ray.__version__}'s Tuner has no _run_config/"
                          "_tune_config to re-attach the sweep's callbacks to; kdtune's resume "
                          "needs updating for this Ray version")
    internal._run_config.callbacks = run_config.callbacks
    internal._run_config.verbose = run_config.verbose
    internal._tune_config.search_alg = searcher  # Tune restores its state from the snapshot
    if scheduler is not None:
        internal._tune_config.scheduler = scheduler
    return tuner


