"""ViT students and teachers, their recipe, and teacher ensembles (issue 13), on tiny synthetic
data: a CIFAR-10 epoch of ViT-Tiny takes over half an hour on a 2-core CPU."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from kdtune.config import load_sweep_config, load_trial_config, sweep_config, trial_config
from kdtune.errors import KDTuneError
from kdtune.losses import ensemble_logits, kd_loss
from kdtune.models import create_model, feature_stages, load_student, model_family
from kdtune.prune import output_layer
from kdtune.train import make_optimizer, make_schedule
from kdtune.trial import run_trial

quiet = dict(log=lambda m: None)


def vit_raw(raw: dict, **sections) -> dict:
    """tiny_raw (200 train images after the 100 held out for val) with changes."""
    raw = copy.deepcopy(raw)
    for section, changes in sections.items():
        raw.setdefault(section, {}).update(changes)
    if raw["student"]["arch"].startswith("vit"):
        raw["train"].pop("lr")  # the ViT recipe's own
    return raw


# --- the models ------------------------------------------------------------------------------


def test_vit_sizes_shapes_and_what_they_lack():
    tiny, half = create_model("vit_tiny"), create_model("vit_tiny_d6")
    # 12 and 6 blocks of width 192 (3 heads), patch 4: 64 tokens + the class token
    assert sum(p.numel() for p in tiny.parameters()) == 5_362_762
    assert sum(p.numel() for p in half.parameters()) == 2_693_578
    assert len(tiny.blocks) == 12 and len(half.blocks) == 6
    assert tiny.pos_embed.shape == (1, 65, 192) and tiny.blocks[0].attn.heads == 3
    assert model_family("vit_tiny") == "vit" and model_family("resnet20") == "cnn"
    with torch.no_grad():
        assert half.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        # another input size interpolates the position embeddings
        assert half(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert output_layer(half) is half.head  # what cosine distillation hooks
    with pytest.raises(KDTuneError, match="no registered feature stages"):
        feature_stages("vit_tiny_d6", half)
    with pytest.raises(KDTuneError, match="no stem"):
        create_model("vit_tiny", stem="standard")


def test_vit_runs_in_bf16_channels_last_on_cpu():
    model = create_model("vit_tiny_d6").to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out.float()).all()


# --- the recipe ------------------------------------------------------------------------------


def test_each_family_gets_its_recipe_unless_written():
    cnn = trial_config({"student": {"arch": "resnet8"}, "teacher": {"arch": "vit_tiny",
                                                                    "epochs": 20}})
    assert (cnn.train.optimizer, cnn.train.lr, cnn.train.weight_decay,
            cnn.train.warmup_epochs) == ("sgd", 0.1, 5e-4, 0.0)
    assert (cnn.teacher.optimizer, cnn.teacher.lr, cnn.teacher.weight_decay,
            cnn.teacher.warmup_epochs) == ("adamw", 1e-3, 0.05, 2.0)
    assert cnn.train.cutout == 0
    vit = trial_config({"student": {"arch": "vit_tiny_d6"}, "train": {"epochs": 100}})
    assert (vit.train.optimizer, vit.train.lr, vit.train.weight_decay) == ("adamw", 1e-3, 0.05)
    assert vit.train.cutout == 16
    assert vit.train.warmup_epochs == 5.0  # 10 % of the epochs, at most DeiT's 5
    assert trial_config({"student": {"arch": "vit_tiny_d6"},
                         "train": {"epochs": 6}}).train.warmup_epochs == 0.6
    mine = trial_config({"student": {"arch": "vit_tiny_d6"},
                         "train": {"lr": 3e-4, "optimizer": "sgd", "warmup_epochs": 0}})
    assert (mine.train.optimizer, mine.train.lr, mine.train.warmup_epochs) == ("sgd", 3e-4, 0)


def test_sweep_resolves_the_recipe_per_trial_arch():
    from kdtune.sweep.plan import trial_cfg

    sw = sweep_config({"student": {"arch": "resnet8"}, "search": {"space": {
        "student.arch": {"type": "choice", "values": ["resnet8", "vit_tiny_d6"]}}}})
    assert sw.base.train.optimizer is None  # the base stays unresolved
    base = sw.base.to_dict()
    assert trial_cfg(base, {"student.arch": "vit_tiny_d6"}).train.optimizer == "adamw"
    assert trial_cfg(base, {"student.arch": "resnet8"}).train.optimizer == "sgd"


def test_warmup_ramps_linearly_then_decays():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = make_schedule(opt, "cosine", 1.0, total_steps=14, warmup_steps=4)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # then the cosine over the remaining 10 steps
    assert lrs[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])


def test_adamw_does_not_decay_norms_biases_or_embeddings():
    model = create_model("vit_tiny_d6")
    opt = make_optimizer(model, "adamw", 1e-3, 0.05)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert id(model.head.weight) in decay and id(model.blocks[0].mlp[0].weight) in decay
    for p in (model.pos_embed, model.cls_token, model.norm.weight, model.head.bias):
        assert id(p) not in decay


def test_cutout_erases_one_square_per_image_and_nothing_else():
    from kdtune.config import DataConfig
    from kdtune.data import DeviceData, load_split

    split = load_split(DataConfig(dataset="synthetic", synthetic_train=300, val_size=100),
                       "/tmp/kdtune-test-cutout")
    dd = DeviceData(split, torch.device("cpu"))
    plain = list(dd.train_batches(50, seed=3))
    cut = list(dd.train_batches(50, seed=3, cutout=8))
    for (i0, x0, y0, v0), (i1, x1, y1, v1) in zip(plain, cut):
        # the same images, views and labels: cutout draws after them
        assert torch.equal(i0, i1) and torch.equal(v0, v1) and torch.equal(y0, y1)
        changed = (x0 != x1).any(1)  # (B, H, W)
        for img in range(len(i0)):
            ys, xs = changed[img].nonzero(as_tuple=True)
            if len(ys):  # a rectangle of at most 8 x 8 (clipped at the border) ...
                h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
                assert h <= 8 and w <= 8 and len(ys) <= h * w
            # ... whose pixels are the data's mean colour, 0 once normalised
            assert x1[img][:, changed[img]].abs().max() < 0.03 if len(ys) else True
        assert changed.float().mean() > 0.03  # about 8 x 8 / 32 x 32, less where clipped


def test_cutout_runs_the_teacher_online():
    from kdtune.distill import teacher_mode

    cfg = trial_config({"student": {"arch": "vit_tiny_d6"}})
    assert teacher_mode(cfg, "views") == "none"
    cfg.train.cutout = 0
    assert teacher_mode(cfg, "views") == "views"


def test_onecycle_with_warmup_is_refused():
    with pytest.raises(KDTuneError, match="train.warmup_epochs: applies to train.schedule: "
                                          "cosine only"):
        trial_config({"train": {"schedule": "onecycle", "warmup_epochs": 2}})


# --- what a ViT cannot do, and ensemble keys -------------------------------------------------


@pytest.mark.parametrize("raw, needle", [
    ({"student": {"arch": "vit_tiny_d6", "stem": "standard"}},
     "student.stem: vit_tiny_d6 is a vision transformer and has no stem"),
    ({"teacher": {"arch": "vit_tiny", "stem": "standard"}},
     "teacher.stem: vit_tiny is a vision transformer"),
    ({"teacher": {"ensemble": ["resnet8", {"arch": "vit_tiny", "stem": "standard"}]}},
     r"teacher.ensemble\[1\].stem: vit_tiny is a vision transformer"),
    ({"student": {"arch": "vit_tiny_d6"}, "prune": {"ratio": 0.3, "method": "channel"}},
     "prune.method: channel cannot prune vit_tiny_d6"),
    ({"student": {"arch": "vit_tiny_d6"}, "prune": {"ratio": 0.3}},
     "prune.include_linear: vit_tiny_d6 is a vision transformer"),
    ({"teacher": {"arch": "vit_tiny", "cache": "views"}},
     "teacher.cache: views: vit_tiny is a vision transformer"),
    ({"teacher": {"ensemble": ["resnet8", "vit_tiny"], "cache": "views"}},
     "teacher.cache: views: vit_tiny is a vision transformer"),
    ({"teacher": {"ensemble": ["resnet8", "resnet20"]}, "kd": {"method": "fitnets"}},
     "kd.method: fitnets cannot distil from teacher.ensemble"),
    ({"teacher": {"ensemble": ["resnet8", "resnet20"]}, "kd": {"method": "cosine"}},
     "kd.method: cosine cannot distil from teacher.ensemble"),
    ({"teacher": {"ensemble": ["resnet8", {"arch": "resnet20", "cache": "none"}]}},
     r"teacher.ensemble\[1\].cache: unknown key; allowed: arch, stem"),
    ({"teacher": {"ensemble": ["resnet8", "resnet9"]}},
     r"teacher.ensemble\[1\].arch: got 'resnet9'; allowed: .*vit_tiny"),
    ({"teacher": {"ensemble": []}}, "teacher.ensemble: expected a list of teachers"),
    ({"teacher": {"ensemble": [{"stem": "cifar"}]}},
     r"teacher.ensemble\[0\].arch: required"),
    ({"teacher": {"ensemble": [["resnet8"]]}},
     r"teacher.ensemble\[0\]: expected a mapping with arch"),
    ({"student": {"arch": "vit_tiny_d6"}, "teacher": {"cache": "views"}},
     "teacher.cache: views cannot serve train.cutout: 16"),
])
def test_trial_config_refusals_name_the_key(tmp_path, raw, needle):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(KDTuneError, match=needle):
        load_trial_config(path)


def test_a_vit_prunes_its_linear_layers_and_reloads(tiny_raw, tmp_path):
    raw = vit_raw(tiny_raw, student={"arch": "vit_tiny_d6"},
                  prune={"ratio": 0.3, "finetune_epochs": 1, "include_linear": True})
    raw["train"]["epochs"] = 1
    r = run_trial(trial_config(raw), checkpoint_dir=tmp_path, **quiet)
    assert r["sparsity_pruned"] == pytest.approx(0.3, abs=0.01)
    reloaded = load_student(tmp_path / "student.pt")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), r["model"].eval()(x), atol=1e-5)


@pytest.mark.parametrize("space, needle", [
    ({"stem": {"type": "choice", "values": ["cifar", "standard"]},
      "student.arch": {"type": "choice", "values": ["resnet8", "vit_tiny_d6"]}},
     "search.space.stem: vit_tiny_d6 .student. is a vision transformer and has no stem"),
    ({"teacher.stem": {"type": "choice", "values": ["cifar", "standard"]},
      "teacher.ensemble": {"type": "choice", "values": [None, ["resnet8", "vit_tiny"]]}},
     "search.space.teacher.stem: vit_tiny .teacher. is a vision transformer"),
    ({"kd.method": {"type": "choice", "values": ["fitnets", "cosine"]}},
     "every pair skipped, nothing would run: kd.method: cosine cannot distil from "
     "teacher.ensemble"),
])
def test_sweep_refusals(space, needle):
    raw = {"teacher": {"ensemble": ["resnet8", "resnet20"]} if "kd.method" in space else {},
           "search": {"space": space}}
    with pytest.raises(KDTuneError, match=needle):
        sweep_config(raw)


def test_a_one_teacher_list_is_that_teacher():
    cfg = trial_config({"teacher": {"arch": "resnet18", "epochs": 7,
                                    "ensemble": [{"arch": "vit_tiny", "epochs": 3}]}})
    assert cfg.teacher.ensemble is None
    assert (cfg.teacher.arch, cfg.teacher.epochs, cfg.teacher.optimizer) == \
        ("vit_tiny", 3, "adamw")
    assert cfg.teacher.name() == "vit_tiny"
    two = trial_config({"teacher": {"epochs": 7, "ensemble": ["resnet20", "vit_tiny"]}})
    assert two.teacher.name() == "ensemble resnet20/cifar + vit_tiny"
    # members inherit what they leave out from the teacher section, each its own recipe
    assert [(m.epochs, m.optimizer) for m in two.teacher.members()] == [(7, "sgd"),
                                                                         (7, "adamw")]
    # a resolved config reads back as written
    again = trial_config(two.to_dict())
    assert again == two


# --- the ensemble's loss --------------------------------------------------------------------


def test_ensemble_logits_soften_to_the_members_mean():
    torch.manual_seed(0)
    z = torch.randn(5, 3, 10) * 4
    for t in (1.0, 4.0):
        mean = F.softmax(z / t, -1).mean(1)
        assert torch.allclose(F.softmax(ensemble_logits(z, t) / t, -1), mean, atol=1e-6)
    # a hand value: members certain of class 0 and of class 1 -> 50/50 over those two
    z = torch.tensor([[[100.0, 0.0], [0.0, 100.0]]])
    assert torch.allclose(F.softmax(ensemble_logits(z, 1.0), -1), torch.tensor([[0.5, 0.5]]))
    # and KD from it is KL(mean || student) x T^2, as Hinton et al. average the ensemble
    s, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    z = torch.randn(4, 2, 10)
    p = F.softmax(z / 4, -1).mean(1)
    kl = (p * (p.log() - F.log_softmax(s / 4, -1))).sum(1).mean() * 16
    assert kd_loss(s, ensemble_logits(z, 4.0), y, 4.0, 1.0) == pytest.approx(kl.item(), rel=1e-5)


# --- trials across CNN and ViT, and from an ensemble ---------------------------------------


@pytest.mark.parametrize("student, teacher, method", [
    ("vit_tiny_d6", "cnn4", "logit"),  # with the CUDA switches forced on (bf16, NHWC)
    ("cnn4", "vit_tiny_d6", "dkd"),
    ("cnn4", "vit_tiny_d6", "cosine"),   # widths 96 -> 192: a projection
    ("vit_tiny_d6", "vit_tiny_d6", "cosine"),  # equal widths: none
])
def test_distillation_across_cnn_and_vit(tiny_raw, student, teacher, method):
    raw = vit_raw(tiny_raw, student={"arch": student},
                  teacher={"arch": teacher, "epochs": 1 if teacher.startswith("vit") else 3},
                  kd={"method": method})
    if method == "logit":
        raw["train"].update(precision="bf16", channels_last=True)
    if method == "dkd":
        raw["kd"].pop("alpha")
    r = run_trial(trial_config(raw), **quiet)
    assert r["kd_method"] == method and r["teacher_name"] == (
        teacher if teacher.startswith("vit") else f"{teacher}/cifar")
    assert r["teacher_cache"] == "none"  # ViT teachers and cosine run online
    assert r["student_family"] == model_family(student)
    assert all(math.isfinite(h["train_loss"]) for h in r["history"])
    assert r["test_acc"] > 0.15  # chance is 0.1 on the synthetic 10-class data
    if method == "logit":
        assert (r["precision"], r["channels_last"]) == ("bf16", True)



def test_ensemble_members_prepared_once_views_stacked_and_loss_uses_the_mean(tiny_raw,
                                                                             tmp_path):
    from kdtune.data import DeviceData, load_split
    from kdtune.distill import Distiller
    from kdtune.teacher import prepare_teacher

    raw = copy.deepcopy(tiny_raw)
    raw["teacher"].update(ensemble=["cnn4", {"arch": "resnet8", "epochs": 2}], cache="views")
    raw["data"]["augment"] = False  # one view per image: the stacking, not 162 views, is tested
    cfg = trial_config(raw)
    split = load_split(cfg.data, cfg.cache_dir)
    dd = DeviceData(split, torch.device("cpu"), augment=False)
    logs = []
    ens = prepare_teacher(cfg, split, dd, want_views=True, log=logs.append)
    assert ens.views.shape == (dd.n_train, 1, 2, 10)
    assert [m["name"] for m in ens.members] == ["cnn4/cifar", "resnet8/cifar"]
    assert ens.test_acc > 0.3
    # each member has its own cache folder, and a second preparation trains nothing
    folders = [p for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir()]
    assert len(folders) == 2
    logs.clear()
    prepare_teacher(cfg, split, dd, want_views=True, log=logs.append)
    assert sum("cache hit" in m for m in logs) == 2 and not any("trained" in m for m in logs)
    # the step's teacher target: the members' mean T-softened probabilities, per view
    distiller = Distiller(cfg, ens, "views", torch.device("cpu"), bf16=False, input_size=32,
                          channels_last=False)
    idx, view = torch.tensor([0, 5, 7]), torch.tensor([0, 0, 0])
    t = distiller._teacher_logits(idx, None, view)
    mean = F.softmax(ens.views[idx, view].float() / 4, -1).mean(1)
    assert torch.allclose(F.softmax(t / 4, -1), mean, atol=1e-3)
    # a whole trial on it
    r = run_trial(cfg, teacher=ens, cache_mode="views", **quiet)
    assert r["teacher_name"] == "ensemble cnn4/cifar + resnet8/cifar"
    assert json.loads(r["teacher_members"])[1]["name"] == "resnet8/cifar"
    assert r["teacher_cache"] == "views" and r["test_acc"] > 0.2


def test_sweep_skips_ensemble_x_feature_method_and_counts_the_rest(tmp_path):
    from kdtune.sweep.plan import baseline_configs, n_trials, skip_note, skipped

    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "teacher": {"arch": "cnn4"},
        "search": {"sampler": "grid", "scheduler": "fifo", "baseline": True, "space": {
            "teacher.ensemble": {"type": "grid", "values": [["cnn4"], ["cnn4", "resnet8"]]},
            "kd.method": {"type": "grid", "values": ["logit", "cosine"]}}}}))
    sw = load_sweep_config(space)
    assert skipped(sw, {"teacher.ensemble": json.dumps(["cnn4", "resnet8"]),
                        "kd.method": "cosine"})
    assert not skipped(sw, {"teacher.ensemble": json.dumps(["cnn4"]), "kd.method": "cosine"})
    assert "skipping 1 combination(s)" in skip_note(sw)
    # 4 grid points - 1 skipped, + 1 no-KD run (the twins are grid points already)
    assert n_trials(sw) == 3 + 1
    assert len(baseline_configs(sw)) == 1


def test_export_reads_a_trial_config_with_a_searched_ensemble_back(tmp_path):
    from kdtune.export import _row_config

    raw = {"teacher": {"arch": "cnn4"}, "search": {"space": {
        "teacher.ensemble": {"type": "choice", "values": [["cnn4"], ["cnn4", "resnet8"]]},
        "student.arch": {"type": "choice", "values": ["resnet8", "vit_tiny_d6"]}}}}
    sw = sweep_config(raw)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(
        {**sw.base.to_dict(), "search": {"space": raw["search"]["space"]}}))
    trial = trial_config(sw.base.to_dict(), [("teacher.ensemble", ["cnn4", "resnet8"]),
                                             ("student.arch", "vit_tiny_d6")])
    row = trial.flat()  # as the sweep writer stores it: the ensemble as JSON text
    row["teacher.ensemble"] = json.dumps(row["teacher.ensemble"])
    cfg = _row_config(tmp_path, row)
    assert cfg == trial
    assert cfg.teacher.name() == "ensemble cnn4/cifar + resnet8/cifar"
    assert cfg.train.optimizer == "adamw"  # resolved for the trial's own student


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_the_searcher_never_issues_a_skipped_pair(tmp_path, sampler):
    from kdtune.sweep.plan import n_trials, skipped
    from kdtune.sweep.space import SeededSearch

    grid = sampler == "grid"
    kind = "grid" if grid else "choice"
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"teacher": {"arch": "cnn4"}, "search": {
        "sampler": sampler, "scheduler": "fifo", "num_samples": 6, "seeds": [0, 1],
        "space": {"teacher.ensemble": {"type": kind, "values": [["cnn4"], ["cnn4", "resnet8"]]},
                  "kd.method": {"type": kind, "values": ["logit", "cosine", "dkd"]}}}}))
    sw = load_sweep_config(space)
    searcher = SeededSearch(sw)
    issued = []
    for i in range(n_trials(sw) + 3):
        cfg = searcher.suggest(f"t{i}")
        if not isinstance(cfg, dict):
            break
        issued.append(cfg)
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5})
    assert len(issued) == n_trials(sw) == (5 if grid else 6) * 2
    assert not any(skipped(sw, c) for c in issued)
    if grid:  # every other pair, once per seed
        pairs = {(c["teacher.ensemble"], c["kd.method"], c["seed"]) for c in issued}
        assert len(pairs) == 10


def test_review_fixes_sweep_twins_teachers_and_checks(tmp_path):
    from kdtune.sweep.plan import baseline_configs, check_methods, teacher_configs

    def sweep(teacher, space, **search):
        raw = {"teacher": teacher, "search": {"space": space, **search}}
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_sweep_config(path)

    # a base ensemble's cosine twin is skipped like a searched pair (it never trains on one
    # member's embedding)
    sw = sweep({"ensemble": ["resnet8", "cnn4"]},
               {"teacher.ensemble": {"type": "choice", "values": [["resnet8"],
                                                                 ["resnet8", "cnn4"]]},
                "kd.method": {"type": "choice", "values": ["logit", "cosine"]}}, baseline=True)
    assert [b.get("kd.method") for b in baseline_configs(sw) if b["kd.alpha"]] == ["logit"]
    # a KD twin's teacher (the base section) is prepared even when the space does not list it
    sw = sweep({"arch": "resnet8"}, {"teacher.ensemble": {"type": "choice", "values": [
        ["cnn4"], ["cnn4", "resnet8"]]}}, baseline=True)
    names = [c.teacher.name() for c in teacher_configs(sw, sw.base.to_dict())]
    assert sorted(names) == ["cnn4/cifar", "ensemble cnn4/cifar + resnet8/cifar",
                             "resnet8/cifar"]
    # validate sees a ViT that arrives through a searched one-teacher list
    sw = sweep({"arch": "resnet8"}, {
        "teacher.ensemble": {"type": "choice", "values": [["resnet8"], ["vit_tiny_d6"]]},
        "kd.method": {"type": "choice", "values": ["logit", "fitnets"]}})
    with pytest.raises(KDTuneError, match="fitnets cannot work for .* vit_tiny_d6"):
        check_methods(sw)
    # only feature methods: the single-teacher pairs still run, the ensemble ones are skipped
    sw = sweep({"arch": "resnet8"}, {
        "teacher.ensemble": {"type": "choice", "values": [["resnet8"], ["resnet8", "cnn4"]]},
        "kd.method": {"type": "choice", "values": ["fitnets", "cosine"]}})
    assert len(sw.skip) == 2
    with pytest.raises(KDTuneError, match="every pair skipped"):
        sweep({"ensemble": ["resnet8", "cnn4"]},
              {"kd.method": {"type": "choice", "values": ["fitnets", "cosine"]}})


def test_review_fixes_members_and_messages():
    from kdtune.data import Split
    from kdtune.teacher import member_configs, teacher_key

    split = Split.__new__(Split)
    split.identity = "x"
    one = trial_config({"teacher": {"arch": "resnet8", "weight_decay": 0.0,
                                    "warmup_epochs": 1.0}})
    ens = trial_config({"teacher": {"ensemble": [{"arch": "resnet8", "weight_decay": 0,
                                                  "warmup_epochs": 1}, "cnn4"]}})
    # a member written with integers is the same teacher (the same cache entry)
    assert teacher_key(member_configs(ens)[0], split) == teacher_key(one, split)
    with pytest.raises(KDTuneError, match=r"teacher.ensemble\[1\].arhc: unknown key"):
        trial_config({"teacher": {"ensemble": ["resnet8", {"arhc": "cnn4"}]}})
    with pytest.raises(KDTuneError, match=r"^teacher.stem: vit_tiny \(inherited by "
                                          r"teacher.ensemble\[1\]\) is a vision transformer"):
        trial_config({"teacher": {"stem": "standard", "ensemble": ["resnet8", "vit_tiny"]}})


def test_a_sweep_of_vit_students_builds_no_view_cache():
    from kdtune.sweep.plan import resolve_paths
    from kdtune.sweep.run import _views_readable

    for arch, readable in (("vit_tiny_d6", False), ("resnet8", True)):
        sw = sweep_config({"student": {"arch": arch}, "teacher": {"arch": "cnn4"},
                           "search": {"space": {"kd.alpha": {"type": "choice",
                                                             "values": [0.5, 0.9]}}}})
        assert _views_readable(sw, resolve_paths(sw.base.to_dict()), ["logit"]) is readable
