"""Data: decode-once caching, imagefolder/tar sources, balanced val split, on-device views."""

import io
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from kdtune import data as D
from kdtune.config import DataConfig, trial_config
from kdtune.errors import KDTuneError


def make_folder_images(n_per_class=6, classes=("cat", "airplane", "dog")):
    """(split, class, name, jpeg bytes, pixel array) with class-coded colours."""
    rng = np.random.default_rng(0)
    out = []
    for split in ("train", "test"):
        for ci, c in enumerate(classes):
            for i in range(n_per_class):
                px = np.full((32, 32, 3), 40 * ci + 20, np.uint8)
                px[: i + 1, :, 0] = rng.integers(0, 255)
                buf = io.BytesIO()
                Image.fromarray(px).save(buf, "PNG")  # lossless, so pixels can be compared
                out.append((split, c, f"{i:04d}.png", buf.getvalue(), px))
    return out


def write_tar(path, items, prefix="cifar-like"):
    with tarfile.open(path, "w:gz") as tf:
        for split, c, name, blob, _ in items:
            info = tarfile.TarInfo(f"{prefix}/{split}/{c}/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def test_imagefolder_tar_and_folder_agree(tmp_path):
    items = make_folder_images()
    tar = tmp_path / "imgs.tar.gz"
    write_tar(tar, items)
    folder = tmp_path / "folder"
    for split, c, name, blob, _ in items:
        (folder / split / c).mkdir(parents=True, exist_ok=True)
        (folder / split / c / name).write_bytes(blob)
    a = D.load_arrays(DataConfig(dataset="imagefolder", root=str(tar)), tmp_path / "c")
    b = D.load_arrays(DataConfig(dataset="imagefolder", root=str(folder)), tmp_path / "c")
    assert a.classes == ["airplane", "cat", "dog"]  # sorted, as ImageFolder does
    assert a.x_train.shape == (18, 3, 32, 32) and a.x_train.dtype == np.uint8
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.identity == b.identity  # content identity, not path
    # label <-> pixels: class "cat" (index 1) was drawn with value 20 + 40*0
    cat = a.x_train[a.y_train == 1]
    assert (cat[:, 1] == 20).all()


def test_decoded_cache_is_reused_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    cfg = DataConfig(dataset="synthetic", synthetic_train=50, synthetic_test=20)
    a = D.load_arrays(cfg, tmp_path)
    files = list((tmp_path / "data").glob("*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(D, "_synthetic", lambda cfg: pytest.fail("decoded twice"))
    b = D.load_arrays(cfg, tmp_path)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    files[0].write_bytes(b"not an npz")
    monkeypatch.undo()
    c = D.load_arrays(cfg, tmp_path)
    np.testing.assert_array_equal(a.x_train, c.x_train)


def test_bad_imagefolder_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDTuneError, match="train/<class>/ and test/<class>/"):
        D.load_arrays(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty")), tmp_path)
    with pytest.raises(KDTuneError, match="does not exist"):
        D.load_arrays(DataConfig(dataset="imagefolder", root=str(tmp_path / "nope")), tmp_path)


def test_offline_torchvision_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(KDTuneError) as e:
        D.load_arrays(DataConfig(dataset="cifar10"), tmp_path)
    msg = str(e.value)
    assert "could not download cifar10" in msg and "data.root" in msg and "\n" not in msg


def test_split_is_balanced_disjoint_and_fixed(tmp_path):
    cfg = DataConfig(dataset="synthetic", synthetic_train=1000, synthetic_test=200,
                     val_size=200, train_subset=300, test_subset=50)
    arrays = D.load_arrays(cfg, tmp_path)
    s1 = D.make_split(arrays, cfg)
    s2 = D.make_split(arrays, cfg)
    assert len(s1.y_val) == 200 and len(s1.y_train) == 300 and len(s1.y_test) == 50
    assert np.bincount(s1.y_val).tolist() == [20] * 10  # class-balanced
    assert np.bincount(s1.y_train).min() == 30
    np.testing.assert_array_equal(s1.x_val, s2.x_val)  # same split every time
    # val images never appear in train
    tr = {x.tobytes() for x in s1.x_train}
    assert not any(x.tobytes() in tr for x in s1.x_val)
    other = D.make_split(arrays, DataConfig(**{**cfg.__dict__, "split_seed": 1}))
    assert not np.array_equal(other.x_val, s1.x_val)
    with pytest.raises(KDTuneError, match="data.val_size"):
        D.make_split(arrays, DataConfig(**{**cfg.__dict__, "val_size": 1000}))


def reference_view(img_u8: torch.Tensor, dy: int, dx: int, flip: int) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, one image at a time."""
    import torchvision.transforms.v2.functional as TF

    p = TF.pad(img_u8, [D.PAD] * 4, fill=0)
    out = TF.crop(p, dy, dx, 32, 32)
    return TF.horizontal_flip(out) if flip else out


def test_batched_views_match_per_image_reference(tmp_path):
    cfg = trial_config({"data": {"dataset": "synthetic", "val_size": 10,
                                 "synthetic_train": 64, "synthetic_test": 10}}).data
    split = D.load_split(cfg, tmp_path)
    dd = D.DeviceData(split, torch.device("cpu"))
    raw = torch.from_numpy(split.x_train)
    for idx, x, y, view in dd.train_batches(16, seed=3):
        for j in range(len(idx)):
            dy, dx, flip = D.view_params(int(view[j]))
            ref = reference_view(raw[idx[j]], dy, dx, flip)
            np.testing.assert_array_equal(
                dd.crop_flip(idx[j:j + 1], *(torch.tensor([v]) for v in (dy, dx, flip)))[0],
                ref)
            np.testing.assert_allclose(x[j], dd.normalize(ref[None])[0], atol=1e-6)
        assert torch.equal(y, dd.y_train[idx])
    views = {v for s in range(5) for *_, vb in dd.train_batches(64, seed=s)
             for v in vb.tolist()}
    assert len(views) > 30 and max(views) < D.num_views(True) == 162
    for v in range(162):
        assert D.view_index(*(torch.tensor(p) for p in D.view_params(v))) == v


def test_no_augment_is_center_view_and_resize(tmp_path):
    cfg = DataConfig(dataset="synthetic", val_size=10, synthetic_train=40, synthetic_test=10)
    split = D.load_split(cfg, tmp_path)
    dd = D.DeviceData(split, torch.device("cpu"), augment=False, resize=64)
    idx, x, y, view = next(dd.train_batches(8, seed=0))
    assert x.shape == (8, 3, 64, 64) and (view == 0).all()
    centre = dd.normalize(torch.from_numpy(split.x_train)[idx])
    assert torch.allclose(x, centre)
    # epoch order is a permutation: every image once
    seen = torch.cat([i for i, *_ in dd.train_batches(10, seed=1)])
    assert sorted(seen.tolist()) == list(range(dd.n_train)) and dd.n_train == 30


@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_come_in_the_layout_asked_for(tmp_path, channels_last):
    cfg = DataConfig(dataset="synthetic", val_size=10, synthetic_train=40, synthetic_test=10)
    split = D.load_split(cfg, tmp_path)
    plain = D.DeviceData(split, torch.device("cpu"))
    dd = D.DeviceData(split, torch.device("cpu"), channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    _, x, _, _ = next(dd.train_batches(8, seed=0))
    _, x_plain, _, _ = next(plain.train_batches(8, seed=0))
    val, _ = next(dd.eval_batches("val"))
    view = dd.view_batch(torch.arange(4), 5)
    for t in (x, val, view):  # 3 channels, so the two layouts cannot both hold
        assert t.is_contiguous(memory_format=fmt) and not t.is_contiguous(
            memory_format=torch.contiguous_format if channels_last else torch.channels_last)
    assert torch.equal(x, x_plain)  # same values, only the memory order differs
