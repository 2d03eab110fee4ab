"""`kdtune` command line: trial, sweep, validate, dashboard, export, bench.

User mistakes (KDTuneError) end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .api import jsonable as _jsonable
from .errors import KDTuneError


def cmd_trial(args) -> int:
    from .api import run_trial
    from .config import parse_overrides

    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731  progress -> stderr
    # stdout carries epoch lines and, last, the JSON; setup chatter (teacher, cache) goes to
    # stderr so `kdtune trial ... | tail -1 | jq` works.
    result = run_trial(args.config, dict(parse_overrides(args.set)), out=args.out,
                       log=lambda m: print(m, flush=True) if m.startswith(("epoch", "resum"))
                       else err(m))
    result = {k: v for k, v in result.items() if k not in ("model", "history")}
    print(json.dumps(_jsonable(result), sort_keys=True), flush=True)
    return 0


def cmd_validate(args) -> int:
    from .config import load_sweep_config, load_trial_config, read_yaml

    raw = read_yaml(args.config)
    if "search" in raw:
        from .sweep.plan import (baseline_configs, check_methods, n_trials, skip_note,
                                 teacher_configs)

        sw = load_sweep_config(args.config)
        check_methods(sw)
        fixed = baseline_configs(sw)
        no_kd = sum(b["kd.alpha"] == 0 for b in fixed)
        print(f"{args.config}: ok (sweep '{sw.search.name}': {len(sw.space)} searched keys, "
              f"{n_trials(sw)} trials incl. {len(fixed) * len(sw.search.seeds)} fixed baseline "
              f"runs ({no_kd} no-KD at alpha = 0 and {len(fixed) - no_kd} KD twin(s), per "
              f"seed), {len(sw.search.seeds)} seed(s), "
              f"{len(teacher_configs(sw, sw.base.to_dict()))} teacher(s))")
        if skip_note(sw):
            print(f"note: {skip_note(sw)}")
    else:
        from .distill import check_method

        check_method(load_trial_config(args.config))
        print(f"{args.config}: ok (trial)")
    return 0


def cmd_sweep(args) -> int:
    from .config import parse_overrides
    from .sweep.run import run_sweep

    run_sweep(args.space, overrides=parse_overrides(args.set), resume=args.resume,
              address=args.address, verbose=args.verbose, out=args.out)
    return 0


def cmd_dashboard(args) -> int:
    from .config import TrialConfig
    from .dashboard import OUTPUT_FILES, write_dashboard
    from .storage import RunStore

    # a run at a URI is read through a copy of its tables of the dashboard's own (a sweep may
    # still be writing it); with no --out the dashboard's files go back into the bucket
    stores = [RunStore(r, args.cache_dir or TrialConfig().cache_dir, purpose="dashboards")
              for r in args.runs]
    for st in stores:
        st.pull(top_level_only=True)
    path = write_dashboard([st.local for st in stores], Path(args.out) if args.out else None,
                           sources=[str(st) for st in stores])
    if args.out is None and stores[0].remote:
        stores[0].push(*OUTPUT_FILES)
        print(stores[0].url(path.name))
    else:
        print(path)
    return 0


def cmd_export(args) -> int:
    from .export import export_student

    export_student(args.source, trial=args.trial, fmt=args.format, int8=args.int8,
                   out=args.out, data_root=args.data_root)
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    run_bench(args)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="kdtune", description="Knowledge distillation + pruning "
                                "sweeps on CIFAR-10.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("trial", help="run one KD + pruning trial")
    t.add_argument("config")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set kd.alpha=0.5 (repeatable)")
    t.add_argument("--out", help="output folder (default results/trials/<config name>); "
                   "an unfinished trial there is resumed")
    t.set_defaults(fn=cmd_trial)

    s = sub.add_parser("sweep", help="run a Ray Tune + Optuna + ASHA sweep")
    s.add_argument("space", nargs="?", default="sweeps/smoke.yaml")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a base or search key, e.g. --set search.num_samples=4")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    s.add_argument("--address", default=None, help="Ray cluster address (or RAY_ADDRESS)")
    s.add_argument("--out", default=None, help="run folder: a path or a URI such as "
                   "s3://bucket/run (default search.storage, else results/<name>)")
    s.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs")
    s.set_defaults(fn=cmd_sweep)

    v = sub.add_parser("validate", help="check a trial config or sweep YAML without running it")
    v.add_argument("config")
    v.set_defaults(fn=cmd_validate)

    d = sub.add_parser("dashboard", help="write the HTML dashboard of one or more sweeps, with "
                       "report.json, results.csv and PNGs of its key charts")
    d.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="sweep run folders: local paths or URIs (s3://, gs://, file://)")
    d.add_argument("--out", default=None, help="HTML file (default RUN_DIR/dashboard.html)")
    d.add_argument("--cache-dir", default=None,
                   help="where a URI run's working copy goes (default ~/.cache/kdtune)")
    d.set_defaults(fn=cmd_dashboard)

    e = sub.add_parser("export", help="write a trained student as one ONNX file (fp32 or "
                       "INT8) with a JSON card beside it")
    e.add_argument("source", metavar="CHECKPOINT_OR_RUN",
                   help="a trial folder (kdtune trial --out), a sweep run folder (with --trial), "
                        "or a student checkpoint inside either")
    e.add_argument("--trial", default=None, metavar="ID", help="the trial of a sweep run")
    # checked by export_student, not argparse choices: a wrong value is then one line
    e.add_argument("--format", default="onnx", help="file format (onnx)")
    e.add_argument("--int8", action="store_true", help="static INT8 quantization calibrated on "
                   "the training split (onnxruntime)")
    e.add_argument("--out", default=None, metavar="FILE", help="the .onnx file (default: "
                   "student[_int8].onnx in a trial folder, RUN/export/ID[_int8].onnx for a "
                   "run); the card goes beside it as NAME.card.json")
    e.add_argument("--data-root", default=None, metavar="DIR",
                   help="data.root, where the data now lives if not where the trial found it "
                        "(the same data: its statistics are the preprocessing)")
    e.set_defaults(fn=cmd_export)

    b = sub.add_parser("bench", help="measure kdtune's speed-ups against the notebook way")
    b.add_argument("--data", default=None, help="data.root of an imagefolder (default: the "
                   "shared CIFAR-10 JPEG copy if present, else synthetic)")
    b.add_argument("--device", default="auto")
    b.add_argument("--train-subset", type=int, default=None,
                   help="training images (default 500 on CPU, 20000 on GPU)")
    b.add_argument("--out", default=None, help="write the table as JSON here too")
    b.set_defaults(fn=cmd_bench)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except KDTuneError as e:
        print(f"kdtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a sweep prints its own exact --resume command; a trial resumes from its --out folder
        hint = "" if args.cmd == "sweep" else "; rerun the same command to resume"
        print(f"kdtune: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
