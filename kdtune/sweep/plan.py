"""Planning a sweep from its validated config: which trials, teachers and baselines it implies,
and how long a trial can run. Pure functions of the config: no Ray, no torch, so `kdtune
validate` plans a sweep in a fraction of a second.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

from ..config import (STAGE_METHODS, STEM_SHORTHAND, SweepConfig, TrialConfig,
                      ensemble_refusal, trial_config)

SEED_KEY = "seed"
BASELINE_KEY = "is_baseline"
GROUP_KEY = "student.arch"
METHOD_KEY = "kd.method"
ENSEMBLE_KEY = "teacher.ensemble"
# What sets a trial's cost per epoch before its first rung: ASHA compares trials at the same
# epoch, so only trials that paid the same per epoch may be judged against each other. A
# standard-stem student works on a 16x smaller map than its CIFAR-stem twin; a resize to 224 px
# costs ~49x. (Pruning comes after the rungs a trial is usually stopped at.)
ASHA_GROUP_BY = ("student.arch", "student.stem", "data.resize")


def resolve_paths(raw: dict) -> dict:
    """Ray runs trials in other working directories: make paths absolute up front. A
    `~/...` cache_dir stays as written: each node resolves it against its own home (a worker's
    home is not the driver's), see kdtune.teacher.prepare_teacher."""
    raw = copy.deepcopy(raw)
    if raw["data"].get("root"):
        raw["data"]["root"] = str(Path(raw["data"]["root"]).expanduser().resolve())
    if not str(raw["cache_dir"]).startswith("~"):
        raw["cache_dir"] = str(Path(raw["cache_dir"]).resolve())
    return raw


def encode_choice(value):
    """A searched value as Optuna and Ray can hold it: a list (a teacher.ensemble) as its
    JSON text, which `expand` reads back."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def expand(flat_config: dict) -> list[tuple[str, object]]:
    """A trial's searched values as config overrides; `stem` sets both stems."""
    out = []
    for k, v in flat_config.items():
        if k.startswith("__") or k in (BASELINE_KEY,):
            continue
        if k == ENSEMBLE_KEY and isinstance(v, str):
            out.append((k, json.loads(v)))
        elif k == STEM_SHORTHAND:
            out += [("teacher.stem", v), ("student.stem", v)]
        else:
            out.append((k, v))
    return out


def trial_cfg(base: dict, flat_config: dict) -> TrialConfig:
    return trial_config(base, expand(flat_config))


def skipped(sw: SweepConfig, flat_config: dict) -> str | None:
    """Why the sweep skips this trial (SweepConfig.skip: a feature kd.method with a teacher
    ensemble), or None. Judged on the trial's whole config, so a baseline twin, which names
    only the keys it sets, is caught like a searched point."""
    if not sw.skip:
        return None
    cfg = trial_cfg(sw.base.to_dict(), flat_config)
    return ensemble_refusal(cfg.kd.method, cfg.teacher) if cfg.kd.alpha > 0 else None


def skip_note(sw: SweepConfig) -> str | None:
    """One line naming what the sweep skips, for its start and `kdtune validate`."""
    if not sw.skip:
        return None
    pairs = "; ".join(", ".join(f"{k}={_short(v)}" for k, v in combo.items())
                      for combo, _ in sw.skip)
    return (f"skipping {len(sw.skip)} combination(s) that cannot run ({pairs}): "
            f"{sw.skip[0][1].split(':', 1)[-1].strip()}")


def _short(value) -> str:
    if isinstance(value, list):  # a teacher.ensemble: its archs
        return "[" + " + ".join(m["arch"] if isinstance(m, dict) else str(m)
                                for m in value) + "]"
    return str(value)


def cost_group(cfg: TrialConfig) -> str:
    """The ASHA group of a trial: its values of ASHA_GROUP_BY, e.g. "resnet20|cifar|32px"."""
    return f"{cfg.student.arch}|{cfg.student.stem}|{cfg.data.resize or 32}px"


def _values(spec) -> list:
    return list(spec.values) if spec.values is not None else []


def teacher_configs(sw: SweepConfig, base: dict) -> list[TrialConfig]:
    """Every distinct teacher the space implies: the product of the listed values of the keys
    that change a teacher (config checks refuse continuous ranges for them)."""
    keys = [k for k in sw.space if k.startswith("teacher.") or k == STEM_SHORTHAND]
    keys = [k for k in keys if k != "teacher.cache"]
    combos = itertools.product(*[_values(sw.space[k]) for k in keys]) if keys else [()]
    points = [dict(zip(keys, combo)) for combo in combos]
    # a KD twin distils from the base teacher section, which the space may not list
    points += [b for b in baseline_configs(sw) if b["kd.alpha"] > 0]
    out = []
    for point in points:
        cfg = trial_cfg(base, point)
        cfg.kd.alpha = max(cfg.kd.alpha, 1e-6)  # teachers are for KD trials
        if all(cfg.teacher != c.teacher for c in out):
            out.append(cfg)
    return out


def baseline_configs(sw: SweepConfig) -> list[dict]:
    """For each student arch x stem the space can produce, fixed runs of the base config, never
    stopped early: alpha = 0 (no KD) and its KD twin (the base alpha; 0.9 if the base has
    none), one twin per method when kd.method is searched. Equal in everything but alpha, seeds included, they are the like-for-like KD vs
    no-KD comparison: a searched KD side against one untuned no-KD run is not."""
    if not sw.search.baseline:
        return []
    arch = _values(sw.space[GROUP_KEY]) if GROUP_KEY in sw.space else [sw.base.student.arch]
    if STEM_SHORTHAND in sw.space:
        stems, stem_key = _values(sw.space[STEM_SHORTHAND]), STEM_SHORTHAND
    elif "student.stem" in sw.space:
        stems, stem_key = _values(sw.space["student.stem"]), "student.stem"
    else:
        stems, stem_key = [sw.base.student.stem], "student.stem"
    twin_alpha = sw.base.kd.alpha or 0.9
    # kd.method searched: a KD twin per method, so each method has its like-for-like no-KD
    # comparison (kd.alpha is inert for dkd; 0 alone switches distillation off)
    methods = _values(sw.space[METHOD_KEY]) if METHOD_KEY in sw.space else [None]
    # A grid that already runs a twin's exact config (a grid over kd.method alone, say) needs
    # no second copy: the grid point pairs with the no-KD run just as well. Under fifo only:
    # ASHA may stop a grid point, never a baseline.
    grid = _grid_configs(sw) if sw.search.sampler == "grid" and sw.search.scheduler == "fifo" \
        else []
    out = []
    for a in arch:
        for s in stems:
            out.append({GROUP_KEY: a, stem_key: s, "kd.alpha": 0.0, BASELINE_KEY: True})
            for m in methods:
                twin = {GROUP_KEY: a, stem_key: s, "kd.alpha": twin_alpha, BASELINE_KEY: True}
                twin = twin if m is None else {**twin, METHOD_KEY: m}
                if skipped(sw, twin):
                    continue
                if not grid or trial_cfg(sw.base.to_dict(), twin) not in grid:
                    out.append(twin)
    return out


def _grid_points(sw: SweepConfig) -> list[dict]:
    keys = list(sw.space)
    points = [dict(zip(keys, combo))
              for combo in itertools.product(*[_values(sw.space[k]) for k in keys])]
    return [p for p in points if not skipped(sw, p)]


def _grid_configs(sw: SweepConfig) -> list[TrialConfig]:
    base = sw.base.to_dict()
    return [trial_cfg(base, p) for p in _grid_points(sw)]


def check_methods(sw: SweepConfig, base: dict | None = None) -> None:
    """kdtune.distill.check_method for every distinct kd.method x student x teacher x stem the
    space can produce, before anything trains (KDTuneError naming the first that cannot work).
    Builds small untrained networks on the CPU, so torch is imported here only when a method
    that reads stage feature maps (fitnets, attention) is in play."""
    methods = _values(sw.space[METHOD_KEY]) if METHOD_KEY in sw.space else [sw.base.kd.method]
    if not set(methods) & set(STAGE_METHODS):  # the only ones check_method can refuse
        return
    from ..distill import check_method

    base = sw.base.to_dict() if base is None else base
    keys = [k for k in (METHOD_KEY, "student.arch", "student.stem", "teacher.arch",
                        "teacher.stem", ENSEMBLE_KEY, STEM_SHORTHAND) if k in sw.space]
    seen = set()
    for combo in itertools.product(*[_values(sw.space[k]) for k in keys]):
        if skipped(sw, dict(zip(keys, combo))):
            continue
        cfg = trial_cfg(base, dict(zip(keys, combo)))
        cfg.kd.alpha = max(cfg.kd.alpha, 1e-6)  # the KD trials of this combination
        what = (cfg.kd.method, cfg.student.arch, cfg.student.stem, cfg.teacher.arch,
                cfg.teacher.stem)
        if what not in seen:
            seen.add(what)
            check_method(cfg)


def n_trials(sw: SweepConfig) -> int:
    seeds = len(sw.search.seeds)
    samples = sw.search.num_samples
    if sw.search.sampler == "grid":
        samples = len(_grid_points(sw))
    return (samples + len(baseline_configs(sw))) * seeds


def max_epochs(sw: SweepConfig, base: dict) -> int:
    """Longest trial the space allows: ASHA's max_t (epochs, fine-tune epochs and prune.ratio
    may be searched; fine-tune epochs only run when something is pruned)."""
    def highest(key, default):
        if key not in sw.space:
            return default
        spec = sw.space[key]
        return max(spec.values) if spec.values else spec.high

    prunes = highest("prune.ratio", sw.base.prune.ratio) > 0
    ft = int(highest("prune.finetune_epochs", sw.base.prune.finetune_epochs)) if prunes else 0
    return int(highest("train.epochs", sw.base.train.epochs)) + ft
