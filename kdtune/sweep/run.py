"""`kdtune sweep`: the run itself. Plans the sweep, starts or joins Ray, checks the cluster's
nodes, prepares each distinct teacher once, runs the trials through Ray Tune (Optuna suggests,
GroupedASHA stops, ResultsWriter records), measures the finished students' latency alone, and
writes the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from ..config import LOGIT_METHODS, load_sweep_config, redact_url, sweep_config
from ..data import load_split
from ..errors import KDTuneError
from ..export import resolve as resolve_onnx
from ..storage import RAY_DIR, RunStore
from ..teacher import teacher_key
from ..trial import provenance, resolve_cache_mode
from ._ray import ray, tune
from .asha import make_scheduler
from .nodes import (alive_nodes, check_cluster, check_gpu_assignment, check_trial_fits,
                    local_versions, measure_task_options, runtime_env, teacher_task_options,
                    torch_build)
from .plan import (
    METHOD_KEY,
    check_methods,
    max_epochs,
    n_trials,
    resolve_paths,
    skip_note,
    teacher_configs,
    trial_cfg,
)
from .remote import measure_jobs, prepare_one, trainable
from .resume import check_same_data, first_difference, portable, restore_tuner, with_defaults
from .space import OPTUNA_DB, make_searcher, optuna_space
from .trackers import check_trackers, log_measured, make_trackers
from .writer import SNAPSHOT, ResultsWriter, fmt_t, write_json, write_parquet


@contextlib.contextmanager
def _working_dir(path: Path | None):
    old = os.getcwd()
    if path is not None:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# Each trial keeps its last checkpoints; Tune forces a whole experiment snapshot (trial
# table, searcher, our callback state) whenever a trial has written this many since the last
# one, so that a snapshot never names a deleted checkpoint.
CHECKPOINT_CONFIG = {"num_to_keep": 1}


def _get(ref):
    """ray.get, with a KDTuneError raised in a worker (a node check) re-raised as the one line
    it is, not as Ray's wrapped traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, KDTuneError):
            raise KDTuneError(str(e.cause)) from None
        raise


def measure_all(run_dir: Path, base: dict, cpu_threads: int, use_gpu: bool, nodes: list[dict],
                expected: dict, in_driver: bool = False, split=None, onnx: bool = False) -> None:
    """Latency of every completed student, one at a time on an otherwise idle machine: the
    GPU when there is one, and the CPU with a fixed thread count. Runs as one Ray task so a
    cluster measures on a worker node's GPU, not the head's CPU; `in_driver` (a CPU-only
    machine that is the whole cluster) measures in this process, idle now that the trials are
    done, instead of starting a worker and its torch import for it.

    `onnx` (measure.onnx, resolved): every completed student is also exported to ONNX fp32
    and INT8 and measured in onnxruntime on the same CPU: latency once per network, like the
    PyTorch latency; sizes and INT8 accuracy on `split` (the sweep's Split, or its object ref
    for the Ray task) per student, since their weights differ."""
    path = run_dir / "trials.parquet"
    df = pd.read_parquet(path)
    todo = df[(df["status"] == "completed") & df["checkpoint"].notna()]
    if todo.empty:
        return
    # One measurement per deployed network: students with the same architecture signature
    # (arch, stem, input size, layer widths; unstructured pruning keeps the unpruned one) run
    # the same kernels, so timing each separately would only turn timing noise into made-up
    # differences between them. The shared measurement's p10..p90 is the spread a difference
    # must exceed.
    jobs, members = {}, {}
    for _, r in todo.iterrows():
        cfg = trial_cfg(base, {k: r[k] for k in ("student.arch", "student.stem", "data.resize",
                                                 "train.precision", "train.channels_last")
                               if k in r})
        sig = r.get("arch_signature")
        key = (f"{sig}|{cfg.train.precision}|cl={cfg.train.channels_last}"
               if isinstance(sig, str) and sig else str(r["trial_id"]))
        members.setdefault(key, []).append(r["trial_id"])
        # the run's own copy: the column may name a URI, or a folder the run was moved from
        state = (run_dir / "checkpoints" / f"{r['trial_id']}.pt").read_bytes()
        if key in jobs:
            if onnx:
                jobs[key]["members"][r["trial_id"]] = state
            continue
        jobs[key] = {"key": key, "trial_id": r["trial_id"], "arch": cfg.student.arch,
                     "stem": cfg.student.stem, "state": state,
                     "input_size": cfg.data.resize or 32, "warmup": cfg.measure.warmup,
                     "runs": cfg.measure.runs, "batch": cfg.measure.throughput_batch,
                     "precision": cfg.train.precision,
                     "channels_last": cfg.train.channels_last,
                     "onnx": onnx, "members": {r["trial_id"]: state} if onnx else {}}
    jobs = list(jobs.values())
    what = f"{len(jobs)} distinct networks ({len(todo)} completed students)"
    if onnx:
        print(f"exporting the {len(todo)} completed students to ONNX (fp32 and INT8), each "
              "INT8 calibrated on training images and scored on val and test; onnxruntime "
              f"latency once per network, CPU with {cpu_threads} thread(s)", flush=True)
    if in_driver:
        import torch

        threads = torch.get_num_threads()
        print(f"measuring latency of {what}, one at a time (CPU with "
              f"{cpu_threads} thread(s))", flush=True)
        try:
            measured = measure_jobs(jobs, cpu_threads, split=split)
        finally:
            torch.set_num_threads(threads)
    else:
        opts = measure_task_options(nodes, use_gpu, cpu_threads)
        print(f"measuring latency of {what}, one at a time "
              f"({'GPU and ' if use_gpu else ''}CPU with {opts['num_cpus']} thread(s))",
              flush=True)
        task = ray.remote(measure_jobs).options(**opts)
        measured = _get(task.remote(jobs, opts["num_cpus"], expected, split))
    for key, row in measured.items():
        per_trial = row.pop("per_trial", {})
        row = {**row, "latency_shared_by": len(members[key])}
        for k, v in row.items():
            if k not in df.columns:
                df[k] = None
            df.loc[df["trial_id"].isin(members[key]), k] = v
        for trial_id, values in per_trial.items():
            for k, v in values.items():
                if k not in df.columns:
                    df[k] = float("nan")
                df.loc[df["trial_id"] == trial_id, k] = v
    for col in ("latency_ms_b1_gpu", "latency_ms_b1_gpu_p10", "latency_ms_b1_gpu_p90",
                "throughput_ips_gpu"):
        if col not in df.columns:
            df[col] = float("nan")
    write_parquet(df, path)


def _throttled(period: float):
    """A log function that prints at most one line per `period` seconds."""
    last = [time.time()]

    def log(msg):
        if time.time() - last[0] >= period:
            last[0] = time.time()
            print(msg, flush=True)
    return log


def _print_teacher(m: dict) -> None:
    how = "cache hit" if m["cache_hit"] else f"trained in {m['train_s']:.0f}s"
    where = f" on {m['node']}" if m.get("node") else ""
    name = m.get("name") or f"{m['arch']}/{m['stem']}"  # teachers.json before ensembles
    print(f"teacher {name}: {how}{where}, val {m['val_acc']:.1%}, test "
          f"{m['test_acc']:.1%}" + (f", view cache {m['views_build_s']:.0f}s"
                                    if m["view_cache"] else ""), flush=True)


def _keep_here(ref, meta: dict):
    """A teacher prepared on another node, copied into this (the driver's) node's object
    store; the task's own copy is freed with its ref.

    Node loss: an object lives in the object store of the node that made it. Were that node
    lost, Ray would rebuild the teacher by re-running its task (lineage reconstruction), which
    needs a node's worth of CPUs (a GPU on a GPU cluster); but the trials waiting for the
    teacher in ray.get hold theirs in Tune's placement groups, which a blocked actor does not
    give back, and with reuse_actors they never let go between trials: once such trials hold
    every CPU of the surviving nodes the rebuild never starts and the sweep hangs (seen:
    tests/test_node_loss.py). The driver's node lives as long as the sweep, so a teacher kept
    here is never lost and never rebuilt, whatever node dies, on any hardware."""
    here = ray.get_runtime_context().get_node_id()[:8]
    if f"({here})" in str(meta.get("node")):  # prepared on this node (nodes.node_label)
        return ref
    return ray.put(_get(ref))


def _views_readable(sw, base: dict, logit_methods: list[str]) -> bool:
    """Whether any KD trial of the space can read a view cache: a logit method from a teacher
    with no ViT, for a student trained without Cutout (kdtune.distill.teacher_mode)."""
    from ..distill import teacher_mode

    archs = list(sw.space["student.arch"].values) if "student.arch" in sw.space \
        else [sw.base.student.arch]
    for t in teacher_configs(sw, base):
        for arch in archs:
            for m in logit_methods:
                cfg = trial_cfg(base, {"student.arch": arch, METHOD_KEY: m, "kd.alpha": 0.5})
                cfg.teacher = t.teacher
                if teacher_mode(cfg, "views") == "views":
                    return True
    return False


def prepare_teachers(sw, base: dict, split, split_ref, want_views: bool, use_gpu: bool,
                     run_dir: Path, nodes: list[dict], expected: dict, in_driver: bool = False,
                     verbose: bool = False) -> dict:
    """Each distinct teacher once, before any trial, into the object store (teacher key ->
    ref). Ray tasks, in parallel: one per free GPU, or spread over the nodes of a CPU cluster
    (nodes.teacher_task_options). `in_driver` (a CPU-only machine that is the whole cluster)
    prepares them in this process, which has torch loaded already, one after the other with
    all its CPUs."""
    cfgs = {}
    for cfg in teacher_configs(sw, base):
        cfgs.setdefault(teacher_key(cfg, split), cfg)
    names = ", ".join(c.teacher.name() for c in cfgs.values())
    metas, out = {}, {}
    t0 = time.time()
    if in_driver:
        cpus = max(1, int(nodes[0]["Resources"].get("CPU", 1)))
        print(f"preparing {len(cfgs)} teacher(s) once for the whole sweep: {names}", flush=True)
        for k, c in cfgs.items():
            metas[k], t = prepare_one(c.to_dict(), split, want_views, cpus,
                                      log=print if verbose else _throttled(15))
            out[k] = ray.put(t)
            _print_teacher(metas[k])
    else:
        opts = teacher_task_options(nodes, use_gpu)
        how = "one GPU each" if use_gpu else \
            f"{opts['num_cpus']} CPU(s) each, spread over {len(nodes)} node(s)"
        print(f"preparing {len(cfgs)} teacher(s) once for the whole sweep, in parallel "
              f"({how}): {names}", flush=True)
        task = ray.remote(prepare_one).options(num_returns=2, **opts)
        refs = {k: task.remote(c.to_dict(), split_ref, want_views, opts["num_cpus"], expected)
                for k, c in cfgs.items()}
        pending = {r[0]: k for k, r in refs.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=15)
            for r in ready:
                k = pending.pop(r)
                metas[k] = _get(r)
                _print_teacher(metas[k])
            if pending and not ready:
                print(f"preparing teachers: {len(metas)}/{len(refs)} done, "
                      f"{time.time() - t0:.0f}s", flush=True)
        out = {k: _keep_here(r[1], metas[k]) for k, r in refs.items()}
    if len(cfgs) > 1 and not in_driver:  # what preparing them in parallel bought
        own = sum(m["finished_at"] - m["started_at"] for m in metas.values())
        print(f"teachers ready in {time.time() - t0:.0f}s (their own times add up to "
              f"{own:.0f}s)", flush=True)
    write_json([metas[k] for k in cfgs], run_dir / "teachers.json")
    return out


def run_sweep(space_path, overrides=None, resume=False, address=None, verbose=False,
              out=None) -> Path:
    # a path (the command line), or its content as a dict (kdtune.run_sweep in a notebook)
    sw = sweep_config(space_path, overrides, default_name="sweep") if isinstance(
        space_path, dict) else load_sweep_config(space_path, overrides)
    optuna_space(sw, notes=True)  # what config checks let through but Optuna refuses
    check_methods(sw)  # a kd.method x architecture pair that cannot work: now, not mid-sweep
    check_trackers(sw)  # search.log_to: [mlflow] without mlflow (or wandb) is said now
    # measure.onnx: true without onnxruntime is said now, not after the trials
    onnx = sw.search.measure_after and resolve_onnx(sw.base.measure.onnx)
    base = resolve_paths(sw.base.to_dict())
    store = RunStore(out or sw.search.storage or Path("results") / sw.search.name,
                     base["cache_dir"])
    held = store.exists("sweep.yaml")
    if held and not resume:
        raise KDTuneError(f"{store} already holds a sweep; add --resume to continue it, or "
                          "--out / search.name for a new one")
    if resume and not held:
        raise KDTuneError(f"--resume: no sweep to resume in {store}")
    if resume:
        store.pull()  # a URI run: its files, as the bucket holds them, into a fresh local copy
    else:
        store.prepare_local()
    run_dir = store.local
    resolved = {**base, "search": {**sw.search.__dict__,
                                   "asha": sw.search.asha.__dict__,
                                   "resources": sw.search.resources.__dict__}}
    resolved = yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False))
    # sweep.yaml is shared and uploaded: a database password stays out of it (a resumed sweep
    # takes the URL from its own config, never from sweep.yaml)
    resolved["search"]["optuna_storage"] = redact_url(sw.search.optuna_storage)
    if resume:
        try:
            stored = yaml.safe_load((run_dir / "sweep.yaml").read_text())
        except yaml.YAMLError:
            stored = None
        diff = first_difference(portable(resolved), portable(with_defaults(stored))) \
            if isinstance(stored, dict) else "sweep.yaml"
        if diff:
            raise KDTuneError(f"--resume: {diff} differs from the sweep in {store} (its "
                              "sweep.yaml); resume with the same file and --set overrides")
    # The Optuna study, opened before anything runs: a database that cannot be reached, or
    # that holds another sweep's study of this name, is said now, not after the teachers.
    # Default: SQLite beside the run (for a run at a URI: its working copy, uploaded after
    # each ask and tell; --resume pulls it back, wherever the working copy now lives).
    default_db = sw.search.optuna_storage is None
    optuna_url = sw.search.optuna_storage or f"sqlite:///{(run_dir / OPTUNA_DB).resolve()}"
    searcher = make_searcher(
        sw, optuna_url, resume,
        on_change=(lambda: store.push(OPTUNA_DB, soft=True)) if default_db and store.remote
        else None)
    if not resume:
        (run_dir / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        store.push("sweep.yaml")

    if not verbose:
        # Tune's own error output is a traceback per errored trial and a list at the end; the
        # progress line names each errored trial instead (-v shows Tune's).
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    t_start = time.time()
    split = load_split(sw.base.data, base["cache_dir"])
    if resume:
        check_same_data(sw, base, split, run_dir)
    # On a cluster the code travels with the job (runtime_env): a worker node needs only the
    # libraries, which check_cluster compares with this machine's. Ray also puts the driver's
    # working directory first on every worker's sys.path; started from a checkout, workers
    # would import that path's kdtune (stale, or another version, on a node that has a copy
    # there) instead of the shipped one, so ray.init runs from the run folder.
    with _working_dir(run_dir if address else None):
        # "local": without --address, a Ray of its own, even where `ray start` (or a test's
        # cluster) already runs on this machine, which Ray would otherwise join silently
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=verbose,
                 runtime_env=runtime_env() if address else None,
                 logging_level=logging.INFO if verbose else logging.ERROR,
                 configure_logging=True, ignore_reinit_error=True)
    if not verbose:
        for name in ("ray", "ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)  # "Trials did not complete"
    try:
        expected = local_versions()
        nodes = alive_nodes()
        if address:
            check_cluster(expected, None if store.remote else str(run_dir))
        else:  # this machine is the cluster: only the logical-GPU switch can be wrong here
            import torch

            check_gpu_assignment([], torch.cuda.is_available(), "this machine", torch_build())
        gpus = ray.cluster_resources().get("GPU", 0)
        r = sw.search.resources
        gpu_frac = r.gpu if r.gpu is not None else (1.0 if gpus else 0.0)
        check_trial_fits(nodes, r.cpu, gpu_frac)
        planned = n_trials(sw)
        max_t = sw.search.asha.max_t or max_epochs(sw, base)
        # The cache for the trials of logit methods (logit, dkd); feature methods run their
        # teacher online whatever this says (kdtune.distill.teacher_mode), per trial.
        methods = list(sw.space[METHOD_KEY].values) if METHOD_KEY in sw.space \
            else [sw.base.kd.method]
        logit_methods = [m for m in methods if m in LOGIT_METHODS]
        probe = trial_cfg(base, {"kd.method": (logit_methods or methods)[0]})
        if probe.kd.alpha == 0:
            probe.kd.alpha = 0.5
        # only the trials that can read the cache count toward paying for it: the logit
        # methods' share of the searched methods (every trial when none is searched)
        cache_epochs = planned * sw.base.train.epochs * len(logit_methods) / len(methods)
        cache_mode = "views" if logit_methods and sw.base.teacher.cache == "auto" and \
            cache_epochs > 162 else resolve_cache_mode(probe, cache_epochs)
        if cache_mode == "views" and not _views_readable(sw, base, logit_methods):
            cache_mode = "none"  # every KD trial runs its teacher online: build no cache
        how = {"views": "view cache", "none": "online teacher"}
        cache_note = how[cache_mode] if len(logit_methods) == len(methods) else (
            "online teacher (feature methods)" if not logit_methods else
            f"{how[cache_mode]} for {', '.join(logit_methods)}, online teacher for "
            + ", ".join(m for m in methods if m not in LOGIT_METHODS))
        print(f"sweep '{sw.search.name}': {planned} trials ({len(sw.search.seeds)} seed(s)), "
              f"up to {max_t} epochs each, {sw.search.max_concurrent} at a time, "
              f"{gpu_frac:g} GPU + {r.cpu:g} CPU per trial; data {split.label} "
              f"({len(split.y_train)} train / {len(split.y_val)} val / {len(split.y_test)} "
              f"test); teacher cache: {cache_note} -> {store}" + (
                  f" (working copy {run_dir})" if store.remote else ""), flush=True)
        if skip_note(sw):
            print(f"note: {skip_note(sw)}", flush=True)
        if searcher.study is not None:
            shown = redact_url(optuna_url)
            print(f"optuna study '{sw.search.name}': {shown} (browse it: optuna-dashboard "
                  f"{shown})", flush=True)
        split_ref = ray.put(split)
        # A CPU-only machine that is the whole cluster: teachers and the final latency
        # measurement run in this process (torch is loaded here already) rather than in
        # workers started for them.
        in_driver = not address and not gpus
        if address:
            sizes = sorted((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0))
                           for n in nodes)  # Ray lists nodes in no fixed order
            print(f"cluster: {len(nodes)} node(s) ("
                  + "; ".join(f"{c:g} CPU + {g:g} GPU" for c, g in sizes)
                  + "), versions checked, kdtune shipped to them", flush=True)
        teachers = prepare_teachers(sw, base, split, split_ref, cache_mode == "views",
                                    gpus > 0, run_dir, nodes, expected, in_driver=in_driver,
                                    verbose=verbose)
        store.push("teachers.json")
        fn = tune.with_parameters(trainable, split=split_ref, teachers=teachers, base=base,
                                  cache_mode=cache_mode, threads=max(1, int(r.cpu)),
                                  expected=expected,
                                  checkpoint_every_s=sw.search.checkpoint_every_s)
        fn = tune.with_resources(fn, {"cpu": r.cpu, "gpu": gpu_frac})
        prov = provenance()
        scheduler = make_scheduler(sw, max_t, base) if sw.search.scheduler == "asha" else None
        storage_path, storage_fs = store.ray_storage()
        restore = resume and tune.Tuner.can_restore(store.ray_path,
                                                    storage_filesystem=storage_fs)
        writer = ResultsWriter(store, base, sw, prov, split.label, planned, max_t,
                               scheduler=scheduler, resume=resume)
        # search.log_to: after the writer, which copies a completed trial's checkpoint first
        trackers = make_trackers(sw, store, base, prov)
        run_config = tune.RunConfig(
            name=RAY_DIR, storage_path=storage_path, storage_filesystem=storage_fs,
            verbose=2 if verbose else 0,
            callbacks=[writer, *trackers],
            checkpoint_config=tune.CheckpointConfig(**CHECKPOINT_CONFIG),
            # a trial whose node is lost (or that raises) restarts from its last epoch
            # checkpoint, on any node, up to max_failures times (ResultsWriter.on_trial_recover)
            failure_config=tune.FailureConfig(max_failures=sw.search.max_failures))
        if restore:
            print(f"resuming the sweep in {store}", flush=True)
            tuner = restore_tuner(store, fn, run_config, searcher, scheduler)
        else:
            if resume:
                print(f"--resume: no trial had started in {store}; starting them now",
                      flush=True)
                store.ray_remove()
                store.delete(SNAPSHOT)
            # reuse_actors: a trial runs in the worker process of a finished one (reset_config
            # of Tune's function trainable), so a sweep starts max_concurrent processes, and
            # pays Python + torch start-up that often, instead of once per trial.
            tuner = tune.Tuner(fn, run_config=run_config, tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=planned,
                max_concurrent_trials=sw.search.max_concurrent, reuse_actors=True))
        sigint = signal.getsignal(signal.SIGINT)
        try:
            tuner.fit()
        finally:  # Tune leaves its Ctrl+C handler installed when no Ctrl+C came
            signal.signal(signal.SIGINT, sigint)
        writer.flush()
        searcher.settle(writer.rows.values(), writer.epochs.values())
        if writer.unfinished or not searcher.done():
            again = " with the same --set options" if overrides else ""
            how = (f"kdtune.run_sweep(space, overrides, out={str(store)!r}, resume=True)"
                   if isinstance(space_path, dict) else
                   f"kdtune sweep {space_path} --out {store} --resume{again}")
            print(f"sweep interrupted: {len(writer.rows)} of {planned} trials finished; state "
                  f"saved in {store.url(RAY_DIR)}. Continue with: {how}", file=sys.stderr,
                  flush=True)
            raise KeyboardInterrupt
        if len(writer.rows) < planned:
            print(f"note: the searcher ran out of configs after {len(writer.rows)} of "
                  f"{planned} planned trials", flush=True)
        if sw.search.measure_after:
            measure_all(run_dir, base, sw.base.measure.cpu_threads, gpus > 0, alive_nodes(),
                        expected, in_driver=in_driver,
                        split=split if in_driver else split_ref, onnx=onnx)
        log_measured(trackers, run_dir)  # the measured latency and sizes into the trackers too
        # with any upload that failed during the sweep: raises
        store.push("trials.parquet", *([OPTUNA_DB] if default_db else []))
    finally:
        ray.shutdown()
    df = pd.read_parquet(run_dir / "trials.parquet")
    _summary(df, time.time() - t_start, store, writer.session_done)
    try:
        from ..dashboard import OUTPUT_FILES, write_dashboard

        html = write_dashboard([run_dir], None, sources=[str(store)])
        store.push(*OUTPUT_FILES)
        print(f"dashboard: {store.url(html.name) if store.remote else html}", flush=True)
    except KDTuneError as e:
        print(f"dashboard not written: {e}", file=sys.stderr)
    return run_dir




def _summary(df: pd.DataFrame, wall: float, store: RunStore, session: set) -> None:
    if df.empty:
        print(f"sweep finished in {fmt_t(wall)} with no trial recorded", flush=True)
        return
    st = df["status"].value_counts().to_dict()
    done = df[df["status"] == "completed"]
    ran = df[df["trial_id"].isin(session)]  # a resumed sweep: only what ran in this process
    trial_sum = float(pd.to_numeric(ran["wall_s"], errors="coerce").fillna(0).sum())
    lines = [f"sweep finished in {fmt_t(wall)} ({wall:.0f}s; the trials' own times add up to "
             f"{trial_sum:.0f}s, x{trial_sum / max(wall, 1e-9):.2f} parallel); "
             + ", ".join(f"{k} {v}" for k, v in st.items())]
    if not done.empty:
        b = done.loc[done["val_acc"].idxmax()]
        method = b.get("kd.method", "logit")
        kd = ("no KD" if b["kd.alpha"] == 0 else
              f"{method} T={b['kd.temperature']:.3g}" + (
                  "" if method == "dkd" else f" alpha={b['kd.alpha']:.3g}"))
        student = b["student.arch"] if b.get("student_family") == "vit" else \
            f"{b['student.arch']}/{b['student.stem']}"
        teacher = f" from {b['teacher_name']}" if b["kd.alpha"] and b.get("teacher_name") \
            and df["teacher_name"].nunique() > 1 else ""
        lines.append(f"best by val_acc: {b['trial_id']} {student} {kd}{teacher} "
                     f"prune={b['prune.ratio']:.2f}: val "
                     f"{b['val_acc']:.2%}, test {b['test_acc']:.2%}")
    lines.append(f"results: {store.url('trials.parquet')}")
    print("\n".join(lines), flush=True)
