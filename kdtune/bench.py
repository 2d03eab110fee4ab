"""`kdtune bench`: kdtune's speed-ups against the notebook way, measured in one run.

Prints ratios, not absolute targets: both sides of each ratio run in the same process on the
same device, one after the other, so machine load and clock speed cancel out as far as possible.

1. data: images/s of the on-device uint8 crop+flip+normalise path vs torchvision's PIL
   transforms in a DataLoader (the notebook path), same images, same batch size.
2. teacher: student step time with logits read from the view cache vs a teacher forward per
   step, and the break-even point (trials x epochs) of building the cache; and the step time
   of each kd.method (logit and dkd on the cache, fitnets, attention and cosine with their online
   teacher) relative to logit KD on the cache.
3. precision (CUDA only): bf16 autocast + channels_last vs fp32 student steps.
4. bookkeeping: what a sweep trial spends per epoch outside training and validation.
5. pruning: batch-1 latency and batch-256 throughput of resnet20 (CIFAR stem) and
   mobilenet_v3_small, dense vs channel-pruned at 0.3 and 0.5 (and unstructured at 0.5, which
   leaves dense kernels: the row that shows why the study needs channel pruning).
6. ONNX (when onnxruntime is installed): resnet20 (CIFAR stem) and mobilenet_v3_small, each
   trained a few epochs on the bench's data, exported to ONNX fp32 and static INT8
   (kdtune.export, as `kdtune export` and a sweep's measure.onnx write them): onnxruntime
   batch-1 latency on 1 CPU thread, INT8/fp32 ratio, file size, and the INT8 file's test
   accuracy against the fp32 file's. The accuracy change needs trained weights: how trained
   they are (epochs, images, accuracy) is printed with it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import measure
from .config import trial_config
from .data import DeviceData, load_split, num_views
from .distill import Distiller
from .losses import kd_loss
from .models import create_model
from .prune import apply_pruning, prune_channels
from .teacher import Teacher, build_view_cache
from .train import (
    make_optimizer,
    place_model,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    train_step,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_data(split, device, batch: int, n_batches: int) -> dict:
    import torchvision.transforms as TT
    from torch.utils.data import DataLoader, Dataset

    dd = DeviceData(split, device, channels_last=resolve_channels_last("auto", device))

    def ours():
        for i, (_, x, _, _) in enumerate(dd.train_batches(batch, seed=0)):
            if i + 1 == n_batches:
                break
        return x

    tf = TT.Compose([TT.ToPILImage(), TT.RandomCrop(32, padding=4), TT.RandomHorizontalFlip(),
                     TT.ToTensor(), TT.Normalize(split.mean, split.std)])

    class PILSet(Dataset):
        def __len__(self):
            return len(split.y_train)

        def __getitem__(self, i):
            return tf(torch.from_numpy(split.x_train[i])), int(split.y_train[i])

    loader = DataLoader(PILSet(), batch_size=batch, shuffle=True, num_workers=0)

    def notebook():
        for i, (x, y) in enumerate(loader):
            x = x.to(device, non_blocking=True)
            if i + 1 == n_batches:
                break
        return x

    images = batch * n_batches
    t_ours = _time(ours, device, 3)
    t_nb = _time(notebook, device, 3)
    return {"images_per_s_kdtune": images / t_ours, "images_per_s_pil_dataloader":
            images / t_nb, "speedup": t_nb / t_ours}


def bench_teacher(cfg, split, device, steps: int) -> dict:
    # the switches a trial on this device gets by default (train.*: auto)
    bf16 = resolve_precision(cfg.train.precision, device) == "bf16"
    channels_last = resolve_channels_last(cfg.train.channels_last, device)
    dd = DeviceData(split, device, channels_last=channels_last)
    teacher = place_model(create_model(cfg.teacher.arch, split.num_classes, cfg.teacher.stem),
                          device, channels_last).eval()
    student = place_model(create_model(cfg.student.arch, split.num_classes, cfg.student.stem),
                          device, channels_last)
    opt = make_optimizer(student, "sgd", 0.01, 5e-4)
    t0 = time.perf_counter()
    views = build_view_cache(teacher, dd, split.num_classes, log=lambda m: None, bf16=bf16)
    _sync(device)
    build_s = time.perf_counter() - t0
    batches = list(dd.train_batches(cfg.train.batch_size, seed=0))[:steps]

    def run(mode):
        def teacher_logits(idx, x, view):
            if mode == "views":
                return views[idx, view]
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                return teacher(x)

        def go():
            for idx, x, y, view in batches:
                t = teacher_logits(idx, x, view)
                train_step(student, x, lambda s: kd_loss(s, t, y, 4.0, 0.9, 0.05), opt,
                           bf16=bf16)
        return go

    t_views = _time(run("views"), device, 3) / len(batches)
    t_none = _time(run("none"), device, 3) / len(batches)
    per_epoch_teacher_s = (t_none - t_views) * dd.steps_per_epoch(cfg.train.batch_size)
    methods = bench_methods(cfg, Teacher("bench", teacher, 0, 0, 0, views=views), student,
                            batches, device, bf16=bf16, channels_last=channels_last,
                            input_size=dd.input_size)
    return {"methods": methods, "teacher": f"{cfg.teacher.arch}/{cfg.teacher.stem}",
            "student": f"{cfg.student.arch}/{cfg.student.stem}",
            "train_images": dd.n_train, "step_ms_views": 1000 * t_views,
            "step_ms_online_teacher": 1000 * t_none, "speedup": t_none / t_views,
            "view_cache_build_s": build_s, "views": num_views(True),
            "break_even_trial_epochs": build_s / per_epoch_teacher_s
            if per_epoch_teacher_s > 0 else float("inf")}


def bench_methods(cfg, teacher, student, batches, device, *, bf16: bool, channels_last: bool,
                  input_size: int) -> list[dict]:
    """Student step time of each kd.method as a trial runs it (kdtune.distill.Distiller, the
    teacher each method needs), relative to logit KD reading the view cache."""
    rows = []
    for method, mode in (("logit", "views"), ("dkd", "views"), ("logit", "none"),
                         ("fitnets", "none"), ("attention", "none"), ("cosine", "none")):
        raw = cfg.to_dict()
        raw["kd"]["method"] = method
        mcfg = trial_config(raw)
        d = Distiller(mcfg, teacher, mode, device, bf16=bf16, input_size=input_size,
                      channels_last=channels_last)
        d.attach(student)
        opt = make_optimizer(torch.nn.ModuleList([student, *d.extra_modules()]), "sgd", 0.01,
                             5e-4)

        def go(d=d, opt=opt):
            for idx, x, y, view in batches:
                train_step(student, x, lambda s: d.loss(s, idx, x, y, view), opt, bf16=bf16)

        rows.append({"method": method, "teacher": "view cache" if mode == "views" else "online",
                     "step_ms": 1000 * _time(go, device, 3) / len(batches)})
        d.close()
    for r in rows:
        r["vs_logit_views"] = r["step_ms"] / rows[0]["step_ms"]
    return rows


def bench_precision(cfg, split, device, steps: int) -> dict | None:
    if device.type != "cuda":
        return None
    out = {}
    # the two ends of train.precision x train.channels_last, through the trial's own step
    for name, precision, cl in (("fp32", "fp32", False), ("bf16_channels_last", "bf16", True)):
        bf16 = resolve_precision(precision, device) == "bf16"
        channels_last = resolve_channels_last(cl, device)
        dd = DeviceData(split, device, channels_last=channels_last)
        model = place_model(create_model(cfg.student.arch, split.num_classes, cfg.student.stem),
                            device, channels_last)
        opt = make_optimizer(model, "sgd", 0.01, 5e-4)
        batches = list(dd.train_batches(cfg.train.batch_size, seed=0))[:steps]
        ce = lambda logits, y: torch.nn.functional.cross_entropy(logits.float(), y)  # noqa: E731

        def go():
            for _, x, y, _ in batches:
                train_step(model, x, lambda logits: ce(logits, y), opt, bf16=bf16)

        out[f"step_ms_{name}"] = 1000 * _time(go, device, 3) / len(batches)
    out["speedup"] = out["step_ms_fp32"] / out["step_ms_bf16_channels_last"]
    return out


def bench_bookkeeping(data: dict, split, device, batch_size: int) -> list[dict]:
    """Per-epoch bookkeeping of one real Ray Tune trial per student (kdtune.sweep.epoch_cost),
    and what measuring sizes every epoch, as before, added to it. `split`: the bench's data,
    already loaded from `data`."""
    from .sweep.epoch_cost import size_metrics_ms, trial_epoch_cost
    from .sweep.plan import resolve_paths

    rows = []
    for arch in ("resnet20", "mobilenet_v3_small"):
        cfg = trial_config({
            "data": data, "student": {"arch": arch, "stem": "cifar"},
            # 5 + 1 epochs: the median is of the epochs between the two size measurements
            "train": {"epochs": 5, "batch_size": batch_size}, "kd": {"alpha": 0.0},
            "prune": {"ratio": 0.3, "finetune_epochs": 1}, "measure": {"latency": False},
            "device": device.type})
        base = resolve_paths(cfg.to_dict())
        cost = trial_epoch_cost(base, split, threads=torch.get_num_threads())
        sizes = size_metrics_ms(arch, "cifar", split.num_classes, base)
        rows.append({"model": f"{arch}/cifar", **cost, "size_metrics_ms": sizes,
                     "bookkeeping_share": cost["bookkeeping_ms"] / cost["epoch_ms"],
                     "before_ms": cost["bookkeeping_ms"] + sizes,
                     "before_share": (cost["bookkeeping_ms"] + sizes)
                     / (cost["epoch_ms"] + sizes)})
    return rows


def bench_pruning(device, runs: int) -> list[dict]:
    """Dense vs pruned students, timed as the sweep times them (measure.measure_speed: the
    device's default precision and layout; 1 CPU thread, the sweep's measure.cpu_threads
    default). Untrained weights: global scope on trained weights picks other channels, so a
    trained student's widths, and its figures, differ a little at the same ratio."""
    rows = []
    x = torch.zeros(1, 3, 32, 32)
    for arch in ("resnet20", "mobilenet_v3_small"):
        for method, ratio in (("dense", 0.0), ("channel", 0.3), ("channel", 0.5),
                              ("unstructured", 0.5)):
            torch.manual_seed(0)
            model = create_model(arch, 10, "cifar").eval()
            cut = 0.0
            if method == "channel":
                cut = prune_channels(model, ratio, x, "global", round_to=8)
            elif method == "unstructured":
                apply_pruning(model, ratio, "global")
                cut = ratio  # of the weights, not the channels
            m = measure.measure_speed(model, device, batch=256, warmup=10, runs=runs,
                                      threads=1 if device.type == "cpu" else None)
            rows.append({"model": f"{arch}/cifar", "method": method, "ratio": ratio,
                         "cut": cut, "params": measure.count_params(model)["params"],
                         "flops": measure.count_flops(model),
                         **{k: m[k] for k in ("latency_ms_b1", "latency_ms_b1_p10",
                                              "latency_ms_b1_p90", "throughput_ips",
                                              "measure_device", "measure_threads",
                                              "measure_precision")}})
    for r in rows:  # ratios against the dense student measured in this same run
        dense = next(d for d in rows if d["model"] == r["model"] and d["method"] == "dense")
        r["latency_ratio"] = r["latency_ms_b1"] / dense["latency_ms_b1"]
        r["throughput_ratio"] = r["throughput_ips"] / dense["throughput_ips"]
    return rows


def print_pruning(rows: list[dict], label: str) -> None:
    print(f"pruning: batch-1 latency and batch-256 throughput on {label} "
          f"({rows[0]['measure_precision']}, {rows[0]['measure_threads']} thread(s) on CPU)")
    print(f"  {'student':<28}{'pruning':<18}{'removed':>10}{'params':>10}{'MFLOPs':>8}"
          f"{'b1 ms (p10-p90)':>22}{'x dense':>8}{'b256 img/s':>12}{'x dense':>8}")
    for r in rows:
        what = "dense" if r["method"] == "dense" else f"{r['method']} {r['ratio']:.1f}"
        spread = f"{r['latency_ms_b1']:.3f} ({r['latency_ms_b1_p10']:.3f}-" \
                 f"{r['latency_ms_b1_p90']:.3f})"
        unit = {"channel": " of ch", "unstructured": " of wt"}.get(r["method"], "")
        removed = f"{r['cut']:.0%}{unit}"
        print(f"  {r['model']:<28}{what:<18}{removed:>10}{r['params']:>10,}"
              f"{r['flops'] / 1e6:>8.1f}{spread:>22}{r['latency_ratio']:>7.2f}x"
              f"{r['throughput_ips']:>12.0f}{r['throughput_ratio']:>7.2f}x")


def bench_onnx(data: dict, split, device, epochs: int, runs: int,
               archs=("resnet20", "mobilenet_v3_small"), log=lambda m: None) -> dict:
    """fp32 vs static INT8 in onnxruntime (1 CPU thread) of students trained `epochs` epochs
    on the bench's `split` (no KD: kd.alpha 0, so no teacher), test accuracy of both files."""
    import tempfile

    from . import export
    from .trial import run_trial

    rows = []
    prep = export.preprocessing(split.mean, split.std, split.x_train.shape[-1],
                                split.x_train.shape[-1])
    calib = export.preprocess(export.calibration_images(split.x_train,
                                                        export.RECIPE.calibration_images), prep)
    size = split.x_train.shape[-1]
    with tempfile.TemporaryDirectory(prefix="kdtune-bench-onnx-") as tmp:
        for arch in archs:
            cfg = trial_config({"data": data, "student": {"arch": arch, "stem": "cifar"},
                                # small CPU batches: more steps for the same images, which
                                # mobilenet_v3_small needs to leave chance at all
                                "train": {"epochs": epochs, "batch_size": 64 if device.type
                                          == "cpu" else 512},
                                "kd": {"alpha": 0.0}, "measure": {"latency": False},
                                "device": device.type})
            t0 = time.perf_counter()
            trained = run_trial(cfg, split=split, log=log)
            train_s = time.perf_counter() - t0
            model = trained["model"].cpu()
            fp32 = export.export_fp32(model, Path(tmp) / f"{arch}.onnx", size)
            int8 = export.quantize_int8(fp32, Path(tmp) / f"{arch}_int8.onnx", calib)
            out = {"model": f"{arch}/cifar", "epochs": epochs, "train_images": len(split.y_train),
                   "classes": split.num_classes,
                   "train_s": train_s, "pytorch_test_acc": trained["test_acc"],
                   "test_images": len(split.y_test)}
            top = {}
            for tag, path in (("fp32", fp32), ("int8", int8)):
                top[tag] = export.predict(export.session(path), split.x_test, prep)
                m = export.time_session(export.session(path, 1), size, warmup=20, runs=runs)
                out.update({f"{k}_{tag}": v for k, v in m.items()})
                out[f"size_mb_{tag}"] = export.file_mb(path)
                out[f"test_acc_{tag}"] = float((top[tag] == split.y_test).mean())
            out["latency_ratio"] = out["latency_ms_b1_int8"] / out["latency_ms_b1_fp32"]
            out["size_ratio"] = out["size_mb_int8"] / out["size_mb_fp32"]
            out["accuracy_change_pp"] = 100 * (out["test_acc_int8"] - out["test_acc_fp32"])
            out["top1_agreement"] = float((top["int8"] == top["fp32"]).mean())
            rows.append(out)
    return {"device": export.device_label(1), "recipe": export.RECIPE.summary(len(calib)),
            "rows": rows}


def print_onnx(report: dict) -> None:
    rows = report["rows"]
    r0 = rows[0]
    print(f"ONNX: fp32 vs static INT8 in onnxruntime on {report['device']}; INT8: "
          f"{report['recipe']}. Students trained {r0['epochs']} epoch(s) on "
          f"{r0['train_images']} images without KD (a quick, not a converged, training: see "
          f"their accuracy), tested on {r0['test_images']} images")
    print(f"  {'student':<28}{'PyTorch acc':>12}{'file':>6}{'b1 ms (p10-p90)':>22}"
          f"{'x fp32':>8}{'MB':>8}{'test acc':>10}{'change':>11}{'top-1 = fp32':>14}")
    for r in rows:
        chance = r["pytorch_test_acc"] <= 1 / r["classes"] + 0.02
        for tag in ("fp32", "int8"):
            first = tag == "fp32"
            spread = (f"{r[f'latency_ms_b1_{tag}']:.3f} ({r[f'latency_ms_b1_p10_{tag}']:.3f}-"
                      f"{r[f'latency_ms_b1_p90_{tag}']:.3f})")
            name = r["model"] if first else ""
            trained = f"{r['pytorch_test_acc']:.1%}" if first else ""
            ratio = 1.0 if first else r["latency_ratio"]
            change = "" if first else f"{r['accuracy_change_pp']:+.2f} pp"
            agree = "" if first else f"{r['top1_agreement']:.1%}"
            print(f"  {name:<28}{trained:>12}{tag:>6}{spread:>22}{ratio:>7.2f}x"
                  f"{r[f'size_mb_{tag}']:>8.3f}{r[f'test_acc_{tag}']:>10.2%}{change:>11}"
                  f"{agree:>14}")
        if chance:
            print(f"  ({r['model']} is still at chance after this training: its accuracy "
                  "change and agreement say nothing; train longer, e.g. --train-subset)")


def run_bench(args) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    # The view cache costs 162 teacher passes per image: keep the CPU default small.
    n_train = args.train_subset or (20000 if cuda else 500)
    root = args.data or (str(SHARED) if SHARED.exists() else None)
    data = ({"dataset": "imagefolder", "root": root} if root else
            {"dataset": "synthetic", "synthetic_train": n_train + 500})
    cfg = trial_config({
        "data": {**data, "val_size": 500, "train_subset": n_train},
        "teacher": {"arch": "resnet18" if cuda else "resnet8", "stem": "cifar"},
        "student": {"arch": "resnet20" if cuda else "resnet8", "stem": "cifar"},
        "train": {"batch_size": 512 if cuda else 128}})
    split = load_split(cfg.data, cfg.cache_dir)
    label = f"{measure.device_label(device)}, {torch.get_num_threads()} CPU threads"
    print(f"kdtune bench on {label}; data {split.label}, {len(split.y_train)} train images",
          flush=True)
    steps = 20 if cuda else 5
    report = {"device": label, "data": split.label,
              "data_pipeline": bench_data(split, device, cfg.train.batch_size, steps),
              "teacher_cache": bench_teacher(cfg, split, device, steps),
              "precision": bench_precision(cfg, split, device, steps),
              "bookkeeping": bench_bookkeeping(
                  {**data, "val_size": 500, "train_subset": n_train}, split, device,
                  cfg.train.batch_size),
              "pruning": bench_pruning(device, runs=200 if cuda else 100)}
    from .export import available

    report["onnx"] = None
    if available():
        # The accuracy change needs trained students, so this section trains on more images
        # than the speed sections need: on 500 images for 3 epochs mobilenet_v3_small stays at
        # chance (its batch norms' running statistics, momentum 0.01, lag), and a model at
        # chance agrees with any other on everything.
        onnx_data = {**data, "val_size": 500,
                     "train_subset": args.train_subset or (20000 if cuda else 5000)}
        onnx_split = load_split(trial_config({"data": onnx_data}).data, cfg.cache_dir)
        report["onnx"] = bench_onnx(onnx_data, onnx_split, device, epochs=15 if cuda else 5,
                                    runs=300 if cuda else 100)
    d, t, p = report["data_pipeline"], report["teacher_cache"], report["precision"]
    print(f"{'what':<44}{'kdtune':>14}{'notebook way':>16}{'ratio':>8}")
    print(f"{'data: images/s (crop+flip+normalise)':<44}{d['images_per_s_kdtune']:>14.0f}"
          f"{d['images_per_s_pil_dataloader']:>16.0f}{d['speedup']:>7.1f}x")
    print(f"{'KD step ms (' + t['student'] + ' <- ' + t['teacher'] + ')':<44}"
          f"{t['step_ms_views']:>14.1f}{t['step_ms_online_teacher']:>16.1f}"
          f"{t['speedup']:>7.1f}x")
    if p:
        print(f"{'student step ms, bf16+channels_last vs fp32':<44}"
              f"{p['step_ms_bf16_channels_last']:>14.1f}{p['step_ms_fp32']:>16.1f}"
              f"{p['speedup']:>7.1f}x")
    print(f"student step per kd.method ({t['student']} <- {t['teacher']}), as trials run it:")
    for r in t["methods"]:
        print(f"  {r['method']:<10} teacher from {r['teacher']:<11}{r['step_ms']:>8.1f} ms "
              f"= {r['vs_logit_views']:.2f}x logit KD with the view cache")
    print(f"view cache: built in {t['view_cache_build_s']:.1f}s for {t['train_images']} images "
          f"x {t['views']} views; pays off once a sweep trains more than "
          f"{t['break_even_trial_epochs']:.0f} student epochs (trials x epochs)")
    print(f"per-epoch bookkeeping of a sweep trial (sizes, checkpoint, tune.report to a local "
          f"run folder), {len(split.y_train)} train images, on {label}:")
    for r in report["bookkeeping"]:
        print(f"  {r['model']:<28}{r['bookkeeping_ms']:>8.1f} ms = {r['bookkeeping_share']:.1%} "
              f"of a {r['epoch_ms']:.0f} ms epoch; measuring sizes every epoch, as before: "
              f"{r['before_ms']:.1f} ms = {r['before_share']:.1%}")
    print_pruning(report["pruning"], label)
    if report["onnx"]:
        print_onnx(report["onnx"])
    else:
        print("ONNX: skipped (pip install onnx onnxruntime onnxscript)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report
