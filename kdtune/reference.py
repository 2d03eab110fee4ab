"""docs/reference.md: the YAML reference, generated from kdtune/config.py's dataclasses.

Every key of a trial config and of a sweep's ``search:`` section, with its type, default,
allowed values or range and its ``doc=``, read from the fields themselves (``config._f``), so the
page cannot drift from what ``kdtune validate`` accepts. Regenerate with ``make docs`` or
``python -m kdtune.reference docs/reference.md``; tests/test_docs.py fails when the committed
page differs from what this module writes.

This module imports config, never the other way round.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path

import yaml

from . import config as C

#: where the page lives in the repository
REFERENCE_PATH = Path("docs") / "reference.md"

# one line above each section's table (what the section is for, where to read more)
SECTION_INTRO = {
    "data": "What the trials train and are measured on. The validation split is held out of "
            "train, class-balanced and fixed by `split_seed`; test is only used for the final "
            "report.",
    "teacher": "The model the student learns from, trained once and cached (content-addressed: "
               "every trial and sweep with the same teacher keys and data shares it). "
               "README: [Teacher cache](../README.md#teacher-cache-why-views), "
               "[ViTs, recipes and ensembles](../README.md#vits-recipes-and-ensembles).",
    "student": "The model a trial trains, prunes and measures.",
    "train": "How the student is trained. SGD is Nesterov; keys left at null follow the "
             "student's family recipe ([below](#recipes-what-null-means)).",
    "kd": "What the student learns from the teacher. README: "
          "[Distillation methods](../README.md#distillation-methods-kdmethod).",
    "prune": "L1 pruning after training, then `finetune_epochs` of fine-tuning.",
    "measure": "Latency, throughput and the ONNX exports of the trained student.",
    "": "Keys at the top level of the file, beside the sections.",
    "search": "The keys of a sweep's `search:` section. README: "
              "[Sweep YAML](../README.md#sweep-yaml).",
    "search.asha": "The early stopper (`search.scheduler: asha`), one per student arch x stem x "
                   "input size.",
    "search.resources": "What each trial asks of Ray.",
    "search.space.KEY": "One entry of `search.space`: `KEY` is a dotted trial key (`kd.alpha`, "
                        "`prune.ratio`, `student.arch`, ...) or `stem`.",
}

_TYPES = {int: "int", float: "float", str: "string", bool: "bool", list: "list",
          dict: "mapping"}


def _codes(values) -> str:
    return ", ".join(_code(C._yaml_str(v)) for v in values)


def _extra_allowed() -> dict[str, str]:
    """What is checked outside the field's own choices/bounds (config._check_trial,
    config.sweep_config), for the keys that have such a check."""
    return {
        "device": "`auto`, `cpu`, `cuda`, `cuda:N`",
        "search.space": "keys: dotted trial keys and `stem`",
        "search.objectives": "keys: " + _codes(C.OBJECTIVE_METRICS) + "; values: "
                             + _codes(C.MODES),
        "search.seeds": "integers `>= 0`, no duplicates, at least one",
        "search.storage": "a path, or a URI: " + ", ".join(_code(s + "://")
                                                          for s in C.STORAGE_SCHEMES),
        "search.optuna_storage": "a URL of " + _codes(C.OPTUNA_STORAGE_SCHEMES),
        "search.log_to": "each of " + _codes(C.LOG_TARGETS) + ", no duplicates",
        "teacher.ensemble": "arch names or mappings of [member keys](#teacher-ensembles)",
    }


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def fields_of(cls, prefix: str = "") -> list[tuple[str, dataclasses.Field, typing.Any]]:
    """(dotted key, field, type) of every leaf key of ``cls``, sections recursed into."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if _is_section(hints[f.name]):
            out += fields_of(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f, hints[f.name]))
    return out


def all_keys() -> list[str]:
    """Every dotted key the reference documents: the trial keys, then search.*."""
    return ([k for k, _, _ in fields_of(C.TrialConfig)]
            + [k for k, _, _ in fields_of(C.SearchConfig, "search.")]
            + [k for k, _, _ in fields_of(C.ParamSpec, "search.space.KEY.")])


def type_text(tp) -> str:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) \
        else (tp,)
    names = [_TYPES.get(typing.get_origin(a) or a, getattr(a, "__name__", str(a)))
             for a in args if a is not type(None)]
    if type(None) in args:
        names.append("null")
    return " or ".join(names)


def default_value(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _code(text: str) -> str:
    return f"`{text}`"


def default_text(f: dataclasses.Field) -> str:
    value = default_value(f)
    if isinstance(value, (list, dict)):
        return _code(yaml.safe_dump(value, default_flow_style=True).strip())
    return _code(C._yaml_str(value))


def allowed_text(meta) -> str:
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    parts = []
    if choices is not None:
        parts.append(", ".join(_code(C._yaml_str(c)) for c in choices))
    parts += [_code(b) for b in C._bounds(meta)]
    return " and ".join(parts)


def _cell(text: str) -> str:
    # a table cell: a pipe would end the cell, and <word> would be taken for an HTML tag
    return text.replace("|", "\\|").replace("<", "&lt;")


def table(rows: list[tuple[str, dataclasses.Field, typing.Any]]) -> str:
    extra = _extra_allowed()
    lines = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    for key, f, tp in rows:
        allowed = " and ".join(filter(None, [allowed_text(f.metadata), extra.get(key)]))
        lines.append("| " + " | ".join([
            _code(key), type_text(tp), default_text(f), allowed or "—",
            _cell(f.metadata.get("doc", ""))]) + " |")
    return "\n".join(lines)


def _section(title: str, key: str, rows) -> list[str]:
    return [f"### {title}", "", SECTION_INTRO[key], "", table(rows), ""]


def _recipes() -> list[str]:
    lines = ["| family | `optimizer` | `lr` | `weight_decay` | `warmup_epochs` | `cutout` |",
             "|---|---|---|---|---|---|"]
    for family, r in C.RECIPES.items():
        share, most = r["warmup"]
        warm = "0" if not share else f"{100 * share:g} % of the epochs, at most {most:g}"
        lines.append(f"| {family} | {r['optimizer']} | {r['lr']:g} | {r['weight_decay']:g} | "
                     f"{warm} | {r['cutout']} |")
    return lines


def reference_markdown() -> str:
    """The whole of docs/reference.md."""
    trial = fields_of(C.TrialConfig)
    search = fields_of(C.SearchConfig, "search.")
    sections = [f.name for f in dataclasses.fields(C.TrialConfig)
                if _is_section(typing.get_type_hints(C.TrialConfig)[f.name])]
    out = [
        "# Config reference",
        "",
        "<!-- Generated from kdtune/config.py by kdtune/reference.py: do not edit by hand. "
        "Regenerate with `make docs`; tests/test_docs.py fails when this file is out of "
        "date. -->",
        "",
        "Every key of a trial config (`kdtune trial`, `kdtune validate`) and of a sweep's "
        "`search:` section (`kdtune sweep`), generated from the dataclasses in "
        "[`kdtune/config.py`](../kdtune/config.py) that check them. A config is YAML, read "
        "with `yaml.safe_load`: unknown keys, wrong types and values out of range are refused "
        "with one line naming the key and what is allowed (exit code 2). Any key can be set "
        "from the command line with `--set key=value`, the value read as YAML "
        "(`--set kd.alpha=0.5`, `--set search.seeds=[0,1]`). `null` is YAML's \"unset\"; "
        "`type` says which values a key takes.",
        "",
        "A sweep file is a trial config, the base every trial starts from, plus a `search:` "
        "section. Examples: [`sweeps/trial.yaml`](../sweeps/trial.yaml) (a trial), "
        "[`sweeps/smoke.yaml`](../sweeps/smoke.yaml) and "
        "[`sweeps/kd_prune.yaml`](../sweeps/kd_prune.yaml) (sweeps). The "
        "[tutorial](tutorial.md) runs one.",
        "",
        "- [Trial config](#trial-config): "
        + ", ".join(f"[`{s}`](#{s})" for s in sections) + ", [top level](#top-level), "
        "[recipes](#recipes-what-null-means), [teacher ensembles](#teacher-ensembles)",
        "- [Sweep: `search:`](#sweep-search): [`search`](#search), "
        "[`search.asha`](#searchasha), [`search.resources`](#searchresources), "
        "[`search.space.KEY`](#searchspacekey), [objectives](#objectives), "
        "[where things go](#where-things-go)",
        "",
        "## Trial config",
        "",
    ]
    for s in sections:
        out += _section(f"`{s}`", s, [r for r in trial if r[0].startswith(s + ".")])
    out += _section("Top level", "", [r for r in trial if "." not in r[0]])
    out += [
        "### Recipes: what null means",
        "",
        "`train.lr`, `train.weight_decay`, `train.optimizer`, `train.warmup_epochs`, "
        "`train.cutout` and the teacher's `lr`, `weight_decay`, `optimizer`, `warmup_epochs` "
        "left at null take the value of the model's family (`kdtune.config.RECIPES`); a value "
        "you write wins. Each trial records the values it used. The warm-up is linear, then "
        "the cosine decay (none under `schedule: onecycle`).",
        "",
        *_recipes(),
        "",
        "### Teacher ensembles",
        "",
        "`teacher.ensemble` is a list of teachers, each an arch name or a mapping of these "
        "keys (`arch` required; the others default to the `teacher:` section's): "
        + ", ".join(_code(k) for k in C.MEMBER_KEYS)
        + ". A list of one teacher is that teacher alone.",
        "",
        "## Sweep: `search:`",
        "",
    ]
    out += _section("`search`", "search",
                    [r for r in search if r[0].count(".") == 1])
    out += _section("`search.asha`", "search.asha",
                    [r for r in search if r[0].startswith("search.asha.")])
    out += _section("`search.resources`", "search.resources",
                    [r for r in search if r[0].startswith("search.resources.")])
    out += _section("`search.space.KEY`", "search.space.KEY",
                    fields_of(C.ParamSpec, "search.space.KEY."))
    out += [
        "A searched key takes the place of the base config's value in every trial. "
        f"`{C.STEM_SHORTHAND}` sets `teacher.stem` and `student.stem` together. Keys that "
        "change the teacher (`teacher.*` except `teacher.cache`) may only take listed values "
        "(`choice` or `grid`): each distinct teacher is prepared once, before any trial. "
        "`data.*` and `seed` are never searched (the data is fixed for a sweep; seeds go in "
        "`search.seeds`). Every value the sampler can pick is checked like a hand-written "
        "config before the sweep starts.",
        "",
        "### Objectives",
        "",
        "`search.objectives` maps metrics to "
        + " or ".join(_code(m) for m in C.MODES)
        + "; the first is the one ASHA judges. Allowed metrics (reported by every epoch, so "
        "cheap to compute): " + ", ".join(_code(m) for m in C.OBJECTIVE_METRICS) + ".",
        "",
        "### Where things go",
        "",
        "- `search.storage` (or `kdtune sweep --out`): a local path or a URI with one of "
        + ", ".join(_code(s + "://") for s in C.STORAGE_SCHEMES) + ".",
        "- `search.optuna_storage`: a database URL of "
        + ", ".join(_code(s) for s in C.OPTUNA_STORAGE_SCHEMES)
        + " (e.g. `sqlite:///path/optuna.db`, `postgresql://user@host/db`).",
        "- `search.log_to`: a list of " + ", ".join(_code(t) for t in C.LOG_TARGETS)
        + " (README: [MLflow](../README.md#mlflow), "
        "[Weights & Biases](../README.md#weights--biases)).",
        "",
    ]
    return "\n".join(out)


def write_reference(path: str | Path = REFERENCE_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reference_markdown(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(write_reference(argv[0] if argv else REFERENCE_PATH))
    return 0


if __name__ == "__main__":
    sys.exit(main())
