"""kd.method: each distillation method end to end, its teacher, its keys and what cannot work."""

import json

import pytest
import torch
from conftest import interrupt_then_resume

from kdtune import distill
from kdtune.cli import main
from kdtune.config import (
    KDConfig,
    load_sweep_config,
    load_trial_config,
    trial_config,
)
from kdtune.errors import KDTuneError
from kdtune.measure import count_flops, count_params
from kdtune.models import create_model, feature_stages, list_models, model_family
from kdtune.trial import run_trial

quiet = dict(log=lambda m: None)


@pytest.mark.parametrize("method", ["logit", "fitnets", "attention", "dkd", "cosine"])
def test_each_method_runs_a_trial_end_to_end(tiny_raw, tmp_path, method):
    tiny_raw["kd"]["method"] = method
    if method == "dkd":
        del tiny_raw["kd"]["alpha"]
    tiny_raw["prune"] = {"ratio": 0.3, "finetune_epochs": 1, "method": "channel"}
    cfg = trial_config(tiny_raw)
    r = run_trial(cfg, checkpoint_dir=tmp_path, **quiet)
    assert r["kd_method"] == method
    # chance is 0.1 on the synthetic 10-class data
    assert max(h["val_acc"] for h in r["history"]) > 0.3
    assert [h["phase"] for h in r["history"]] == ["train", "train", "finetune"]
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in r["history"])
    # logit methods on a lone 2-epoch trial: online is cheaper (teacher.cache auto); feature
    # methods are online whatever the cache would be
    assert r["teacher_cache"] == "none"
    if method in ("fitnets", "attention", "cosine"):
        assert r["kd_feature_weight"] == {"fitnets": 100.0, "attention": 1000.0,
                                          "cosine": 1.0}[method]
    else:
        assert r["kd_feature_weight"] is None
    assert r["kd_dkd_warmup_epochs"] == (1 if method == "dkd" else None)
    # the regressor lives beside the student: not in its saved weights, size or FLOPs
    state = torch.load(tmp_path / "student.pt", weights_only=True)["state_dict"]
    assert set(state) == set(create_model("cnn4").state_dict())
    assert r["flops"] == count_flops(r["model"], (1, 3, 32, 32))
    assert r["params"] == count_params(r["model"])["params"]
    # no hook left behind on the returned student
    assert not any(m._forward_hooks for m in r["model"].modules())


def test_methods_train_differently_and_feature_losses_count(tiny_raw):
    tiny_raw["teacher"]["cache"] = "none"
    losses = {}
    for method in ("logit", "fitnets", "attention", "dkd"):
        raw = {**tiny_raw, "kd": {**tiny_raw["kd"], "method": method}}
        if method == "dkd":
            del raw["kd"]["alpha"]
        losses[method] = [h["train_loss"] for h in run_trial(trial_config(raw), **quiet)["history"]]
    # same seed, same data, same teacher: the feature term adds to the logit loss
    assert losses["fitnets"][0] > losses["logit"][0]
    assert losses["attention"][0] > losses["logit"][0]
    assert len({tuple(v) for v in losses.values()}) == 4


def test_feature_weight_zero_is_logit_kd_exactly(tiny_raw):
    tiny_raw["teacher"]["cache"] = "none"
    logit = run_trial(trial_config(tiny_raw), **quiet)
    tiny_raw["kd"].update(method="attention", feature_weight=0.0)
    att = run_trial(trial_config(tiny_raw), **quiet)
    assert [h["train_loss"] for h in att["history"]] == \
        pytest.approx([h["train_loss"] for h in logit["history"]], rel=1e-6)


def test_feature_methods_run_the_teacher_online_on_the_students_batch(tiny_raw, monkeypatch):
    """The teacher sees exactly the student's augmented pixels, every step, and no view
    cache is built."""
    tiny_raw["kd"]["method"] = "attention"
    seen = []
    real_loss = distill.Distiller.loss

    def spy(self, logits, idx, x, y, view):
        fed = []
        hook = self.teacher.model.register_forward_pre_hook(lambda m, a: fed.append(a[0]))
        try:
            out = real_loss(self, logits, idx, x, y, view)
        finally:
            hook.remove()
        assert len(fed) == 1 and torch.equal(fed[0], x)
        seen.append(x.shape[0])
        return out

    monkeypatch.setattr(distill.Distiller, "loss", spy)
    calls = []
    from kdtune import teacher as teacher_mod

    real_prepare = teacher_mod.prepare_teacher

    def prepare(*a, want_views, **k):
        calls.append(want_views)
        return real_prepare(*a, want_views=want_views, **k)

    monkeypatch.setattr("kdtune.trial.prepare_teacher", prepare)
    r = run_trial(trial_config(tiny_raw), **quiet)
    assert calls == [False]  # no view cache built for a feature method
    assert r["teacher_cache"] == "none"
    assert sum(seen) == 2 * 200  # every training image of both epochs (300 - 100 val)


def test_dkd_reads_the_view_cache(tiny_raw):
    tiny_raw["kd"] = {"method": "dkd", "temperature": 4.0}
    tiny_raw["teacher"]["cache"] = "views"
    tiny_raw["data"].update(synthetic_train=120, val_size=20)
    r = run_trial(trial_config(tiny_raw), **quiet)
    assert r["teacher_cache"] == "views" and r["kd_method"] == "dkd"


def test_dkd_warmup_ramps_the_term_in(tiny_raw, monkeypatch):
    tiny_raw["kd"] = {"method": "dkd", "dkd_warmup": 4}
    cfg = trial_config(tiny_raw)
    assert cfg.kd.resolved_dkd_warmup(cfg.train.epochs) == 4
    assert KDConfig(method="dkd").resolved_dkd_warmup(240) == 20  # the paper's ratio
    assert KDConfig(method="dkd").resolved_dkd_warmup(30) == 3  # 2.5 rounds up
    assert KDConfig(method="dkd").resolved_dkd_warmup(3) == 1
    assert KDConfig(method="logit").resolved_dkd_warmup(30) is None
    monkeypatch.setattr(distill, "dkd_loss", lambda *a: torch.tensor(8.0))
    teacher = type("T", (), {"model": create_model("cnn4"), "views": None})()
    d = distill.Distiller(cfg, teacher, "none", torch.device("cpu"), bf16=False, input_size=32,
                          channels_last=False)
    x, y = torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])
    logits = torch.zeros(2, 10)
    ce = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.05)
    # CE + min(epoch / 4, 1) x the DKD term
    for epoch, w in ((1, 0.25), (2, 0.5), (4, 1.0), (6, 1.0)):
        d.epoch = epoch
        assert d.loss(logits, None, x, y, None).item() == pytest.approx(ce.item() + 8 * w)


@pytest.mark.parametrize("method", ["fitnets", "cosine"])
@pytest.mark.parametrize("stop_after", [1, 3])  # mid-training, and mid-fine-tune
def test_resume_continues_exactly_with_the_regressor_or_projection(tiny_raw, tmp_path,
                                                                  stop_after, method):
    tiny_raw["kd"]["method"] = method
    tiny_raw["student"]["arch"] = "resnet8"  # 64-wide embedding vs cnn4's 96: a projection
    tiny_raw["train"]["epochs"] = 2
    tiny_raw["prune"] = {"ratio": 0.3, "finetune_epochs": 2, "method": "channel"}
    cfg = trial_config(tiny_raw)
    full = run_trial(cfg, **quiet)
    resumed, _ = interrupt_then_resume(cfg, tmp_path, stop_after)
    assert [h["train_loss"] for h in resumed["history"]] == \
        pytest.approx([h["train_loss"] for h in full["history"]], rel=1e-5)
    assert resumed["test_acc"] == full["test_acc"]


def _randomise_norms(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("arch", ["cnn4", "resnet20", "mobilenet_v3_small"])
def test_fitnets_regressor_is_rebuilt_for_the_pruned_width(tiny_raw, arch):
    """Channel pruning narrows the student's last stage: the regressor follows, and each
    surviving channel keeps its trained column (MobileNetV3's hidden classifier layer is cut
    too, so the match cannot use the classifier)."""
    from kdtune.distill import _channel_stats
    from kdtune.prune import prune_channels

    cfg = trial_config({**tiny_raw, "kd": {"method": "fitnets"}, "student": {"arch": arch},
                        "teacher": {"arch": "resnet8"}})
    teacher = type("T", (), {"model": create_model("resnet8"), "views": None})()
    student = create_model(arch).eval()
    _randomise_norms(student)  # trained statistics: each channel's are its own
    logs = []
    d = distill.Distiller(cfg, teacher, "none", torch.device("cpu"), bf16=False, input_size=32,
                          channels_last=False, log=logs.append)
    d.attach(student)
    last = feature_stages(arch, student)[-1]
    width = _channel_stats(student, last).shape[0]
    assert (d.regressor[0].in_channels, d.regressor[0].out_channels) == (width, 64)
    with torch.no_grad():
        d.regressor[0].weight.normal_()
    old = d.regressor[0].weight.detach().clone()
    stats_before = _channel_stats(student, last).detach().clone()
    d.before_prune(student)
    prune_channels(student, 0.5, torch.zeros(1, 3, 32, 32), "global", 8)
    d.attach(student)
    stats_after = _channel_stats(student, last).detach()
    assert d.regressor[0].in_channels == stats_after.shape[0] < width
    for j in range(stats_after.shape[0]):
        i = next(i for i in range(width) if torch.equal(stats_before[i], stats_after[j]))
        assert torch.equal(d.regressor[0].weight[:, j], old[:, i])
    assert not logs
    student.train()
    logits = student(torch.randn(4, 3, 32, 32))
    loss = d.loss(logits, None, torch.randn(4, 3, 32, 32), torch.arange(4), None)
    loss.backward()
    assert d.regressor[0].weight.grad is not None
    d.close()


def test_fitnets_regressor_that_cannot_be_matched_starts_afresh_and_says_so(tiny_raw):
    from kdtune.prune import prune_channels

    cfg = trial_config({**tiny_raw, "kd": {"method": "fitnets"}})
    teacher = type("T", (), {"model": create_model("cnn4"), "views": None})()
    student = create_model("cnn4")  # untrained: every norm is (1, 0, 0, 1), nothing to match
    logs = []
    d = distill.Distiller(cfg, teacher, "none", torch.device("cpu"), bf16=False, input_size=32,
                          channels_last=False, log=logs.append)
    d.attach(student)
    d.before_prune(student)
    prune_channels(student, 0.5, torch.zeros(1, 3, 32, 32), "global", 8)
    d.attach(student)
    assert d.regressor[0].in_channels < 96
    assert logs and "regressor starts afresh" in logs[0]


def test_hooks_come_off_a_handed_in_teacher_even_when_the_trial_fails(tiny_raw):
    from kdtune.config import trial_config as tc
    from kdtune.data import DeviceData, load_split
    from kdtune.teacher import prepare_teacher

    cfg = tc({**tiny_raw, "kd": {"method": "attention"}})
    split = load_split(cfg.data, cfg.cache_dir)
    teacher = prepare_teacher(cfg, split, DeviceData(split, torch.device("cpu")), False,
                              log=lambda m: None)

    def boom(row):
        raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        run_trial(cfg, report=boom, split=split, teacher=teacher, **quiet)
    assert not any(m._forward_hooks for m in teacher.model.modules())


@pytest.mark.parametrize("teacher_arch, width", [("cnn4", 96), ("resnet8", 64)])
def test_cosine_projection_follows_the_pruned_embedding(tiny_raw, teacher_arch, width):
    """resnet20's 64-wide embedding: against cnn4 (96) a learned projection from the start;
    against resnet8 (64) none (the identity) until pruning narrows it. Either way the
    surviving features keep their columns, the identity's included."""
    from kdtune.prune import prune_channels

    cfg = trial_config({**tiny_raw, "kd": {"method": "cosine"}, "student": {"arch": "resnet20"},
                        "teacher": {"arch": teacher_arch}})
    teacher = type("T", (), {"model": create_model(teacher_arch), "views": None})()
    student = create_model("resnet20").eval()
    _randomise_norms(student)
    with torch.no_grad():
        student.fc.weight.normal_()
    d = distill.Distiller(cfg, teacher, "none", torch.device("cpu"), bf16=False, input_size=32,
                          channels_last=False)
    d.attach(student)
    if width == 64:
        assert d.projection is None and d.extra_modules() == []
        old = torch.eye(64)
    else:
        assert (d.projection.in_features, d.projection.out_features) == (64, 96)
        old = d.projection.weight.detach().clone()
    fc_before = student.fc.weight.detach().clone()
    d.before_prune(student)
    prune_channels(student, 0.5, torch.zeros(1, 3, 32, 32), "global", 8)
    d.attach(student)
    n = student.fc.in_features
    assert n < 64 and (d.projection.in_features, d.projection.out_features) == (n, width)
    for j in range(n):
        i = next(i for i in range(64) if torch.equal(fc_before[:, i], student.fc.weight[:, j]))
        assert torch.equal(d.projection.weight[:, j], old[:, i])
    student.train()
    x = torch.randn(4, 3, 32, 32)
    teacher.model.eval()
    loss = d.loss(student(x), None, x, torch.arange(4), None)
    loss.backward()
    assert d.projection.weight.grad is not None
    d.close()


# --- what the config accepts -----------------------------------------------------------------


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_baselines_give_each_method_a_kd_twin_and_no_grid_duplicates(tmp_path):
    from kdtune.sweep.plan import baseline_configs, n_trials

    space = "    kd.method: {type: choice, values: [logit, dkd]}\n"
    text = SWEEP.replace("{KD}", "{}").replace("{SPACE}", space).replace(
        "  num_samples: 2", "  num_samples: 2\n  baseline: true")
    sw = load_sweep_config(_write(tmp_path, text))
    runs = baseline_configs(sw)
    assert [(r["kd.alpha"], r.get("kd.method")) for r in runs] == \
        [(0.0, None), (0.9, "logit"), (0.9, "dkd")]
    assert n_trials(sw) == 2 + 3
    grid = text.replace("type: choice", "type: grid").replace(
        "  num_samples: 2", "  num_samples: 2\n  sampler: grid")
    # under ASHA a grid point may be stopped, a baseline never: the twins stay
    sw = load_sweep_config(_write(tmp_path, grid))
    assert len(baseline_configs(sw)) == 3
    sw = load_sweep_config(_write(tmp_path, grid + "  scheduler: fifo\n"))
    assert [r["kd.alpha"] for r in baseline_configs(sw)] == [0.0]  # twins = the grid points
    assert n_trials(sw) == 2 + 1


@pytest.mark.parametrize("text,msg", [
    ("kd: {method: dkd, alpha: 0.5}\n", "kd.alpha: not used by kd.method: dkd"),
    ("kd: {method: logit, feature_weight: 10}\n",
     "kd.feature_weight: applies to kd.method: fitnets, attention, cosine only"),
    ("kd: {method: attention, dkd_beta: 2}\n", "kd.dkd_beta: applies to kd.method: dkd only"),
    ("kd: {method: fitnets}\nteacher: {cache: views}\n",
     "teacher.cache: views cannot serve kd.method: fitnets"),
    ("kd: {method: crd}\n",
     "kd.method: got 'crd'; allowed: logit, fitnets, attention, dkd, cosine"),
])
def test_trial_config_refuses_keys_of_another_method(tmp_path, text, msg):
    with pytest.raises(KDTuneError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_trial_config(_write(tmp_path, text))


def test_trial_config_accepts_each_methods_own_keys(tmp_path):
    load_trial_config(_write(tmp_path, "kd: {method: dkd, dkd_beta: 2, dkd_warmup: 3}\n"))
    load_trial_config(_write(tmp_path, "kd: {method: dkd, alpha: 0}\n"))  # the no-KD switch
    load_trial_config(_write(tmp_path, "kd: {method: fitnets, feature_weight: 50}\n"))
    cfg = load_trial_config(_write(tmp_path, "kd: {method: logit}\n"),
                            overrides=[("kd.method", "attention"), ("kd.feature_weight", 5.0)])
    assert cfg.kd.resolved_feature_weight() == 5.0
    with pytest.raises(KDTuneError, match="kd.alpha: not used by kd.method: dkd"):
        load_trial_config(_write(tmp_path, "kd: {alpha: 0.5}\n"), overrides=[("kd.method", "dkd")])
    # every key at its default, as a run's resolved config writes them: changes nothing
    load_trial_config(_write(tmp_path, "kd: {method: logit, alpha: 0.9, feature_weight: null, "
                                       "dkd_alpha: 1.0, dkd_beta: 8.0, dkd_warmup: null}\n"))
    load_trial_config(_write(tmp_path, "kd: {method: dkd, alpha: 0.9}\n"))


SWEEP = """
data: {dataset: synthetic}
teacher: {arch: cnn4, epochs: 1}
student: {arch: cnn4}
train: {epochs: 1}
kd: {KD}
search:
  space:
{SPACE}
  num_samples: 2
"""


def _sweep(tmp_path, kd, space):
    return load_sweep_config(_write(tmp_path, SWEEP.replace("{KD}", kd).replace("{SPACE}", space)))


def test_sweep_method_keys_apply_to_their_methods_trials(tmp_path):
    sw = _sweep(tmp_path, "{method: logit}",
                "    kd.method: {type: choice, values: [logit, fitnets, attention, dkd]}\n"
                "    kd.alpha: {type: uniform, low: 0.1, high: 0.9}\n"
                "    kd.dkd_beta: {type: choice, values: [2, 8]}\n"
                "    kd.feature_weight: {type: loguniform, low: 10, high: 1000}")
    assert set(sw.space) == {"kd.method", "kd.alpha", "kd.dkd_beta", "kd.feature_weight"}
    with pytest.raises(KDTuneError, match=r"search.space.kd.alpha: not used by kd.method: dkd"):
        _sweep(tmp_path, "{method: dkd}", "    kd.alpha: {type: uniform, low: 0.1, high: 0.9}")
    with pytest.raises(KDTuneError, match=r"search.space.kd.dkd_beta: applies to kd.method: dkd"):
        _sweep(tmp_path, "{method: logit}",
               "    kd.method: {type: choice, values: [logit, fitnets]}\n"
               "    kd.dkd_beta: {type: choice, values: [2, 8]}")
    with pytest.raises(KDTuneError, match=r"kd.feature_weight: applies"):
        _sweep(tmp_path, "{method: logit, feature_weight: 3}",
               "    kd.temperature: {type: choice, values: [2, 4]}")
    # views in a sweep that also runs logit methods: for their trials only (see the sweep test)
    views = SWEEP.replace("teacher: {arch: cnn4, epochs: 1}",
                          "teacher: {arch: cnn4, epochs: 1, cache: views}")
    load_sweep_config(_write(tmp_path, views.replace("{KD}", "{}").replace(
        "{SPACE}", "    kd.method: {type: choice, values: [logit, fitnets]}")))
    with pytest.raises(KDTuneError, match=r"^teacher.cache: views cannot serve kd.method: "
                                          r"attention / fitnets"):
        load_sweep_config(_write(tmp_path, views.replace("{KD}", "{}").replace(
            "{SPACE}", "    kd.method: {type: choice, values: [fitnets, attention]}")))
    # alpha 0 in the base, but baseline: true runs a fitnets KD twin
    with pytest.raises(KDTuneError, match=r"^teacher.cache: views cannot serve"):
        load_sweep_config(_write(tmp_path, views.replace("{KD}", "{method: fitnets, alpha: 0}")
                                 .replace("{SPACE}", "    kd.temperature: {type: choice, "
                                          "values: [2, 4]}")
                                 .replace("  num_samples: 2", "  num_samples: 2\n"
                                          "  baseline: true")))


# --- method x architecture ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", [m for m in list_models() if model_family(m) == "cnn"])
def test_every_registry_cnn_names_its_stages(arch):
    model = create_model(arch, stem="cifar")
    names = feature_stages(arch, model)
    shapes = distill.stage_shapes(model, names, 32)
    assert len(shapes) >= 3
    assert [s[1] for s in shapes] == sorted((s[1] for s in shapes), reverse=True)
    # the last stage is the map the classifier pools: its channels feed the classifier
    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0]
    assert shapes[-1][0] == last_linear.in_features


def test_attention_pairs_deepest_stages_and_drops_1x1():
    s = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    t = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert distill.attention_pairs(s, t) == [(0, 1), (1, 2), (2, 3)]
    t1 = [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]
    assert distill.attention_pairs(s, t1) == [(0, 1), (1, 2)]


def test_validate_refuses_attention_where_every_stage_is_1x1(tmp_path, capsys):
    text = ("kd: {method: attention}\nteacher: {arch: resnet18, stem: standard}\n"
            "student: {arch: mobilenet_v3_small, stem: standard}\n")
    # mobilenet standard at 32 px: 8, 4, 2, 1; resnet18 standard: 8, 4, 2, 1 -> pairs live
    assert main(["validate", str(_write(tmp_path, text))]) == 0
    text = ("kd: {method: attention}\nteacher: {arch: cnn4, stem: standard}\n"
            "student: {arch: cnn4, stem: standard}\n"
            "data: {dataset: synthetic}\n")
    assert main(["validate", str(_write(tmp_path, text))]) == 0
    cfg = trial_config({"kd": {"method": "attention"}})
    distill.check_method(cfg, input_size=32)
    # resnet20 at 2 px: 2, 1, 1; resnet18: 2, 1, 1, 1 -> every depth-aligned pair has a 1x1
    with pytest.raises(KDTuneError, match="kd.method: attention cannot work for student "
                                          "resnet20/cifar <- teacher resnet18/cifar at 2 px"):
        distill.check_method(cfg, input_size=2)


def test_validate_refuses_a_method_architecture_pair_in_a_sweep(tmp_path, capsys):
    # at 8 px resnet18's standard stem leaves 2, 1, 1, 1 and resnet8's 2, 1, 1: every
    # depth-aligned pair has a 1x1 side
    text = SWEEP.replace("{KD}", "{method: logit}").replace(
        "{SPACE}", "    kd.method: {type: choice, values: [logit, attention]}\n"
                   "    student.arch: {type: choice, values: [resnet8, resnet20]}\n").replace(
        "data: {dataset: synthetic}", "data: {dataset: synthetic, resize: 8}").replace(
        "teacher: {arch: cnn4, epochs: 1}", "teacher: {arch: resnet18, stem: standard}").replace(
        "student: {arch: cnn4}", "student: {arch: resnet8, stem: standard}")
    path = _write(tmp_path, text)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "kd.method: attention cannot work for student resnet8/standard" in err
    with pytest.raises(KDTuneError, match="resnet8/standard"):
        from kdtune.sweep.plan import check_methods
        check_methods(load_sweep_config(path))


# --- one sweep over the four methods ---------------------------------------------------------


def test_one_sweep_mixes_methods_each_with_the_teacher_it_needs(tmp_path):
    import subprocess

    import pandas as pd
    from test_sweep import BASE, cli_env, kdtune_cmd, write_sweep

    search = {"name": "methods", "sampler": "grid", "seeds": [0], "baseline": True,
              "max_concurrent": 2, "scheduler": "fifo",
              "space": {"kd.method": {"type": "grid",
                                      "values": ["logit", "fitnets", "attention", "dkd"]}}}
    # 200 training images: the view cache is the teacher's forward pass over all 162 views of
    # each (31 s for BASE's 400 on 2 cores, most of this test's time)
    space = write_sweep(tmp_path, search, tmp_path / "cache",
                        data={**BASE["data"], "synthetic_train": 260, "val_size": 60},
                        teacher={"arch": "cnn4", "stem": "cifar", "epochs": 2, "batch_size": 64,
                                 "cache": "views"},
                        train={**BASE["train"], "epochs": 1})
    out = tmp_path / "run"
    proc = subprocess.run(kdtune_cmd("sweep", space, "--out", out), capture_output=True,
                          text=True, env=cli_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "teacher cache: view cache for logit, dkd, online teacher for fitnets, attention" \
        in proc.stdout
    df = pd.read_parquet(out / "trials.parquet")
    # 4 methods + per arch x stem (1 x 1) the no-KD run; each method's KD twin would be its
    # grid point again, so the grid point is the twin
    assert len(df) == 4 + 1 and (df["status"] == "completed").all()
    kd = df[df["kd.alpha"] > 0]
    for method, mode in (("logit", "views"), ("dkd", "views"), ("fitnets", "none"),
                         ("attention", "none")):
        rows = kd[kd["kd.method"] == method]
        assert len(rows) == 1 and (rows["teacher_cache"] == mode).all(), (method, rows)
        assert (rows["kd_method"] == method).all() and rows["train_step_ms"].gt(0).all()
    no_kd = df[df["kd.alpha"] == 0]
    assert len(no_kd) == 1 and no_kd["teacher_cache"].iloc[0] == "none"
    teachers = json.loads((out / "teachers.json").read_text())
    assert len(teachers) == 1 and teachers[0]["view_cache"]
    # the run's resolved sweep.yaml (every kd key written out) reads back as a sweep
    assert load_sweep_config(out / "sweep.yaml").space["kd.method"].values[-1] == "dkd"


def test_bench_times_each_method_against_logit_kd_on_the_view_cache(tiny_raw):
    from kdtune.bench import bench_teacher
    from kdtune.data import load_split

    tiny_raw["data"].update(synthetic_train=80, val_size=20)
    cfg = trial_config(tiny_raw)
    split = load_split(cfg.data, cfg.cache_dir)
    report = bench_teacher(cfg, split, torch.device("cpu"), steps=2)
    rows = {(r["method"], r["teacher"]): r for r in report["methods"]}
    assert set(rows) == {("logit", "view cache"), ("dkd", "view cache"), ("logit", "online"),
                         ("fitnets", "online"), ("attention", "online"), ("cosine", "online")}
    assert rows[("logit", "view cache")]["vs_logit_views"] == 1.0
    assert all(r["step_ms"] > 0 for r in rows.values())
