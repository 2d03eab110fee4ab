"""run_trial end to end: KD, pruning, resume, determinism, the CLI, and real CIFAR-10."""

import json

import pytest
import torch
from conftest import SHARED_CIFAR, interrupt_then_resume

from kdtune import trial as trial_mod
from kdtune.cli import main
from kdtune.config import trial_config
from kdtune.data import DeviceData, load_split
from kdtune.measure import accuracy, count_flops
from kdtune.models import create_model, list_models, load_student, model_family
from kdtune.trial import run_trial

quiet = dict(log=lambda m: None)


def test_kd_prune_trial_end_to_end(tiny_raw, tmp_path):
    tiny_raw["teacher"]["cache"] = "views"
    tiny_raw["data"].update(synthetic_train=180, val_size=50)  # views: 162 passes per image
    tiny_raw["prune"] = {"ratio": 0.5, "finetune_epochs": 1, "scope": "global"}
    tiny_raw["measure"]["latency"] = True
    reports = []
    r = run_trial(trial_config(tiny_raw), report=reports.append, checkpoint_dir=tmp_path,
                  **quiet)
    assert [x["epoch"] for x in reports] == [1, 2, 3]
    assert [x["phase"] for x in reports] == ["train", "train", "finetune"]
    for x in reports:
        assert {"val_acc", "train_loss", "lr", "size_mb_sparse", "flops"} <= set(x)
    assert reports[-1]["final"] and reports[-1]["test_acc"] == r["test_acc"]
    assert r["teacher_cache"] == "views" and r["view_cache_build_s"] > 0
    assert r["val_acc"] > 0.3  # chance is 0.1 on the synthetic 10-class data
    assert r["sparsity_pruned"] == pytest.approx(0.5, abs=1e-3)
    assert 0 < r["sparsity_total"] < r["sparsity_pruned"]
    assert r["nonzero_params"] < r["params"]
    assert r["latency_ms_b1"] > 0 and r["latency_ms_b1_p90"] >= r["latency_ms_b1"]
    assert r["measure_device"].startswith("cpu") and r["measure_threads"] == 1
    assert r["teacher_val_acc"] is not None and r["epochs_trained"] == 3
    # CPU and train.precision/channels_last: auto -> the plain fp32, contiguous path
    assert r["precision"] == "fp32" and r["channels_last"] is False
    assert r["measure_precision"] == "fp32" and r["measure_channels_last"] is False
    state = torch.load(tmp_path / "student.pt", weights_only=True)["state_dict"]
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    convs = [v for k, v in state.items() if v.dim() == 4]
    zeros = sum(int((v == 0).sum()) for v in convs) / sum(v.numel() for v in convs)
    assert zeros == pytest.approx(0.5, abs=1e-3)  # zeros survived fine-tuning and saving


def test_no_kd_baseline_needs_no_teacher(tiny_raw, monkeypatch):
    monkeypatch.setattr(trial_mod, "prepare_teacher",
                        lambda *a, **k: pytest.fail("teacher built for alpha=0"))
    tiny_raw["kd"]["alpha"] = 0.0
    r = run_trial(trial_config(tiny_raw), **quiet)
    assert r["teacher_cache"] == "none" and r["teacher_val_acc"] is None


def test_same_seed_same_numbers_and_seed_matters(tiny_raw):
    tiny_raw["teacher"]["cache"] = "none"
    a = run_trial(trial_config(tiny_raw), **quiet)
    b = run_trial(trial_config(tiny_raw), **quiet)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["test_acc"] == b["test_acc"]
    tiny_raw["seed"] = 1
    c = run_trial(trial_config(tiny_raw), **quiet)
    assert [h["train_loss"] for h in c["history"]] != [h["train_loss"] for h in a["history"]]


@pytest.mark.parametrize("method", ["unstructured", "channel"])
@pytest.mark.parametrize("stop_after", [1, 3])  # mid-training, and mid-fine-tune
def test_resume_continues_exactly(tiny_raw, tmp_path, stop_after, method):
    tiny_raw["teacher"]["cache"] = "none"
    tiny_raw["train"]["epochs"] = 3
    tiny_raw["prune"] = {"ratio": 0.3, "finetune_epochs": 2, "method": method}
    cfg = trial_config(tiny_raw)
    full = run_trial(cfg, **quiet)

    resumed, _ = interrupt_then_resume(cfg, tmp_path, stop_after)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    assert [h["train_loss"] for h in resumed["history"]] == \
        pytest.approx([h["train_loss"] for h in full["history"]], rel=1e-5)
    assert resumed["test_acc"] == full["test_acc"]
    for k in ("prune_ratio_achieved", "flops", "params", "arch_signature"):
        assert resumed[k] == full[k], k
    if method == "unstructured":
        assert resumed["sparsity_pruned"] == pytest.approx(0.3, abs=1e-3)
    else:  # cnn4 (32/48/64/96 channels) at 0.3, widths rounded to multiples of 8
        assert 0.2 < resumed["prune_ratio_achieved"] < 0.45
        assert resumed["sparsity_pruned"] == 0


def test_sizes_measured_only_when_they_can_change_but_reported_every_epoch(tiny_raw,
                                                                          monkeypatch):
    tiny_raw["teacher"]["cache"] = "none"
    tiny_raw["train"]["epochs"] = 3
    tiny_raw["prune"] = {"ratio": 0.5, "finetune_epochs": 2}
    calls = []
    real = trial_mod.measure.model_size_mb
    monkeypatch.setattr(trial_mod.measure, "model_size_mb",
                        lambda m: calls.append(1) or real(m))
    rows = []
    result = run_trial(trial_config(tiny_raw), report=rows.append, **quiet)
    # at the start, after pruning, and once for the final (masks folded) model
    assert len(calls) == 3
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1].get("final")
    sparse = [r["size_mb_sparse"] for r in rows]
    assert sparse[0] == sparse[1] == sparse[2] > sparse[3] == sparse[4]  # pruned at epoch 4
    assert result["size_mb_sparse"] == pytest.approx(sparse[3])
    assert all(h["bookkeeping_ms"] >= 0 for h in result["history"])
    assert result["epoch_ms"] > result["bookkeeping_ms"] > 0


def test_checkpoint_every_s_bounds_checkpoints_but_keeps_phase_start_and_end(tiny_raw,
                                                                             tmp_path):
    tiny_raw["teacher"]["cache"] = "none"
    tiny_raw["train"]["epochs"] = 3
    tiny_raw["prune"] = {"ratio": 0.3, "finetune_epochs": 2}
    cfg = trial_config(tiny_raw)
    rows = []
    run_trial(cfg, report=rows.append, checkpoint_dir=tmp_path, checkpoint_every_s=3600,
              **quiet)
    assert [r["checkpoint_saved"] for r in rows] == [False, False, False, True, True]
    rows.clear()
    run_trial(cfg, report=rows.append, checkpoint_dir=tmp_path / "every", **quiet)
    assert all(r["checkpoint_saved"] for r in rows)  # 0, the default: every epoch


def test_resume_refuses_other_config(tiny_raw, tmp_path):
    cfg = trial_config(tiny_raw)
    run_trial(cfg, checkpoint_dir=tmp_path, **quiet)
    tiny_raw["kd"]["alpha"] = 0.5
    with pytest.raises(Exception, match="different config"):
        run_trial(trial_config(tiny_raw), resume_from=tmp_path, **quiet)


def test_cli_trial_prints_epochs_then_json(tiny_raw, tmp_path, capsys):
    import yaml

    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(tiny_raw))
    out = tmp_path / "out"
    assert main(["trial", str(p), "--out", str(out), "--set", "kd.alpha=0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("epoch 1/2") and lines[1].startswith("epoch 2/2")
    final = json.loads(lines[-1])
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"]["test_acc"] == final["test_acc"]
    assert saved["config"]["kd"]["alpha"] == 0.5
    for key in ("git_sha", "torch_version", "device", "seed", "dataset_label"):
        assert key in final
    student = load_student(final["checkpoint"])
    assert student(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert not (out / "trial_ckpt.pt").exists()


@pytest.mark.skipif(not SHARED_CIFAR.exists(),
                    reason=f"shared CIFAR-10 JPEG copy not found at {SHARED_CIFAR}")
def test_real_cifar10_jpeg_one_epoch_beats_chance(cifar_cache):
    cfg = trial_config({
        "data": {"dataset": "imagefolder", "root": str(SHARED_CIFAR), "val_size": 500,
                 "train_subset": 4000, "test_subset": 1000},
        "teacher": {"arch": "cnn4", "stem": "cifar", "epochs": 1, "cache": "none"},
        "student": {"arch": "resnet8", "stem": "cifar"},
        # eval batches of 256, not 1024: on a 2-core CPU resnet8 evaluates at 0.51 ms/image in
        # batches of 256 and 1.02 ms in batches of 1024 (activations outgrow the caches)
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, "eval_batch_size": 256},
        "kd": {"alpha": 0.5, "temperature": 4.0},
        "measure": {"latency": False},
        "device": "cpu", "cache_dir": str(cifar_cache)})
    r = run_trial(cfg, **quiet)
    assert r["dataset_label"] == "CIFAR-10 (JPEG copy)"
    assert r["test_acc"] > 0.2, r["test_acc"]  # chance is 0.1


def test_no_two_kdtune_modules_import_each_other():
    """Function-local imports included: a late import hides a cycle, it does not remove it."""
    import ast
    from pathlib import Path

    import kdtune

    root = Path(kdtune.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = ("kdtune", *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]  # what a relative import in this file starts from
        found = imports.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (base, node.module) if p)
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import measure`
    pairs = sorted((a, b) for a in imports for b in imports[a] & set(imports)
                   if a < b and a in imports.get(b, ()))
    assert pairs == []
    assert "kdtune.trial" not in imports["kdtune.teacher"]
    assert "kdtune.train" in imports["kdtune.teacher"]


@pytest.mark.parametrize("arch", [m for m in list_models() if model_family(m) == "cnn"])
def test_channel_pruned_student_of_every_cnn_reloads_with_its_saved_accuracy(tiny_raw, tmp_path,
                                                                             arch):
    tiny_raw["kd"]["alpha"] = 0.0  # the student is what is checked: no teacher needed
    tiny_raw["student"]["arch"] = arch
    # few images: resnet50 with the CIFAR stem costs ~1.3 GFLOP per 32x32 image forward, so
    # 300 images took 20 s on 2 cores; the reload check is exact equality, which 60 test
    # images still make hard to pass by chance
    tiny_raw["data"].update(synthetic_train=60, val_size=20, synthetic_test=60)
    tiny_raw["train"].update(epochs=1, batch_size=20)
    tiny_raw["prune"] = {"method": "channel", "ratio": 0.4, "finetune_epochs": 1}
    cfg = trial_config(tiny_raw)
    r = run_trial(cfg, checkpoint_dir=tmp_path, **quiet)
    dense = create_model(arch, 10, "cifar")
    assert r["params"] < 0.9 * sum(p.numel() for p in dense.parameters())
    assert r["flops"] < count_flops(dense)
    assert 0.2 < r["prune_ratio_achieved"] < 0.6
    student = load_student(tmp_path / "student.pt")
    dd = DeviceData(load_split(cfg.data, cfg.cache_dir), torch.device("cpu"))
    assert accuracy(student, dd.eval_batches("test", 256)) == r["test_acc"]
    assert accuracy(student, dd.eval_batches("val", 256)) == r["val_acc"]
