"""Deployable students: one ONNX file (fp32, or INT8 by static post-training quantization), the
JSON card beside it, and onnxruntime's batch-1 latency and accuracy of either.

Export: ``torch.onnx.export(dynamo=True)`` of the student with a dynamic batch axis, opset
20, weights inside the file. The graph is first exported *unoptimised*: there every
initializer is one ``state_dict`` tensor under its own name (checked on every swap), so a sweep
exports each distinct network (its architecture signature) once, ~2-6 s on a 2-core CPU, and
gives each trial its own weights by swapping them in (~0.05 s). The onnxscript optimiser then
folds the batch norms into the convolutions, as ``optimize=True`` would have.

INT8: onnxruntime's static quantizer, QDQ format (what its CPU kernels fuse into QLinearConv and
friends), uint8 activations with int8 weights per output channel, min-max ranges calibrated on
512 of the split's training images (normalised, no augmentation); every op of INT8_OPS on
integer kernels, hardsigmoid in float. The measured choice: students trained 8 epochs on 8,000
CIFAR-10 (JPEG copy) images without KD (resnet20 63.7 %, mobilenet_v3_small 34.3 % test: a
quick training), 2,000 test images; agree = test images whose INT8 top-1 is fp32's; SQNR = fp32
logits' energy over the INT8 error's; batch-1 median on 1 thread of an AMD EPYC (AVX-512 VNNI)
shared with another job, onnxruntime 1.32:

                                  resnet20/cifar               mobilenet_v3_small/cifar
                                  acc %  agree  SQNR  ms       acc %  agree  SQNR  ms
  fp32 (1.17 MB / 6.38 MB)        63.70  100    -     0.719    34.25  100    -     0.284
  per-tensor, MinMax, SE float    63.50  98.50  32.6  0.328    34.60  97.25  31.2  0.322
  per-channel, MinMax, SE float   64.05  98.20  33.6  0.328    34.20  96.95  31.9  0.330
  per-channel, Percentile         63.75  98.45  33.8  0.328    34.15  97.70  32.2  0.330
  per-channel, MinMax, SE int8 *  64.05  98.20  33.6  0.329    34.20  97.10  31.7  0.318
    + hardsigmoid listed too      64.05  98.20  33.6  0.331    34.20  97.10  31.7  0.316
  Conv and Gemm only              64.00  98.40  32.6  0.362    33.70  96.60  31.8  0.333
  (* chosen: 0.374 MB and 1.805 MB; Entropy calibration gave exactly MinMax's figures)

* Per-channel: +1.0 and +0.7 dB of logit SQNR over per-tensor; the top-1 differences (at most
  0.5 pp, 10 of 2,000 images) are within noise, the logits are where per-tensor loses first.
  It costs 3-8 % of file size and no resnet20 latency.
* MinMax, not Percentile: Percentile's +0.2-0.3 dB needs every activation of the calibration
  set in memory (49x more at data.resize 224) and fails in onnxruntime 1.32 when the images do
  not split into equal batches; MinMax keeps a min and a max per tensor and batch.
* Squeeze-excitation and hardswish products (Mul) as INT8: -0.2 dB, the same top-1, 4 % faster
  than in float. Hardsigmoid has no integer kernel in onnxruntime: it stays float (listing it
  changes nothing). Residual adds as INT8 (QLinearAdd): leaving them float ("Conv and Gemm
  only") is 10 % slower on resnet20.
* What INT8 buys: resnet20 2.2x faster at batch 1 and 3.1x smaller. mobilenet_v3_small at
  32 px: 3.5x smaller but ~10 % slower than fp32: its convolutions are tiny (depthwise, 16x16
  to 2x2 maps) and its 28 hardsigmoids and 10 ReduceMeans (squeeze, pool) that stay float each
  cost a dequantize/quantize round trip (not profiled further). The INT8 front shows this per
  student rather than assuming INT8 is faster.

Why onnxruntime's quantizer and not PyTorch's pt2e flow: torch 2.14 no longer ships pt2e
(``torch.ao.quantization.quantize_pt2e`` moved to torchao, one more dependency), and the file
runs in onnxruntime, whose quantizer writes exactly the QDQ pattern its kernels fuse.
``reduce_range`` is off: it guards against int16 overflow in the u8s8 kernels of CPUs without
VNNI; this one has VNNI, and so do current x86 servers and ARM.

Latency: an ``InferenceSession`` with ``intra_op_num_threads`` = measure.cpu_threads (1 by
default) and one inter-op thread, sequential execution, full graph optimisation; batch-1
median, p10 and p90 over measure.runs calls after measure.warmup, as ``measure_speed`` does for
PyTorch. Accuracy runs use every core: the logits do not depend on the thread count (checked:
identical on 1 and 2 threads, fp32 and INT8, 2,000 test images).

onnx, onnxruntime and onnxscript are imported inside the functions: ``import kdtune`` and the
training loop need none of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import measure
from .errors import KDTuneError

OPSET = 20
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
CARD_FORMAT = "kdtune-onnx-card/1"
FORMATS = ("onnx",)
PACKAGES = ("onnx", "onnxruntime", "onnxscript")
CALIBRATION_IMAGES = 512
EVAL_BATCH = 256

# Ops whose inputs and outputs get QuantizeLinear/DequantizeLinear pairs; onnxruntime fuses each
# such pair around an op into its integer kernel (QLinearConv, QGemm, QLinearAdd, QLinearMul,
# ...). What is not listed runs in float between a DequantizeLinear and a QuantizeLinear. Mul is
# MobileNetV3's squeeze-excitation gating and the x * hardsigmoid(x) of its hardswish: measured
# above, as INT8 it costs no accuracy and is faster.
INT8_OPS = ("Conv", "Gemm", "Relu", "Add", "Mul", "ReduceMean", "GlobalAveragePool", "Reshape",
            "Flatten", "MaxPool", "AveragePool")
# MobileNetV3's hardsigmoid (its SE gate, and half of its hardswish, which onnxruntime's
# pre-processing splits into x * hardsigmoid(x)): onnxruntime has no integer kernel for it, so
# listing it would only add quantization error around the same float op (measured: no change).
FLOAT_OPS = ("HardSigmoid", "HardSwish")


def available() -> bool:
    """Whether onnx, onnxruntime and onnxscript are installed (not imported: that costs ~1 s)."""
    return all(find_spec(p) is not None for p in PACKAGES)


def require() -> None:
    missing = [p for p in PACKAGES if find_spec(p) is None]
    if missing:
        raise KDTuneError(f"ONNX export needs {', '.join(missing)}: pip install "
                          + " ".join(PACKAGES))


def resolve(setting: str | bool) -> bool:
    """measure.onnx as a yes/no: auto means "when installed"; true when not installed is a
    user mistake, said before any trial runs rather than after the sweep."""
    if setting == "auto":
        return available()
    if setting is True:
        missing = [p for p in PACKAGES if find_spec(p) is None]
        if missing:
            raise KDTuneError(f"measure.onnx: true needs {', '.join(PACKAGES)} (missing: "
                              f"{', '.join(missing)}); pip install {' '.join(PACKAGES)}, or "
                              "set measure.onnx: false")
    return bool(setting)


def runtime_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def device_label(threads: int) -> str:
    """E.g. ``"cpu AMD EPYC, onnxruntime 1.32.0, 1 thread"``."""
    return (f"{measure.device_label('cpu')}, {runtime_version()}, {threads} thread"
            + ("" if threads == 1 else "s"))


# --- preprocessing: what the card says and what kdtune's own evaluation does ------------------


def preprocessing(mean, std, source_size: int, input_size: int) -> dict:
    """The input an exported student expects, as ``kdtune.data.DeviceData`` builds it for
    evaluation: RGB, NCHW float32, ``(pixel / 255 - mean) / std`` per channel, then (only when
    the sweep set data.resize) a bilinear resize. Normalising and resizing commute (a bilinear
    resize is a weighted mean per channel), so either order gives the same input."""
    prep = {
        "channel_order": "RGB", "layout": "NCHW", "dtype": "float32",
        "input_size": [int(input_size), int(input_size)],
        "scale": 1 / 255, "mean": [float(m) for m in mean], "std": [float(s) for s in std],
        "formula": "x[c] = (pixel[c] / 255 - mean[c]) / std[c], pixels uint8 RGB",
        "resize": None,
    }
    if input_size != source_size:
        prep["resize"] = {"from": [int(source_size)] * 2, "to": [int(input_size)] * 2,
                          "method": "bilinear", "align_corners": False, "antialias": False,
                          "as": "torch.nn.functional.interpolate(x, size, mode='bilinear', "
                                "align_corners=False)"}
    return prep


def preprocess(x_u8: np.ndarray, prep: dict) -> np.ndarray:
    """uint8 NCHW RGB images -> the float32 input ``prep`` describes."""
    mean = np.asarray(prep["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep["std"], np.float32).reshape(1, 3, 1, 1)
    x = (x_u8.astype(np.float32) * np.float32(prep["scale"]) - mean) / std
    if prep.get("resize"):
        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=tuple(prep["input_size"]),
                                            mode="bilinear", align_corners=False).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


# --- export -----------------------------------------------------------------------------------


@dataclass
class Graph:
    """One exported network without its weights' final form: the unoptimised ONNX graph of an
    architecture (signature), every initializer a state_dict tensor under its own name."""

    proto: bytes
    input_size: int


def export_graph(model: nn.Module, input_size: int) -> Graph:
    """The unoptimised ONNX graph of ``model`` (eval mode, on the CPU, batch axis dynamic)."""
    require()
    import warnings

    model = measure._inference_copy(model).cpu().eval().float()
    model = model.to(memory_format=torch.contiguous_format)
    x = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        try:
            program = torch.onnx.export(
                model, (x,), dynamo=True, optimize=False, verbose=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        except Exception as e:  # the exporter raises its own error types
            raise RuntimeError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    return Graph(program.model_proto.SerializeToString(), input_size)


def with_weights(graph: Graph, model: nn.Module, doc: str = ""):
    """``graph`` carrying ``model``'s weights, batch norms folded: a deployable ModelProto.

    ``model`` must deploy as the network ``graph`` was exported from (the same architecture
    signature); every initializer is checked by name and shape."""
    import onnx
    import onnxscript
    from onnx import numpy_helper

    state = measure._inference_copy(model).state_dict()
    proto = onnx.load_from_string(graph.proto)
    for init in proto.graph.initializer:
        tensor = state.get(init.name)
        if tensor is None or tuple(tensor.shape) != tuple(init.dims):
            have = None if tensor is None else tuple(tensor.shape)
            raise ValueError(f"ONNX initializer {init.name} {tuple(init.dims)} has no "
                             f"state_dict twin (found {have}): not the exported network")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        init.CopyFrom(numpy_helper.from_array(tensor.cpu().numpy().astype(dtype), init.name))
    with contextlib.redirect_stdout(io.StringIO()):
        proto = onnxscript.optimizer.optimize(proto)
    proto.doc_string = doc
    return proto


def save(proto, path: str | Path) -> Path:
    """One self-contained file: weights inside, never an external-data sidecar."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def export_fp32(model: nn.Module, path: str | Path, input_size: int,
                graph: Graph | None = None, doc: str = "") -> Path:
    graph = graph or export_graph(model, input_size)
    return save(with_weights(graph, model, doc), path)


# --- INT8 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Recipe:
    """How onnxruntime's static quantizer is called (see the module docstring for why)."""

    per_channel: bool = True
    calibrate: str = "MinMax"  # onnxruntime CalibrationMethod name
    ops: tuple[str, ...] = INT8_OPS
    calibration_images: int = CALIBRATION_IMAGES

    def describe(self, images: int | None = None) -> dict:
        """For the card; ``images``: how many calibrated it (fewer where the split is smaller
        than calibration_images)."""
        images = self.calibration_images if images is None else images
        return {"tool": runtime_version() + " quantize_static", "format": "QDQ",
                "weights": "int8, " + ("per output channel" if self.per_channel
                                       else "per tensor") + ", symmetric",
                "activations": "uint8, asymmetric, per tensor",
                "calibration": f"{self.calibrate} over {images} training images "
                               "(normalised as the card says, no augmentation)",
                "int8_ops": list(self.ops),
                "float_ops": "every other op, e.g. " + ", ".join(FLOAT_OPS)}

    def summary(self, images: int | None = None) -> str:
        """One line for a table column, e.g. "QDQ u8/s8 per-channel, MinMax on 512 train
        images; float: HardSwish, HardSigmoid, Mul"."""
        images = self.calibration_images if images is None else images
        return (f"QDQ u8/s8 {'per-channel' if self.per_channel else 'per-tensor'}, "
                f"{self.calibrate} on {images} train images; float: " + ", ".join(FLOAT_OPS))


RECIPE = Int8Recipe()


def calibration_images(x_train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training images (uint8), drawn with a fixed seed so a run is reproducible."""
    idx = np.random.default_rng(seed).permutation(len(x_train))[:n]
    return x_train[np.sort(idx)]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray,
                  recipe: Int8Recipe = RECIPE, batch: int = 64) -> Path:
    """Static INT8 of the fp32 file at ``fp32_path``, calibrated on ``calib`` (float32 inputs,
    preprocessed): QDQ, per ``recipe``. Writes one self-contained file at ``out_path``."""
    require()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: calib[i:i + batch]}
                                 for i in range(0, len(calib), batch)])

        def get_next(self):
            return next(self.batches, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdtune-int8-") as tmp:
        # shape inference and onnxruntime's own graph fusions first, as its quantizer asks
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.ops), per_channel=recipe.per_channel,
                reduce_range=False, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, recipe.calibrate))
    return out_path


# --- running and timing in onnxruntime --------------------------------------------------------


def session(path_or_bytes, threads: int | None = None):
    """An onnxruntime CPU session; ``threads`` fixes its intra-op threads (None: every core),
    with one inter-op thread and sequential execution, so a timing is reproducible."""
    require()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = threads or 0
    so.log_severity_level = 3  # errors only: no warnings about unused initializers
    src = str(path_or_bytes) if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def logits(sess, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def predict(sess, x_u8: np.ndarray, prep: dict, batch: int = EVAL_BATCH) -> np.ndarray:
    """Top-1 class of each uint8 image, preprocessed per ``prep`` a batch at a time."""
    return np.concatenate([
        logits(sess, preprocess(x_u8[i:i + batch], prep), batch).argmax(1)
        for i in range(0, len(x_u8), batch)]) if len(x_u8) else np.zeros(0, np.int64)


def accuracy(sess, x_u8: np.ndarray, y: np.ndarray, prep: dict) -> float:
    if not len(y):
        raise ValueError("accuracy() got no images")
    return float((predict(sess, x_u8, prep) == y).mean())


def time_session(sess, input_size: int, warmup: int = 10, runs: int = 50) -> dict:
    """Batch-1 latency in ms: median, p10 and p90 over ``runs`` calls after ``warmup``."""
    x = np.random.default_rng(0).standard_normal((1, 3, input_size, input_size),
                                                 dtype=np.float32)
    feed = {INPUT_NAME: x}
    for _ in range(warmup):
        sess.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run([OUTPUT_NAME], feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return measure.latency_stats(times)


def file_mb(path: str | Path) -> float:
    return os.path.getsize(path) / measure.MB


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(onnx_path: str | Path) -> Path:
    """``student.onnx`` -> ``student.card.json``, beside it."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")


def write_card(onnx_path: str | Path, card: dict) -> Path:
    from .storage import atomic_path

    path = card_path(onnx_path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=1, sort_keys=False, default=_json_default))
    return path


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


# --- a sweep's students in onnxruntime --------------------------------------------------------


def measure_students(students: dict[str, nn.Module], input_size: int, split, threads: int,
                     warmup: int = 10, runs: int = 50, recipe: Int8Recipe = RECIPE
                     ) -> tuple[dict, dict[str, dict]]:
    """ONNX fp32 and INT8 of students that deploy as one network (one architecture signature),
    keyed by trial id: ``(shared, per_trial)``.

    ``shared``: batch-1 latency (median, p10, p90) of the first student's fp32 and INT8 files
    on the CPU with ``threads`` intra-op threads, and where: the others run the same kernels.
    ``per_trial``: what their weights change: each student's file sizes, INT8 validation and
    test accuracy, fp32 test accuracy in onnxruntime, and the share of test images on which
    INT8 and fp32 agree on the top-1 class. Each student is calibrated on the same training
    images of ``split``."""
    require()
    prep = preprocessing(split.mean, split.std, split.x_train.shape[-1], input_size)
    calib = preprocess(calibration_images(split.x_train, recipe.calibration_images), prep)
    graph, shared, per_trial = None, {}, {}
    with tempfile.TemporaryDirectory(prefix="kdtune-onnx-") as tmp:
        for i, (trial_id, model) in enumerate(students.items()):
            graph = graph or export_graph(model, input_size)
            fp32 = export_fp32(model, Path(tmp) / "fp32.onnx", input_size, graph)
            int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib, recipe)
            if i == 0:
                for tag, path in (("fp32", fp32), ("int8", int8)):
                    m = time_session(session(path, threads), input_size, warmup, runs)
                    shared.update({f"latency_ms_b1_onnx_{tag}{k[len('latency_ms_b1'):]}": v
                                   for k, v in m.items()})
                shared["onnx_device"] = device_label(threads)
                shared["onnx_int8_recipe"] = recipe.summary(len(calib))
            s32, s8 = session(fp32), session(int8)
            top32 = predict(s32, split.x_test, prep)
            top8 = predict(s8, split.x_test, prep)
            per_trial[trial_id] = {
                "size_mb_onnx_fp32": file_mb(fp32), "size_mb_onnx_int8": file_mb(int8),
                "val_acc_onnx_int8": accuracy(s8, split.x_val, split.y_val, prep),
                "test_acc_onnx_int8": float((top8 == split.y_test).mean()),
                "test_acc_onnx_fp32": float((top32 == split.y_test).mean()),
                "test_agree_onnx_int8": float((top8 == top32).mean())}
    return shared, per_trial


# --- `kdtune export`: a trained student, from a trial folder or a sweep run ------------------

# what a row or result.json says about the code and machine, rather than about the student
PROVENANCE_KEYS = ("git_sha", "kdtune_version", "python_version", "torch_version",
                   "torchvision_version", "ray_version", "optuna_version", "device",
                   "precision", "channels_last", "node")
# row columns that are bookkeeping of the sweep, not metrics of the student
_NOT_METRICS = ("trial_id", "status", "error", "checkpoint", "group", "started_at",
                "finished_at", "is_baseline", "seed", "restarts", "ray_gpu_ids")


@dataclass
class Source:
    """A trained student and what made it: its weights, config, metrics and provenance."""

    checkpoint: Path
    config: object  # TrialConfig
    metrics: dict
    provenance: dict
    where: dict  # {"trial_folder": ...} or {"run": ..., "trial_id": ...}
    default_out: Path


def _plain(v):
    """A parquet cell as a plain JSON value (NaN -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _trial_folder(checkpoint: Path, result: Path, trial: str | None) -> Source:
    from .config import trial_config

    if trial is not None:
        raise KDTuneError(f"--trial {trial}: only a sweep run folder has trials; "
                          f"{result.parent} is one trial's folder")
    try:
        saved = json.loads(result.read_text())
        cfg = trial_config(saved["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KDTuneError(f"{result}: not a kdtune trial result ({type(e).__name__}: {e})") \
            from None
    metrics = saved.get("metrics", {})
    prov = {k: metrics[k] for k in PROVENANCE_KEYS if k in metrics}
    keep = {k: _plain(v) for k, v in metrics.items()
            if k not in PROVENANCE_KEYS and k != "checkpoint" and not isinstance(v, (dict, list))}
    return Source(checkpoint, cfg, keep, prov, {"trial_folder": str(result.parent)},
                  checkpoint.parent / checkpoint.stem)


def _row_config(run: Path, row: dict):
    """The trial's config: the run's sweep.yaml with the trial's own values of every key the
    sweep varied (searched keys, the baselines' arch/stem/alpha, the seed)."""
    import yaml

    from .config import STEM_SHORTHAND, trial_config

    try:
        resolved = yaml.safe_load((run / "sweep.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KDTuneError(f"{run}: cannot read sweep.yaml ({type(e).__name__})") from None
    search = resolved.pop("search", {}) or {}
    keys = {"student.arch", "student.stem", "teacher.stem", "kd.alpha", "seed"}
    for k in search.get("space", {}) or {}:
        keys |= {"teacher.stem", "student.stem"} if k == STEM_SHORTHAND else {k}
    base_flat = trial_config(resolved).flat()
    overrides = []
    for k in sorted(keys & set(base_flat) & set(row)):
        v = _plain(row[k])
        if v is None:
            continue
        base_v = base_flat[k]
        if isinstance(v, float) and v.is_integer() and isinstance(base_v, int) \
                and not isinstance(base_v, bool):
            v = int(v)  # an integer column that held a NaN somewhere came back as floats
        if isinstance(v, str) and isinstance(base_v, bool):
            v = yaml.safe_load(v)  # a mixed-type column is written as text
        if k == "teacher.ensemble" and isinstance(v, str):
            v = json.loads(v)  # a list, kept as JSON text in the table (sweep.writer)
        overrides.append((k, v))
    return trial_config(resolved, overrides)


def _run_trial(run: Path, trial: str | None) -> Source:
    import pandas as pd

    try:
        df = pd.read_parquet(run / "trials.parquet")
    except Exception as e:  # noqa: BLE001  pyarrow raises many types for a bad file
        raise KDTuneError(f"{run}: cannot read trials.parquet ({type(e).__name__})") from None
    done = df[(df["status"] == "completed") & df["checkpoint"].notna()] \
        if "checkpoint" in df else df.iloc[0:0]
    ids = [str(t) for t in done["trial_id"]]
    if not ids:
        raise KDTuneError(f"{run}: no completed trial to export")
    if trial is None:
        raise KDTuneError(f"{run} is a sweep run: name the student with --trial ID; completed "
                          f"trials: {', '.join(ids)}")
    if trial not in ids:
        raise KDTuneError(f"--trial {trial}: no completed trial of that id in {run}; "
                          f"completed trials: {', '.join(ids)}")
    row = done[done["trial_id"].astype(str) == trial].iloc[0].to_dict()
    # the run's own copy: the column may name a URI, or a folder the run was moved from
    checkpoint = run / "checkpoints" / f"{trial}.pt"
    if not checkpoint.is_file():
        raise KDTuneError(f"{checkpoint}: missing; the run's checkpoints/ holds the completed "
                          "students' weights")
    cfg = _row_config(run, row)
    prov = {k: _plain(row[k]) for k in PROVENANCE_KEYS if k in row}
    metrics = {k: _plain(v) for k, v in row.items()
               if "." not in k and k not in PROVENANCE_KEYS and k not in _NOT_METRICS}
    return Source(checkpoint, cfg, metrics, prov, {"run": str(run), "trial_id": trial},
                  run / "export" / trial)


def find_source(path: str | Path, trial: str | None = None) -> Source:
    """What ``kdtune export PATH [--trial ID]`` exports: a trial folder (``kdtune trial
    --out``: student.pt + result.json), a sweep run folder with ``--trial``, or a checkpoint
    file inside either."""
    p = Path(path)
    if not p.exists():
        raise KDTuneError(f"{path}: no such file or folder")
    if p.is_dir():
        if (p / "trials.parquet").is_file():
            return _run_trial(p, trial)
        if (p / "result.json").is_file() and (p / "student.pt").is_file():
            return _trial_folder(p / "student.pt", p / "result.json", trial)
        raise KDTuneError(f"{path}: neither a trial folder (student.pt and result.json, from "
                          "kdtune trial --out) nor a sweep run folder (trials.parquet)")
    if (p.parent / "result.json").is_file():
        return _trial_folder(p, p.parent / "result.json", trial)
    run = p.parent.parent
    if p.parent.name == "checkpoints" and (run / "trials.parquet").is_file():
        if trial is not None and trial != p.stem:
            raise KDTuneError(f"--trial {trial}: {p} is trial {p.stem}'s checkpoint")
        return _run_trial(run, p.stem)
    raise KDTuneError(f"{path}: a checkpoint needs its config beside it: result.json (a kdtune "
                      "trial folder) or a sweep run's checkpoints/ folder")


def export_student(path: str | Path, trial: str | None = None, fmt: str = "onnx",
                   int8: bool = False, out: str | Path | None = None,
                   data_root: str | None = None, recipe: Int8Recipe = RECIPE,
                   log=print) -> tuple[Path, Path]:
    """``kdtune export``: one ONNX file of the student at ``path`` (fp32, or static INT8
    calibrated on its training split) and its card beside it; returns both paths.

    The card holds the student's config, the run's metrics, the file's own accuracy in
    onnxruntime on the validation and test split, the dataset, provenance, and the
    preprocessing the file expects (``preprocessing()``), which is what this function itself
    applies to measure that accuracy."""
    if fmt not in FORMATS:
        raise KDTuneError(f"--format {fmt}: unknown format; allowed: {', '.join(FORMATS)}")
    require()
    src = find_source(path, trial)
    out = Path(out) if out else src.default_out.with_name(
        src.default_out.name + ("_int8" if int8 else "") + ".onnx")
    if out.suffix != ".onnx":
        raise KDTuneError(f"--out {out}: an ONNX file's name ends in .onnx")
    from .config import trial_config
    from .data import load_arrays, make_split
    from .models import architecture_signature, read_student, rebuild_student
    from .trial import provenance

    cfg = src.config
    if data_root is not None:
        cfg = trial_config(cfg.to_dict(), [("data.root", data_root)])
    arch, stem, state = read_student(src.checkpoint)  # one read: the model and what it is
    model = rebuild_student(arch, stem, state).eval()
    if (arch, stem) != (cfg.student.arch, cfg.student.stem):
        raise KDTuneError(f"{src.checkpoint}: holds a {arch}/{stem} student but its config "
                          f"says {cfg.student.arch}/{cfg.student.stem}")
    try:
        arrays = load_arrays(cfg.data, cfg.cache_dir)
    except KDTuneError as e:  # the card's statistics come from this data: it must be found
        raise KDTuneError(f"{e} (the student's data; --data-root DIR if it moved)") from None
    split = make_split(arrays, cfg.data)
    source_size = split.x_train.shape[-1]
    input_size = cfg.data.resize or source_size
    prep = preprocessing(split.mean, split.std, source_size, input_size)
    doc = (f"kdtune student {arch}/{stem}, {split.label}; input {INPUT_NAME}: NCHW float32 RGB "
           f"{input_size}x{input_size}, (pixel/255 - mean)/std; card: {card_path(out).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdtune-export-") as tmp:
        fp32 = export_fp32(model, out if not int8 else Path(tmp) / "fp32.onnx", input_size,
                           doc=doc)
        calib = preprocess(calibration_images(split.x_train, recipe.calibration_images), prep)
        if int8:
            quantize_int8(fp32, out, calib, recipe)
            _set_doc(out, doc)
        sess = session(out)
        top = predict(sess, split.x_test, prep)
        onnx_metrics = {"val_acc": accuracy(sess, split.x_val, split.y_val, prep),
                        "test_acc": float((top == split.y_test).mean()),
                        "size_mb": file_mb(out)}
        if int8:
            top32 = predict(session(fp32), split.x_test, prep)
            onnx_metrics["test_acc_fp32"] = float((top32 == split.y_test).mean())
            onnx_metrics["test_agree_with_fp32"] = float((top == top32).mean())
    import onnx
    import onnxruntime
    import onnxscript

    card = {
        "format": CARD_FORMAT,
        "file": out.name, "sha256": sha256(out), "precision": "int8" if int8 else "fp32",
        "runs_with": "onnxruntime (CPUExecutionProvider) or any ONNX runtime with opset "
                     f"{OPSET}; weights are inside the file",
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, input_size, input_size],
                  "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", split.num_classes],
                   "meaning": "unnormalised class scores; argmax is the class index"},
        "preprocessing": prep,
        "classes": list(arrays.classes),
        "dataset": split.label,
        "student": {"arch": arch, "stem": stem, "num_classes": split.num_classes,
                    "arch_signature": architecture_signature(model, arch, stem, input_size),
                    "checkpoint": str(src.checkpoint)},
        "quantization": {**recipe.describe(len(calib)), "per_channel": recipe.per_channel}
        if int8 else None,
        "metrics": {"onnx": onnx_metrics, "run": src.metrics,
                    "note": "onnx: this file in onnxruntime on the split below, preprocessed "
                            "as the card says; run: what the trial itself recorded (PyTorch)"},
        "split": {"val_images": int(len(split.y_val)), "test_images": int(len(split.y_test)),
                  "train_images": int(len(split.y_train)), "identity": split.identity},
        "config": cfg.to_dict(),
        "source": src.where,
        "provenance": {"training": src.provenance,
                       "export": {**provenance(), "onnx_version": onnx.__version__,
                                  "onnxruntime_version": onnxruntime.__version__,
                                  "onnxscript_version": onnxscript.__version__,
                                  "opset": OPSET}},
    }
    card_file = write_card(out, card)
    run_acc = src.metrics.get("test_acc")
    log(f"wrote {out} ({card['precision']}, {onnx_metrics['size_mb']:.2f} MB) and {card_file}; "
        f"onnxruntime test accuracy {onnx_metrics['test_acc']:.2%}"
        + (f" (the trial measured {run_acc:.2%} in PyTorch)" if run_acc is not None else "")
        + (f"; INT8 agrees with fp32 on {onnx_metrics['test_agree_with_fp32']:.1%} of the "
           "test images" if int8 else ""))
    return out, card_file


def _set_doc(path: Path, doc: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    proto.doc_string = doc
    save(proto, path)
