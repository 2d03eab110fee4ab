"""Ray, imported once for the whole sweep package, with the environment it reads at import and
start-up set first (a value the user exported wins):

* trials keep the driver's working directory (config paths are made absolute anyway);
* the old-style output, the one `verbose` can silence;
* nothing tries to reach the network (usage stats, uv).

Tune's own per-trial loggers (result.json, progress.csv, TensorBoard events) stay on, beside
kdtune's Parquet: they are what `ray.tune.ExperimentAnalysis(RUN/ray)` and
`tensorboard --logdir RUN/ray` read.

Every Ray-facing module of kdtune.sweep imports `ray` and `tune` from here, so these settings
are in place whichever of them is imported first. Planning (kdtune.sweep.plan, and so
`kdtune validate`) never imports this module.
"""

import os

for _key, _value in (("RAY_CHDIR_TO_TRIAL_DIR", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                     ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402
from ray import tune  # noqa: E402

__all__ = ["ray", "tune"]
