"""The CUDA code paths, run on the CPU: train.channels_last and train.precision forced on.

On a GPU these are on by default (auto); on the CPU they are off, so without forcing them the
suite never runs what every GPU trial runs. That is how pruning a channels_last student crashed
every pruned GPU trial unnoticed. Data and models are tiny: bf16 autocast on a CPU is slow.
"""

import copy

import pytest
import torch
from conftest import interrupt_then_resume
from torch.nn.utils import prune as torch_prune

from kdtune import teacher as teacher_mod
from kdtune import trial as trial_mod
from kdtune.config import trial_config
from kdtune.data import DeviceData, load_split
from kdtune.measure import measure_speed
from kdtune.models import create_model, load_student
from kdtune.prune import apply_pruning, make_permanent, prunable, sparsity
from kdtune.trial import run_trial

quiet = dict(log=lambda m: None)
ON = {"channels_last": True, "precision": "bf16"}
OFF = {"channels_last": False, "precision": "fp32"}
AUTO = {"channels_last": "auto", "precision": "auto"}  # on CPU: off


@pytest.fixture
def raw(tmp_path) -> dict:
    return {
        "data": {"dataset": "synthetic", "synthetic_train": 300, "synthetic_test": 100,
                 "val_size": 64},
        "teacher": {"arch": "cnn4", "stem": "cifar", "epochs": 1, "batch_size": 32,
                    "cache": "none"},
        "student": {"arch": "cnn4", "stem": "cifar"},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "eval_batch_size": 256, **ON},
        "kd": {"temperature": 4.0, "alpha": 0.9},
        "prune": {"ratio": 0.4, "scope": "global", "finetune_epochs": 1},
        "measure": {"latency": False, "runs": 3, "warmup": 1, "throughput_batch": 4},
        "device": "cpu", "cache_dir": str(tmp_path / "cache"),
    }


def is_channels_last(t: torch.Tensor) -> bool:
    # A 1x1 or single-channel tensor is both layouts at once: only the strict case counts.
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def spy_forwards(monkeypatch, module) -> list[dict]:
    """Record how every forward of each model `module.create_model` builds really ran."""
    calls = []

    def hook(model, args, out):
        calls.append({"training": model.training, "inference": torch.is_inference_mode_enabled(),
                      "grad": torch.is_grad_enabled(), "cl_input": is_channels_last(args[0]),
                      "dtype": out.dtype})

    real = module.create_model

    def create(*a, **k):
        model = real(*a, **k)
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(module, "create_model", create)
    return calls


def assert_ran(calls, *, bf16: bool, channels_last: bool, min_calls: int = 1) -> None:
    dtype = torch.bfloat16 if bf16 else torch.float32
    assert len(calls) >= min_calls
    assert all(c["dtype"] == dtype for c in calls), {c["dtype"] for c in calls}
    assert all(c["cl_input"] == channels_last for c in calls)


def conv_weights(model) -> list[torch.Tensor]:
    return [m.weight.detach() for m, _ in prunable(model)]


def assert_exact_sparsity(model, ratio: float, scope: str) -> None:
    weights = conv_weights(model)
    zeros = [int((w == 0).sum()) for w in weights]
    if scope == "global":
        assert sum(zeros) == round(ratio * sum(w.numel() for w in weights))
    else:
        assert zeros == [round(ratio * w.numel()) for w in weights]


# --- a whole trial ---------------------------------------------------------------------------


@pytest.mark.parametrize("switches, precision, channels_last",
                         [(ON, "bf16", True), (OFF, "fp32", False), (AUTO, "fp32", False)],
                         ids=["forced-on", "forced-off", "auto-on-cpu"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_pruned_kd_trial(raw, tmp_path, monkeypatch, scope, switches, precision, channels_last):
    raw["train"].update(switches)
    raw["prune"]["scope"] = scope
    raw["measure"]["latency"] = True
    students = spy_forwards(monkeypatch, trial_mod)
    teachers = spy_forwards(monkeypatch, teacher_mod)
    reports = []
    r = run_trial(trial_config(raw), report=reports.append, checkpoint_dir=tmp_path, **quiet)

    assert [x["phase"] for x in reports] == ["train", "finetune"]
    assert r["precision"] == reports[-1]["precision"] == precision
    assert r["channels_last"] is reports[-1]["channels_last"] is channels_last
    assert r["measure_precision"] == precision and r["measure_channels_last"] is channels_last
    bf16 = precision == "bf16"
    # every student step and evaluation (inference mode), the teacher's training, evaluation and
    # online forwards: all in the resolved precision and layout
    assert_ran([c for c in students if c["training"] or c["inference"]], bf16=bf16,
               channels_last=channels_last, min_calls=2 * 6)
    assert_ran(teachers, bf16=bf16, channels_last=channels_last, min_calls=2 * 6)
    assert any(not c["training"] and not c["inference"] and not c["grad"] for c in teachers)

    model = r["model"]
    assert_exact_sparsity(model, 0.4, scope)
    assert r["sparsity_pruned"] == pytest.approx(0.4, abs=1e-3)
    assert all(is_channels_last(w) == channels_last for w in conv_weights(model))
    fresh = load_student(tmp_path / "student.pt")
    assert_exact_sparsity(fresh, 0.4, scope)  # the zeros survived fine-tuning and saving


@pytest.mark.parametrize("method", ["fitnets", "attention", "dkd", "cosine"])
def test_kd_methods_trial(raw, tmp_path, monkeypatch, method):
    """Feature methods' hooks, regressor and online teacher, and DKD, in bf16 + channels_last,
    channel pruning included (FitNets' regressor is rebuilt for the narrower last stage)."""
    raw["kd"] = {"method": method, "temperature": 4.0}
    raw["prune"]["method"] = "channel"
    students = spy_forwards(monkeypatch, trial_mod)
    teachers = spy_forwards(monkeypatch, teacher_mod)
    r = run_trial(trial_config(raw), checkpoint_dir=tmp_path, **quiet)
    assert r["precision"] == "bf16" and r["channels_last"] is True and r["kd_method"] == method
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in r["history"])
    assert_ran([c for c in students if c["training"] or c["inference"]], bf16=True,
               channels_last=True, min_calls=2 * 6)
    # the teacher's training, evaluation, online forwards and stage probe alike
    assert_ran(teachers, bf16=True, channels_last=True, min_calls=2 * 6)
    assert r["prune_ratio_achieved"] > 0
    assert all(is_channels_last(w) for w in conv_weights(r["model"]) if w.shape[-1] > 1)


def test_no_kd_baseline(raw, monkeypatch):
    monkeypatch.setattr(trial_mod, "prepare_teacher",
                        lambda *a, **k: pytest.fail("teacher built for alpha=0"))
    raw["kd"]["alpha"] = 0.0
    students = spy_forwards(monkeypatch, trial_mod)
    r = run_trial(trial_config(raw), **quiet)
    assert r["teacher_cache"] == "none" and r["teacher_val_acc"] is None
    assert r["precision"] == "bf16" and r["channels_last"] is True
    assert_ran([c for c in students if c["training"]], bf16=True, channels_last=True,
               min_calls=6)
    assert_exact_sparsity(r["model"], 0.4, "global")


def test_view_cache_build(raw, monkeypatch):
    # views cost 162 teacher passes per image: 36 training images
    raw["data"].update(synthetic_train=100)
    raw["teacher"]["cache"] = "views"
    teachers = spy_forwards(monkeypatch, teacher_mod)
    cfg = trial_config(raw)
    r = run_trial(cfg, **quiet)
    assert r["teacher_cache"] == "views" and r["view_cache_build_s"] > 0
    assert r["precision"] == "bf16" and r["channels_last"] is True
    assert_ran([c for c in teachers if c["inference"]], bf16=True, channels_last=True,
               min_calls=162)

    # the cache holds what the teacher computes, in the same precision, for the view trained on
    split = load_split(cfg.data, cfg.cache_dir)
    dd = DeviceData(split, torch.device("cpu"), channels_last=True)
    t = teacher_mod.prepare_teacher(cfg, split, dd, want_views=True, **quiet)
    assert t.cache_hit and t.views.shape == (dd.n_train, 162, 10)
    assert all(is_channels_last(w) for w in conv_weights(t.model))
    for idx, x, _, view in dd.train_batches(16, seed=3):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            online = t.model(x).float()
        torch.testing.assert_close(t.views[idx, view].float(), online, atol=3e-2, rtol=3e-2)


# --- resume ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resume_case(tmp_path_factory):
    raw = {
        "data": {"dataset": "synthetic", "synthetic_train": 200, "synthetic_test": 100,
                 "val_size": 64},
        "student": {"arch": "cnn4", "stem": "cifar"},
        "train": {"epochs": 2, "batch_size": 34, "lr": 0.05, **ON},
        "kd": {"alpha": 0.0},  # the student's own state is what resuming restores
        "prune": {"ratio": 0.3, "scope": "layerwise", "finetune_epochs": 2},
        "measure": {"latency": False},
        "device": "cpu", "cache_dir": str(tmp_path_factory.mktemp("cache")),
    }
    cfg = trial_config(raw)
    return cfg, run_trial(cfg, **quiet)


@pytest.mark.parametrize("stop_after", [1, 3], ids=["mid-train", "mid-finetune"])
def test_resume(resume_case, tmp_path, stop_after):
    cfg, full = resume_case

    resumed, _ = interrupt_then_resume(cfg, tmp_path, stop_after)
    assert [h["train_loss"] for h in resumed["history"]] == \
        pytest.approx([h["train_loss"] for h in full["history"]], rel=1e-5)
    assert resumed["test_acc"] == full["test_acc"]
    assert resumed["precision"] == "bf16" and resumed["channels_last"] is True
    assert_exact_sparsity(resumed["model"], 0.3, "layerwise")
    assert all(is_channels_last(w) for w in conv_weights(resumed["model"]))
    for a, b in zip(conv_weights(resumed["model"]), conv_weights(full["model"])):
        assert torch.equal(a == 0, b == 0)  # the same weights pruned as without the crash


# --- pruning a channels_last model -----------------------------------------------------------


def torch_prune_(model, ratio: float, scope: str) -> None:
    """What kdtune's pruning did before: torch's own L1 pruning."""
    if scope == "global":
        torch_prune.global_unstructured(prunable(model), pruning_method=torch_prune.L1Unstructured,
                                        amount=ratio)
    else:
        for module, name in prunable(model):
            torch_prune.l1_unstructured(module, name, amount=ratio)


def model_with_ties(arch: str):
    torch.manual_seed(0)
    model = create_model(arch)
    with torch.no_grad():  # coarse nonzero values: many equal magnitudes, so ties are tested
        for w in conv_weights(model):
            w.copy_(w.sign() * (w.abs() * 16).ceil() / 16)
    return model


@pytest.mark.parametrize("arch", ["resnet8", "mobilenet_v3_small"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_channels_last_pruning_matches_torch(arch, scope):
    ratio = 0.37
    contiguous = model_with_ties(arch)
    nhwc = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    assert any(is_channels_last(w) for w in conv_weights(nhwc))

    # the original crash, as torch does it
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        torch_prune_(copy.deepcopy(nhwc), ratio, scope)

    golden = copy.deepcopy(contiguous)
    torch_prune_(golden, ratio, scope)
    apply_pruning(nhwc, ratio, scope)
    apply_pruning(contiguous, ratio, scope)
    for (g, _), (c, _), (n, _) in zip(prunable(golden), prunable(contiguous), prunable(nhwc)):
        assert torch.equal(c.weight_mask, g.weight_mask)
        assert torch.equal(n.weight_mask, g.weight_mask)
        assert n.weight_mask.is_contiguous(memory_format=torch.channels_last)
        assert n.weight.is_contiguous(memory_format=torch.channels_last)
    assert_exact_sparsity(nhwc, ratio, scope)

    x = torch.randn(2, 3, 32, 32)
    golden.eval(), nhwc.eval()
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x.contiguous(memory_format=torch.channels_last)),
                                   golden(x), atol=1e-4, rtol=1e-4)
    make_permanent(nhwc)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(nhwc))
    assert sparsity(nhwc) == pytest.approx(sparsity(golden))


def test_pruning_over_identity_masks_keeps_the_layout():
    from kdtune.prune import attach_identity_masks

    model = model_with_ties("resnet8").to(memory_format=torch.channels_last)
    attach_identity_masks(model)  # what resuming mid-fine-tune attaches
    golden = model_with_ties("resnet8")
    torch_prune_(golden, 0.5, "global")
    apply_pruning(model, 0.5, "global")
    for (g, _), (m, _) in zip(prunable(golden), prunable(model)):
        assert torch.equal(m.weight_mask, g.weight_mask)
        assert m.weight_mask.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(m.weight, m.weight_orig * m.weight_mask)  # refreshed, not stale


# --- latency ---------------------------------------------------------------------------------


def test_latency_in_bf16_channels_last(monkeypatch):
    import kdtune.measure as measure_mod

    model = create_model("cnn4").to(memory_format=torch.channels_last)
    apply_pruning(model, 0.5)
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(
        {"cl_input": is_channels_last(args[0]), "dtype": out.dtype,
         "cl_weight": all(map(is_channels_last, conv_weights(m)))}))
    stats = measure_speed(model, "cpu", input_size=32, batch=4, warmup=1, runs=3,
                          bf16=True, channels_last=True)
    assert stats["measure_precision"] == "bf16" and stats["measure_channels_last"] is True
    assert stats["latency_ms_b1"] > 0
    assert_ran(calls, bf16=True, channels_last=True, min_calls=4)
    assert all(c["cl_weight"] for c in calls)
    assert hasattr(model.features[0], "weight_mask")  # the caller's model kept its masks

    calls.clear()
    stats = measure_speed(model, "cpu", input_size=32, batch=4, warmup=1, runs=3,
                          bf16=False, channels_last=False)
    assert stats["measure_precision"] == "fp32" and stats["measure_channels_last"] is False
    assert_ran(calls, bf16=False, channels_last=False, min_calls=4)
    assert not any(c["cl_weight"] for c in calls)
    assert measure_mod.measure_speed(model, "cpu", batch=2, warmup=0, runs=1)[
        "measure_channels_last"] is False  # None: auto, off on CPU
