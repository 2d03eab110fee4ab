"""ONNX export, INT8 quantization and onnxruntime measurement (kdtune.export), `kdtune export`,
and the ONNX columns a sweep's measure_all writes.

* fp32 ONNX logits equal PyTorch's for every student a sweep trains, channel-pruned ones too,
  and a network's graph carries another student's weights only when they deploy alike;
* a trained student's INT8 file agrees with its fp32 file on the top-1 class of most test
  images, and is smaller;
* the card's preprocessing, applied by hand with numpy to raw uint8 images, gives the accuracy
  kdtune's own evaluation gives (synthetic data; and decoded straight from the JPEG files of the
  shared CIFAR-10 copy when present);
* `kdtune export` from a trial folder, a sweep run folder and a checkpoint; mistakes are one line
  and exit code 2;
* measure_all writes onnxruntime latency once per network and sizes and INT8 accuracy per trial.

Everything on the CPU; about a minute on 2 cores.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SHARED_CIFAR, TINY

from kdtune import export
from kdtune.cli import main
from kdtune.config import trial_config
from kdtune.data import DeviceData, load_split
from kdtune.measure import accuracy
from kdtune.models import create_model, load_student, save_student
from kdtune.prune import prune_channels

pytest.importorskip("onnxruntime")
import onnxruntime as ort  # noqa: E402


def _x(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _random_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Batch norms with statistics far from their init, so folding them into the convolutions
    is really checked (fresh ones are nearly the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _ort_logits(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


# --- fp32 -------------------------------------------------------------------------------------

# every student the shipped sweeps train, both stems where a sweep searches them, and
# channel-pruned ones (narrower layers, reloaded from their checkpoint as a user would)
STUDENTS = [("resnet8", "cifar", 0.0), ("resnet20", "cifar", 0.0), ("resnet20", "standard", 0.0),
            ("mobilenet_v3_small", "cifar", 0.0), ("mobilenet_v3_small", "standard", 0.0),
            ("cnn4", "cifar", 0.0), ("resnet20", "cifar", 0.5),
            ("mobilenet_v3_small", "cifar", 0.3),
            # the rest of the registry: any model can be a student
            ("resnet32", "cifar", 0.0), ("resnet56", "cifar", 0.3), ("resnet18", "cifar", 0.3),
            ("resnet34", "standard", 0.0), ("resnet50", "cifar", 0.3),
            ("vit_tiny", "cifar", 0.0), ("vit_tiny_d6", "cifar", 0.0)]  # ViTs: no channel cut


@pytest.mark.parametrize("arch, stem, ratio", STUDENTS)
def test_fp32_onnx_logits_match_pytorch(arch, stem, ratio, tmp_path):
    torch.manual_seed(0)
    model = _random_bn(create_model(arch, 10, stem), seed=1)
    if ratio:
        prune_channels(model, ratio, _x(1), "global", round_to=8)
        save_student(model, tmp_path / "student.pt", arch, stem)
        model = _random_bn(load_student(tmp_path / "student.pt"), seed=2)
    path = export.export_fp32(model, tmp_path / "s.onnx", 32)
    x = _x(5)
    with torch.no_grad():
        want = model(x).numpy()
    got = _ort_logits(path, x)  # a batch of 5 through a graph exported at batch 2: dynamic
    assert got.shape == want.shape == (5, 10)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
    import onnx

    proto = onnx.load(str(path))
    # one file, weights inside; batch norms folded into the convolutions
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert not list(tmp_path.glob("*.data"))
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}


def test_one_exported_graph_carries_each_students_weights_but_only_its_own_networks(tmp_path):
    """What a sweep relies on: a network (architecture signature) is exported once, and every
    student of it gets its own weights swapped in by name."""
    a = _random_bn(create_model("resnet8", 10, "cifar"), seed=3)
    torch.manual_seed(7)
    b = _random_bn(create_model("resnet8", 10, "cifar"), seed=4)
    graph = export.export_graph(a, 32)
    path = export.save(export.with_weights(graph, b), tmp_path / "b.onnx")
    x = _x(3)
    with torch.no_grad():
        np.testing.assert_allclose(_ort_logits(path, x), b(x).numpy(), atol=1e-4, rtol=1e-4)
        assert not np.allclose(_ort_logits(path, x), a(x).numpy(), atol=1e-2)
    narrow = copy.deepcopy(b)
    prune_channels(narrow, 0.5, _x(1), "global", round_to=8)
    with pytest.raises(ValueError, match="not the exported network"):
        export.with_weights(graph, narrow)


# --- a trained student: INT8, the card, `kdtune export` ---------------------------------------

TRAINED = copy.deepcopy(TINY)
TRAINED["data"].update({"synthetic_train": 700, "synthetic_test": 400})
TRAINED["train"]["epochs"] = 3
TRAINED["kd"]["alpha"] = 0.0  # no teacher needed: only a trained student matters here


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One cnn4 trained by `kdtune trial --out` on synthetic data: a trial folder."""
    root = tmp_path_factory.mktemp("trained")
    raw = copy.deepcopy(TRAINED)
    raw["cache_dir"] = str(root / "cache")
    cfg_path = root / "trial.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    folder = root / "trial"
    assert main(["trial", str(cfg_path), "--out", str(folder)]) == 0
    result = json.loads((folder / "result.json").read_text())
    cfg = trial_config(result["config"])
    return folder, cfg, result["metrics"], load_split(cfg.data, cfg.cache_dir)


def _by_hand(card: dict, x_u8: np.ndarray) -> np.ndarray:
    """The card's preprocessing, written out again from the card alone: uint8 NCHW RGB in."""
    p = card["preprocessing"]
    assert p["channel_order"] == "RGB" and p["layout"] == "NCHW" and p["resize"] is None
    assert card["input"]["shape"][1:] == [3, *p["input_size"]]
    mean = np.array(p["mean"], dtype=np.float32)[None, :, None, None]
    std = np.array(p["std"], dtype=np.float32)[None, :, None, None]
    return ((x_u8.astype(np.float32) * np.float32(p["scale"]) - mean) / std).astype(np.float32)


def _predict(path, x: np.ndarray, batch: int = 200) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(x), batch)])


def test_cli_export_fp32_card_preprocessing_by_hand_reproduces_kdtunes_accuracy(trained,
                                                                               capsys):
    folder, cfg, metrics, split = trained
    assert main(["export", str(folder)]) == 0
    path, card_file = folder / "student.onnx", folder / "student.card.json"
    assert path.is_file() and card_file.is_file()
    assert f"wrote {path}" in capsys.readouterr().out
    card = json.loads(card_file.read_text())
    assert card["format"] == "kdtune-onnx-card/1" and card["precision"] == "fp32"
    assert card["file"] == "student.onnx" and card["quantization"] is None
    assert card["dataset"] == "synthetic (seeded)" and len(card["classes"]) == 10
    assert card["config"] == cfg.to_dict() and card["source"] == {"trial_folder": str(folder)}
    assert card["metrics"]["run"]["test_acc"] == metrics["test_acc"]
    assert card["provenance"]["training"]["git_sha"] == metrics["git_sha"]
    assert card["provenance"]["export"]["onnxruntime_version"] == ort.__version__
    assert card["preprocessing"]["mean"] == pytest.approx(list(split.mean))
    assert card["sha256"] == export.sha256(path)
    # kdtune's own evaluation of the student (PyTorch, DeviceData) ...
    student = load_student(folder / "student.pt")
    own = accuracy(student, DeviceData(split, torch.device("cpu"), augment=False)
                   .eval_batches("test", 256))
    assert own == metrics["test_acc"]
    # ... equals the file's accuracy on images preprocessed by hand as the card says
    top = _predict(path, _by_hand(card, split.x_test))
    assert abs((top == split.y_test).mean() - own) <= 1 / len(split.y_test)  # float rounding
    assert card["metrics"]["onnx"]["test_acc"] == pytest.approx((top == split.y_test).mean(),
                                                                abs=1 / len(split.y_test))
    # a wrong channel order or a missing /255 is not the same model any more
    bad = _predict(path, _by_hand(card, split.x_test[:, ::-1].copy()))
    assert (bad == split.y_test).mean() < own - 0.05


def test_cli_export_int8_agrees_with_fp32_on_most_test_images(trained, tmp_path):
    folder, cfg, metrics, split = trained
    out = tmp_path / "deploy" / "cnn4_int8.onnx"
    assert main(["export", str(folder / "student.pt"), "--int8", "--out", str(out)]) == 0
    card = json.loads((tmp_path / "deploy" / "cnn4_int8.card.json").read_text())
    assert card["precision"] == "int8" and card["file"] == "cnn4_int8.onnx"
    q = card["quantization"]
    assert q["per_channel"] is True and q["format"] == "QDQ"
    assert f"{min(512, len(split.y_train))} training images" in q["calibration"]
    fp32 = export.export_fp32(load_student(folder / "student.pt"), tmp_path / "fp32.onnx", 32)
    x = _by_hand(card, split.x_test)
    top8, top32 = _predict(out, x), _predict(fp32, x)
    agree = (top8 == top32).mean()
    assert agree >= 0.9, agree
    assert card["metrics"]["onnx"]["test_agree_with_fp32"] == pytest.approx(agree, abs=0.01)
    acc8 = (top8 == split.y_test).mean()
    assert acc8 >= metrics["test_acc"] - 0.05  # INT8 costs at most a little accuracy
    assert out.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights: ~4x smaller
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


def test_int8_runs_mobilenets_convs_and_squeeze_excitation_on_integer_kernels(tmp_path):
    """What onnxruntime makes of the INT8 file: every convolution, the classifier, the
    residual adds and the squeeze-excitation / hardswish products (Mul) become integer kernels;
    the hardsigmoids (no integer kernel exists) stay float, between a DequantizeLinear and a
    QuantizeLinear."""
    import collections

    import onnx

    model = _random_bn(create_model("mobilenet_v3_small", 10, "cifar"), seed=5)
    fp32 = export.export_fp32(model, tmp_path / "m.onnx", 32)
    calib = _x(16, seed=1).numpy()
    int8 = export.quantize_int8(fp32, tmp_path / "m8.onnx", calib)
    graph = onnx.load(str(int8)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    used_by: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            used_by.setdefault(i, []).append(n.op_type)
    for node in graph.node:
        if node.op_type == "HardSigmoid":
            assert made_by[node.input[0]] == "DequantizeLinear", node.name
            assert used_by[node.output[0]] == ["QuantizeLinear"], node.name
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "as_run.onnx")
    ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    ran = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    fp32_ops = collections.Counter(n.op_type for n in onnx.load(str(fp32)).graph.node)
    assert ran["QLinearConv"] == fp32_ops["Conv"] == 52 and ran["Conv"] == 0
    assert ran["QGemm"] == 2 and ran["QLinearAdd"] == fp32_ops["Add"] == 6
    # 19 hardswish (split by onnxruntime into x * hardsigmoid(x)) + 9 squeeze-excitation gates
    assert ran["QLinearMul"] == 28 and ran["Mul"] == 0
    assert ran["HardSigmoid"] == 28
    # it runs, and agrees with the fp32 file on most of its own calibration images
    assert (_predict(int8, calib) == _predict(fp32, calib)).mean() >= 0.5


@pytest.mark.parametrize("resize", [None, 64])
def test_card_preprocessing_is_what_kdtune_evaluates_on_with_and_without_resize(tiny_raw,
                                                                                resize):
    """data.resize (e.g. 224 for an ImageNet stem): the card names a bilinear resize, and
    following it gives the very tensor DeviceData feeds the student for evaluation."""
    cfg = trial_config(tiny_raw)
    split = load_split(cfg.data, cfg.cache_dir)
    dd = DeviceData(split, torch.device("cpu"), augment=False, resize=resize)
    prep = export.preprocessing(split.mean, split.std, 32, dd.input_size)
    assert prep["input_size"] == [dd.input_size] * 2
    assert (prep["resize"] is None) == (resize is None)
    if resize:
        assert prep["resize"]["to"] == [64, 64] and prep["resize"]["method"] == "bilinear"
    want = next(dd.eval_batches("test", 16))[0].numpy()
    np.testing.assert_allclose(export.preprocess(split.x_test[:16], prep), want, atol=1e-5)


def _fake_run(root: Path, folder: Path, cfg, ids=("t_a", "t_b")) -> Path:
    """A sweep run folder as a sweep leaves it: sweep.yaml, trials.parquet (the completed
    trials' flattened config and metrics, a stopped one), checkpoints/ID.pt. `t_b` is `t_a`'s
    student with other weights: the same network, so one shared latency."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(folder / "student.pt", run / "checkpoints" / f"{ids[0]}.pt")
    other = load_student(folder / "student.pt")
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    save_student(other, run / "checkpoints" / f"{ids[1]}.pt", "cnn4", "cifar")
    resolved = {**cfg.to_dict(), "search": {"name": "fake", "space": {
        "kd.temperature": {"type": "uniform", "low": 1, "high": 8}}}}
    (run / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    result = json.loads((folder / "result.json").read_text())["metrics"]
    rows = []
    for i, tid in enumerate(ids):
        rows.append({**cfg.flat(), "trial_id": tid, "status": "completed", "error": None,
                     "group": "cnn4|cifar|32px", "is_baseline": False, "kd.temperature": 2.0 + i,
                     "checkpoint": str(run / "checkpoints" / f"{tid}.pt"),
                     "arch_signature": result["arch_signature"], "data.label": "synthetic",
                     **{k: result[k] for k in ("val_acc", "test_acc", "teacher_test_acc",
                                               "size_mb_dense", "size_mb_sparse", "git_sha",
                                               "params")}})
    rows.append({**rows[0], "trial_id": "t_stopped", "status": "stopped", "checkpoint": None,
                 "test_acc": None})
    pd.DataFrame(rows).to_parquet(run / "trials.parquet")
    return run


def test_cli_export_from_a_sweep_run_with_trial(trained, tmp_path, capsys):
    folder, cfg, _, split = trained
    run = _fake_run(tmp_path, folder, cfg)
    assert main(["export", str(run), "--trial", "t_b", "--int8"]) == 0
    out = run / "export" / "t_b_int8.onnx"
    card = json.loads((run / "export" / "t_b_int8.card.json").read_text())
    assert out.is_file() and card["source"] == {"run": str(run), "trial_id": "t_b"}
    # the trial's own searched value, over the sweep's base
    assert card["config"]["kd"]["temperature"] == 3.0 and cfg.kd.temperature == 4.0
    assert card["metrics"]["run"]["val_acc"] > 0 and "trial_id" not in card["metrics"]["run"]
    assert card["student"]["checkpoint"] == str(run / "checkpoints" / "t_b.pt")
    # a checkpoint inside the run's checkpoints/ names its trial itself
    assert main(["export", str(run / "checkpoints" / "t_a.pt"), "--out",
                 str(tmp_path / "a.onnx")]) == 0
    a = json.loads((tmp_path / "a.card.json").read_text())
    assert a["source"]["trial_id"] == "t_a" and a["config"]["kd"]["temperature"] == 2.0


def test_export_mistakes_are_one_line_and_exit_2(trained, tmp_path, capsys):
    folder, cfg, _, _ = trained
    run = _fake_run(tmp_path, folder, cfg)
    moved = tmp_path / "moved"  # a trial whose image folder is no longer where it was
    shutil.copytree(folder, moved)
    saved = json.loads((moved / "result.json").read_text())
    saved["config"]["data"].update(dataset="imagefolder", root=str(tmp_path / "gone.tar.gz"))
    (moved / "result.json").write_text(json.dumps(saved))
    cases = [
        ([str(tmp_path / "nope")], "no such file or folder"),
        ([str(run)], "name the student with --trial ID; completed trials: t_a, t_b"),
        ([str(run), "--trial", "t_stopped"],
         "--trial t_stopped: no completed trial of that id in"),
        ([str(run), "--trial", "t_stopped"], "completed trials: t_a, t_b"),
        ([str(folder), "--format", "tflite"], "--format tflite: unknown format; allowed: onnx"),
        ([str(folder), "--trial", "t_a"], "only a sweep run folder has trials"),
        ([str(folder), "--out", str(tmp_path / "x.pt")], "ends in .onnx"),
        ([str(tmp_path)], "neither a trial folder"),
        ([str(run / "sweep.yaml")], "a checkpoint needs its config beside it"),
        ([str(moved)], "does not exist (the student's data; --data-root DIR if it moved)"),
    ]
    for args, msg in cases:
        assert main(["export", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("kdtune: error: ") and msg in err, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err


# --- the sweep's measurement ------------------------------------------------------------------


def test_measure_all_adds_onnx_columns_latency_per_network_accuracy_per_trial(trained,
                                                                              tmp_path):
    from kdtune.sweep.run import measure_all

    folder, cfg, _, split = trained
    run = _fake_run(tmp_path, folder, cfg)
    base = yaml.safe_load((run / "sweep.yaml").read_text())
    base.pop("search")
    measure_all(run, base, cpu_threads=1, use_gpu=False, nodes=[], expected={},
                in_driver=True, split=split, onnx=True)
    df = pd.read_parquet(run / "trials.parquet").set_index("trial_id")
    done = df.loc[["t_a", "t_b"]]
    shared = ["latency_ms_b1_onnx_fp32", "latency_ms_b1_onnx_fp32_p10",
              "latency_ms_b1_onnx_fp32_p90", "latency_ms_b1_onnx_int8",
              "latency_ms_b1_onnx_int8_p10", "latency_ms_b1_onnx_int8_p90", "onnx_device",
              "onnx_int8_recipe"]
    assert (done[shared].nunique() == 1).all()  # one network: one measurement
    for tag in ("fp32", "int8"):
        lat = done.iloc[0][[f"latency_ms_b1_onnx_{tag}{s}" for s in ("_p10", "", "_p90")]]
        assert 0 < lat.iloc[0] <= lat.iloc[1] <= lat.iloc[2]
    assert done.iloc[0]["onnx_device"].endswith(f"onnxruntime {ort.__version__}, 1 thread")
    assert "per-channel" in done.iloc[0]["onnx_int8_recipe"]
    per_trial = ["size_mb_onnx_fp32", "size_mb_onnx_int8", "val_acc_onnx_int8",
                 "test_acc_onnx_int8", "test_acc_onnx_fp32", "test_agree_onnx_int8"]
    assert done[per_trial].notna().all().all()
    assert (done["size_mb_onnx_int8"] < 0.4 * done["size_mb_onnx_fp32"]).all()
    assert (done["test_agree_onnx_int8"] >= 0.9).all()
    # each trial's own weights: t_a's fp32 file scores what PyTorch scored
    assert abs(done.loc["t_a", "test_acc_onnx_fp32"] - done.loc["t_a", "test_acc"]) <= 0.01
    assert done["test_acc_onnx_int8"].between(0, 1).all()
    assert df.loc["t_stopped", per_trial].isna().all()
    # and the results layer reads them as two more latency targets
    from kdtune.results import latency_label, latency_targets, load_runs

    runs = load_runs(run)
    assert latency_targets(runs) == ["cpu", "onnx_fp32", "onnx_int8"]
    assert latency_label(runs, "onnx_int8") == (
        f"batch-1 latency (ms, INT8 ONNX file, {done.iloc[0]['onnx_device']})")


def test_measure_onnx_false_writes_no_onnx_columns(trained, tmp_path):
    from kdtune.sweep.run import measure_all

    folder, cfg, _, split = trained
    run = _fake_run(tmp_path, folder, cfg)
    base = yaml.safe_load((run / "sweep.yaml").read_text())
    base.pop("search")
    measure_all(run, base, 1, False, [], {}, in_driver=True, split=split, onnx=False)
    df = pd.read_parquet(run / "trials.parquet")
    assert df["latency_ms_b1_cpu"].notna().sum() == 2
    assert not [c for c in df.columns if "onnx" in c and c != "measure.onnx"]


# --- real data --------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_CIFAR.exists(),
                    reason=f"shared CIFAR-10 JPEG copy not found at {SHARED_CIFAR}")
def test_real_cifar10_card_by_hand_from_the_jpeg_files_and_int8(tmp_path, cifar_cache):
    """The card applied to the test JPEGs decoded here with PIL (not kdtune's decoder), labels
    from the card's class names: kdtune's own test accuracy, so the channel order, scale and
    statistics the card states are the ones the model was trained on."""
    from PIL import Image

    raw = {"data": {"dataset": "imagefolder", "root": str(SHARED_CIFAR), "val_size": 500,
                    "train_subset": 3000},
           "student": {"arch": "resnet8", "stem": "cifar"},
           "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, "eval_batch_size": 256},
           "kd": {"alpha": 0.0},
           "measure": {"latency": False}, "device": "cpu", "cache_dir": str(cifar_cache)}
    cfg_path = tmp_path / "real.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    folder = tmp_path / "trial"
    assert main(["trial", str(cfg_path), "--out", str(folder)]) == 0
    metrics = json.loads((folder / "result.json").read_text())["metrics"]
    assert main(["export", str(folder)]) == 0
    assert main(["export", str(folder), "--int8"]) == 0
    card = json.loads((folder / "student.card.json").read_text())
    assert card["dataset"] == "CIFAR-10 (JPEG copy)"
    index = {c: i for i, c in enumerate(card["classes"])}
    images, labels = [], []
    with tarfile.open(SHARED_CIFAR) as tf:
        for m in tf:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] == "test":
                with Image.open(io.BytesIO(tf.extractfile(m).read())) as im:
                    images.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
                labels.append(index[parts[-2]])
    x, y = np.stack(images), np.array(labels)
    assert len(y) == 10000
    top = _predict(folder / "student.onnx", _by_hand(card, x))
    assert abs((top == y).mean() - metrics["test_acc"]) <= 2 / len(y)
    assert metrics["test_acc"] > 0.2  # trained: chance is 0.1
    top8 = _predict(folder / "student_int8.onnx", _by_hand(card, x))
    assert (top8 == top).mean() >= 0.9


def test_bench_onnx_section_reports_fp32_vs_int8_of_a_trained_student(tiny_raw, capsys):
    """The section's bookkeeping, on one tiny student (the figures themselves are the bench's
    to measure: no timing is asserted)."""
    from kdtune.bench import bench_onnx, print_onnx

    cfg = trial_config(tiny_raw)
    split = load_split(cfg.data, cfg.cache_dir)
    report = bench_onnx(tiny_raw["data"], split, torch.device("cpu"), epochs=1, runs=3,
                        archs=("cnn4",))
    (r,) = report["rows"]
    assert r["model"] == "cnn4/cifar" and r["epochs"] == 1
    assert r["train_images"] == len(split.y_train) and r["test_images"] == len(split.y_test)
    assert r["latency_ratio"] == r["latency_ms_b1_int8"] / r["latency_ms_b1_fp32"]
    assert r["accuracy_change_pp"] == pytest.approx(100 * (r["test_acc_int8"]
                                                           - r["test_acc_fp32"]))
    assert abs(r["test_acc_fp32"] - r["pytorch_test_acc"]) <= 1 / len(split.y_test)
    assert r["size_ratio"] < 0.4 and 0 <= r["top1_agreement"] <= 1
    assert report["device"].endswith(f"onnxruntime {ort.__version__}, 1 thread")
    print_onnx(report)
    out = capsys.readouterr().out
    assert "fp32 vs static INT8 in onnxruntime" in out and "trained 1 epoch(s)" in out
    assert out.count("cnn4/cifar") == 1 and "int8" in out


def test_the_export_tests_cover_every_registry_model():
    from kdtune.models import list_models

    assert {arch for arch, _, _ in STUDENTS} == set(list_models())
