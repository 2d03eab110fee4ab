"""GroupedASHA: asynchronous successive halving with one set of rungs per cost group (student
architecture, stem, input resolution: plan.ASHA_GROUP_BY).
"""

from __future__ import annotations

import copy

from ..config import SweepConfig
from ._ray import ray  # noqa: F401  (first: sets Ray's environment before Ray is imported)
from .plan import ASHA_GROUP_BY, BASELINE_KEY, cost_group, trial_cfg

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402  isort: skip

# Tune's decision strings (ray.tune.schedulers.TrialScheduler).
CONTINUE, STOP = "CONTINUE", "STOP"


class GroupedASHA(FIFOScheduler):
    """One ASHA per cost group. A global rung compares a resnet8 against a mobilenet at the
    same epoch and stops exactly the small, fast models a Pareto front needs; so would a rung
    shared by a standard-stem student (fast, a 16x smaller feature map) and its CIFAR-stem
    twin. Rungs per architecture x stem x input resolution judge like against like. Baselines are never stopped, so KD vs no-KD
    compares equal budgets.

    Tune does not snapshot schedulers; `state()`/`load_state()` let ResultsWriter carry the rungs
    and stop decisions in its own snapshot, so a resumed sweep judges against the same rungs and
    repeats a stop that was decided before the snapshot."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float, base: dict | None = None):
        super().__init__()
        self.base = base or {}  # the sweep's base config: a trial's group needs its defaults
        self.asha_metric, self.asha_mode = metric, mode
        self.max_t = max_t
        self.grace_period = min(grace_period, max_t)
        self.reduction_factor = reduction_factor
        self.groups: dict = {}  # cost group -> ASHAScheduler
        self.group_of: dict[str, str] = {}
        self.decisions: list[dict] = []
        self.stopped: dict[str, int] = {}  # trial id -> epoch it was stopped at

    def set_search_properties(self, metric, mode, **spec):
        return True

    def _group(self, g: str):
        if g not in self.groups:
            self.groups[g] = ASHAScheduler(
                time_attr="epoch", metric=self.asha_metric, mode=self.asha_mode,
                max_t=self.max_t, grace_period=self.grace_period,
                reduction_factor=self.reduction_factor, stop_last_trials=False)
        return self.groups[g]

    def on_trial_add(self, controller, trial):
        if trial.config.get(BASELINE_KEY):
            return
        g = cost_group(trial_cfg(self.base, trial.config))
        self.group_of[trial.trial_id] = g
        self._group(g).on_trial_add(controller, trial)

    def _sub(self, trial):
        g = self.group_of.get(trial.trial_id)
        return self.groups[g] if g else None

    def on_trial_result(self, controller, trial, result):
        s = self._sub(trial)
        if s is None or trial.trial_id not in s._trial_info:
            return CONTINUE
        stop_at = self.stopped.get(trial.trial_id)
        if stop_at is not None and (result.get("epoch") or 0) >= stop_at:
            return STOP  # decided before a resume: decide the same again
        action = s.on_trial_result(controller, trial, result)
        if action == STOP and not result.get("final"):
            self.stopped[trial.trial_id] = int(result.get("epoch") or 0)
            self.decisions.append({"trial_id": trial.trial_id,
                                   "group": self.group_of[trial.trial_id],
                                   "epoch": result.get("epoch"),
                                   self.asha_metric: result.get(self.asha_metric)})
        return action

    def on_trial_complete(self, controller, trial, result):
        s = self._sub(trial)
        if s is not None and trial.trial_id in s._trial_info:
            s.on_trial_complete(controller, trial, result)

    def on_trial_error(self, controller, trial):
        self.on_trial_remove(controller, trial)

    def on_trial_remove(self, controller, trial):
        s = self._sub(trial)
        if s is not None:
            s._trial_info.pop(trial.trial_id, None)

    def group_by(self) -> list[str]:
        return list(ASHA_GROUP_BY)

    def rungs(self) -> dict:
        return {g: {str(m): sorted(rec) for b in s._brackets for m, rec in b._rungs}
                for g, s in self.groups.items()}

    def state(self) -> dict:
        return {"groups": {g: [[[m, dict(rec)] for m, rec in b._rungs] for b in s._brackets]
                           for g, s in self.groups.items()},
                "decisions": copy.deepcopy(self.decisions)}

    def load_state(self, state: dict) -> None:
        for g, brackets in state["groups"].items():
            s = self._group(g)
            for b, rungs in zip(s._brackets, brackets):
                b._rungs = [(m, dict(rec)) for m, rec in rungs]
        self.decisions = list(state["decisions"])
        self.stopped = {d["trial_id"]: int(d["epoch"] or 0) for d in self.decisions}

    def forget(self, keep: set) -> None:
        """Drop what is recorded for trials the resumed experiment no longer has (errored
        trials are rerun as new trials)."""
        for s in self.groups.values():
            for b in s._brackets:
                for _, rec in b._rungs:
                    for tid in [t for t in rec if t not in keep]:
                        del rec[tid]
        self.decisions = [d for d in self.decisions if d["trial_id"] in keep]
        self.stopped = {t: e for t, e in self.stopped.items() if t in keep}

    def debug_string(self):
        return "GroupedASHA: " + ", ".join(f"{g}" for g in self.groups)


def make_scheduler(sw: SweepConfig, max_t: int, base: dict) -> GroupedASHA:
    """ASHA judges the first objective (val_acc in a multi-objective sweep: a rung compares
    trials of one group, whose FLOPs and size are equal until pruning)."""
    metric = next(iter(sw.search.objectives))
    a = sw.search.asha
    return GroupedASHA(metric, sw.search.objectives[metric], max_t, a.grace_period,
                       a.reduction_factor, base)


