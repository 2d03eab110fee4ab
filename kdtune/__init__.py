"""kdtune: knowledge distillation + pruning sweeps on CIFAR-10.

The notebook API (kdtune/api.py): ``run_sweep``, ``run_trial``, ``load_results``,
``pareto_front``; ``kdtune.dashboard.figures(run)`` gives the dashboard's Plotly figures.
Submodules load on first use, so ``import kdtune`` pulls neither torch nor Ray.
"""

import importlib

__version__ = "0.1.0"

_API = ("run_sweep", "run_trial", "load_results", "pareto_front")
__all__ = [*_API, "dashboard"]


def __getattr__(name):
    # PEP 562: kdtune.run_sweep and kdtune.dashboard resolve when first touched
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in ("dashboard", "results", "config", "models", "export", "api"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kdtune' has no attribute {name!r}")
