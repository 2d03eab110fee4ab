"""Teacher cache: content-addressed, trained once, view-exact logits, safe under concurrency."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from kdtune import teacher as T
from kdtune.config import trial_config
from kdtune.data import DeviceData, load_split


def setup(raw):
    cfg = trial_config(raw)
    split = load_split(cfg.data, cfg.cache_dir)
    return cfg, split, DeviceData(split, torch.device("cpu"), augment=cfg.data.augment)


def test_view_cache_equals_teacher_on_the_same_augmented_batch(tiny_raw):
    tiny_raw["data"].update(synthetic_train=80, val_size=20)
    cfg, split, dd = setup(tiny_raw)
    t = T.prepare_teacher(cfg, split, dd, want_views=True, log=lambda m: None)
    assert t.views.shape == (dd.n_train, 162, 10) and t.views.dtype == torch.float16
    t.model.eval()
    checked = 0
    for idx, x, y, view in dd.train_batches(30, seed=7):
        with torch.no_grad():
            online = t.model(x)
        cached = t.views[idx, view].float()
        # fp16 storage: relative rounding 2^-11 of each logit
        torch.testing.assert_close(cached, online, atol=2e-3, rtol=2e-3)
        checked += len(idx)
        # and a different view of the same images gives different logits
        other = t.views[idx, (view + 1) % 162].float()
        assert not torch.allclose(other, online, atol=1e-3)
    assert checked == dd.n_train


def test_cache_hit_does_not_retrain_and_records_accuracy(tiny_raw, monkeypatch):
    cfg, split, dd = setup(tiny_raw)
    first = T.prepare_teacher(cfg, split, dd, want_views=False, log=lambda m: None)
    assert not first.cache_hit
    monkeypatch.setattr(T, "fit", lambda *a, **k: pytest.fail("teacher retrained"))
    second = T.prepare_teacher(cfg, split, dd, want_views=False, log=lambda m: None)
    assert second.cache_hit and second.key == first.key
    assert second.val_acc == first.val_acc and 0 <= second.test_acc <= 1
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    meta = json.loads((T.Path(cfg.cache_dir) / "teachers" / first.key / "meta.json")
                      .read_text())
    assert meta["val_acc"] == first.val_acc and meta["test_acc"] == first.test_acc
    # a different recipe is a different teacher
    cfg2 = trial_config({**tiny_raw, "teacher": {**tiny_raw["teacher"], "epochs": 2}})
    assert T.teacher_key(cfg2, split) != first.key


def test_corrupt_cache_is_rebuilt_not_trusted(tiny_raw):
    tiny_raw["data"].update(synthetic_train=50, val_size=20)
    cfg, split, dd = setup(tiny_raw)
    t = T.prepare_teacher(cfg, split, dd, want_views=True, log=lambda m: None)
    folder = T.Path(cfg.cache_dir) / "teachers" / t.key
    (folder / "views.pt").write_bytes(b"garbage")
    msgs = []
    t2 = T.prepare_teacher(cfg, split, dd, want_views=True, log=msgs.append)
    assert t2.cache_hit and any("view cache: built" in m for m in msgs)
    torch.testing.assert_close(t2.views, t.views)
    blob = bytearray((folder / "model.pt").read_bytes())
    blob[-20] ^= 0xFF
    (folder / "model.pt").write_bytes(bytes(blob))
    t3 = T.prepare_teacher(cfg, split, dd, want_views=False, log=msgs.append)
    assert not t3.cache_hit and any("corrupt" in m for m in msgs)


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from kdtune import teacher as T
    from kdtune.config import trial_config
    from kdtune.data import DeviceData, load_split
    cfg = trial_config(json.loads(sys.argv[1]))
    split = load_split(cfg.data, cfg.cache_dir)
    dd = DeviceData(split, torch.device("cpu"))
    t = T.prepare_teacher(cfg, split, dd, want_views=True, log=lambda m: None)
    print(json.dumps({"hit": t.cache_hit, "key": t.key, "sum": float(t.views.float().sum())}))
""")


def test_two_processes_yield_one_cache(tiny_raw):
    tiny_raw["data"].update(synthetic_train=50, val_size=20)
    # decode once first so both processes race on the teacher, not on the data file
    setup(tiny_raw)
    arg = json.dumps(tiny_raw)
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, arg], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o["hit"] for o in outs) == [False, True]  # one built, the other loaded
    assert outs[0]["key"] == outs[1]["key"] and outs[0]["sum"] == outs[1]["sum"]
    teachers = T.Path(tiny_raw["cache_dir"]) / "teachers"
    assert [p.name for p in teachers.iterdir() if p.is_dir()] == [outs[0]["key"]]
    assert not list(teachers.glob(".*tmp*"))  # no temporary leftovers
