"""Data: decode once to uint8, keep it on the training device, augment whole batches there.

The notebook baseline feeds 32x32 images through PIL transforms in DataLoader workers, which on a
GPU host leaves the GPU waiting on a few CPU cores. Following airbench, the whole dataset is
decoded once into a uint8 array cached on disk (CIFAR-10 train: 150 MB), copied to the device once
per process, and every augmentation is a gather over whole batches on the device.

Random crop with 4-pixel padding + horizontal flip has only 9 x 9 x 2 = 162 distinct outcomes per
image. `TrainBatches` returns the index of the outcome ("view") it drew for each image, which is
what lets the teacher's logits be precomputed per view (teacher.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig
from .errors import KDTuneError
from .storage import atomic_path

PAD = 4  # torchvision's RandomCrop(32, padding=4), the CIFAR standard since He et al. 2016
CACHE_VERSION = 1
LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "synthetic (seeded)"}


@dataclass
class Arrays:
    """A decoded dataset: uint8 NCHW images and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    identity: str  # content hash: what a teacher trained on this data is keyed by
    label: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Split:
    """Train / val / test. Val is held out of train; test is used only for the final report."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    identity: str  # arrays identity + split parameters
    label: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# --- sources ---------------------------------------------------------------------------------


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def _synthetic(cfg: DataConfig) -> tuple:
    """Seeded, learnable: each class is a smooth random colour pattern, images add noise and a
    random shift, so a small CNN gets well above chance in one epoch but not trivially 100 %."""
    g = np.random.default_rng(1234)
    k = cfg.synthetic_classes
    coarse = g.normal(size=(k, 3, 4, 4)).astype(np.float32)
    templates = F.interpolate(torch.from_numpy(coarse), size=(32, 32), mode="bicubic",
                              align_corners=False).numpy()

    def make(n, seed):
        r = np.random.default_rng(seed)
        y = np.arange(n) % k
        r.shuffle(y)
        shift = r.integers(-3, 4, size=(n, 2))
        x = np.stack([np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(y, shift)])
        x = 128 + 60 * x + r.normal(scale=30, size=x.shape)
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    xtr, ytr = make(cfg.synthetic_train, 1)
    xte, yte = make(cfg.synthetic_test, 2)
    return xtr, ytr, xte, yte, [f"class{i}" for i in range(k)]


def _torchvision(cfg: DataConfig, cache_dir: Path) -> tuple:
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.dataset == "cifar10" else datasets.CIFAR100
    root = Path(cfg.root).expanduser() if cfg.root else cache_dir / "torchvision"
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as e:  # urllib/socket errors differ by version; any failure here is "no data"
        raise KDTuneError(
            f"data: could not download {cfg.dataset} into {root} ({type(e).__name__}); offline? "
            f"Set data.root to a folder holding torchvision's {cfg.dataset} files, or use "
            "data.dataset: imagefolder with data.root: path/to/cifar10-jpeg.tar.gz") from None

    def arr(ds):
        return (np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                np.asarray(ds.targets, dtype=np.int64))

    return (*arr(train), *arr(test), list(train.classes))


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"))


def _imagefolder(root: Path) -> tuple:
    """`root` is a folder or a .tar(.gz) holding train/<class>/*.jpg and test/<class>/*.jpg at
    any depth. A tarball is streamed once straight into the uint8 cache: no 60k small files."""
    items: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}

    def add(parts: tuple[str, ...], read):
        for split in ("train", "test"):
            if split in parts[:-2]:
                i = len(parts) - 1 - parts[::-1].index(split)
                if i == len(parts) - 3:  # split/class/file
                    items[split].append((parts[i + 1], parts[-1], _decode(read())))
                return

    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in exts and p.is_file():
                add(p.relative_to(root).parts, p.read_bytes)
    else:
        try:
            with tarfile.open(root, "r:*") as tf:
                for m in tf:
                    if m.isfile() and Path(m.name).suffix.lower() in exts:
                        add(Path(m.name).parts, lambda m=m: tf.extractfile(m).read())
        except (tarfile.TarError, OSError) as e:
            raise KDTuneError(f"data.root: cannot read {root} as a folder or tar archive: {e}")
    if not items["train"] or not items["test"]:
        raise KDTuneError(f"data.root: {root} must hold train/<class>/ and test/<class>/ image "
                          f"folders; found {len(items['train'])} train and "
                          f"{len(items['test'])} test images")
    classes = sorted({c for c, _, _ in items["train"]})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c, _, _ in items["test"]} - set(classes))
    if unknown:
        raise KDTuneError(f"data.root: test classes {unknown} have no train folder")

    def stack(rows):
        rows.sort(key=lambda r: (index[r[0]], r[1]))  # deterministic, whatever the tar order
        shapes = {r[2].shape for r in rows}
        if len(shapes) != 1:
            raise KDTuneError(f"data.root: images must share one size, found {sorted(shapes)}")
        x = np.stack([r[2] for r in rows]).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x), np.array([index[r[0]] for r in rows], dtype=np.int64)

    return (*stack(items["train"]), *stack(items["test"]), classes)


def _source_key(cfg: DataConfig) -> str:
    if cfg.dataset == "synthetic":
        return _sha("synthetic", cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_classes)
    if cfg.dataset == "imagefolder":
        root = Path(cfg.root).expanduser().resolve()
        if not root.exists():
            raise KDTuneError(f"data.root: {cfg.root} does not exist")
        if root.is_dir():
            stat = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in sorted(root.rglob("*")) if p.is_file()]
        else:
            stat = [root.stat().st_size, root.stat().st_mtime_ns]
        return _sha("imagefolder", str(root), stat)
    return _sha(cfg.dataset)


def _default_label(cfg: DataConfig) -> str:
    if cfg.label:
        return cfg.label
    if cfg.dataset == "imagefolder":
        name = Path(cfg.root).name
        # The shared copy is CIFAR-10 re-encoded as JPEG: lossy, so say so next to every number.
        return "CIFAR-10 (JPEG copy)" if "cifar10-jpeg" in name else f"imagefolder {name}"
    return LABELS[cfg.dataset]


def load_arrays(cfg: DataConfig, cache_dir: str | Path) -> Arrays:
    """Decode the dataset once into uint8 arrays cached on disk, keyed by source."""
    cache_dir = Path(cache_dir).expanduser()
    key = _source_key(cfg)
    path = cache_dir / "data" / f"{cfg.dataset}-{key}-v{CACHE_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return Arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                              meta["classes"], meta["identity"], _default_label(cfg))
        except Exception:  # a torn or corrupt cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    if cfg.dataset == "synthetic":
        parts = _synthetic(cfg)
    elif cfg.dataset == "imagefolder":
        parts = _imagefolder(Path(cfg.root).expanduser())
    else:
        parts = _torchvision(cfg, cache_dir)
    xtr, ytr, xte, yte, classes = parts
    identity = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes()
                                       for a in (xtr, ytr, xte, yte))).hexdigest()[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"classes": classes, "identity": identity})
    # atomic: a second process sees the whole file or none
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, meta=np.array(meta))
    return Arrays(xtr, ytr, xte, yte, classes, identity, _default_label(cfg))


def _balanced_pick(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices with classes as equal as possible (round-robin over shuffled per-class lists)."""
    classes = np.unique(y)
    per = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    order = []
    for i in range(max(len(p) for p in per)):
        order.extend(p[i] for p in per if i < len(p))
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def make_split(arrays: Arrays, cfg: DataConfig) -> Split:
    n = len(arrays.y_train)
    if cfg.val_size >= n:
        raise KDTuneError(f"data.val_size: {cfg.val_size} must be below the {n} training images")
    rng = np.random.default_rng(cfg.split_seed)
    val = _balanced_pick(arrays.y_train, cfg.val_size, rng)
    rest = np.setdiff1d(np.arange(n), val)
    if cfg.train_subset is not None and cfg.train_subset < len(rest):
        rest = rest[_balanced_pick(arrays.y_train[rest], cfg.train_subset, rng)]
    test = np.arange(len(arrays.y_test))
    if cfg.test_subset is not None and cfg.test_subset < len(test):
        test = _balanced_pick(arrays.y_test, cfg.test_subset, np.random.default_rng(0))
    xtr = arrays.x_train[rest]
    # Normalisation statistics from the training split itself: right for any dataset.
    flat = xtr.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255
    mean, std = tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist())
    identity = _sha(arrays.identity, cfg.val_size, cfg.split_seed, cfg.train_subset,
                    cfg.test_subset)
    return Split(xtr, arrays.y_train[rest], arrays.x_train[val], arrays.y_train[val],
                 arrays.x_test[test], arrays.y_test[test], arrays.num_classes, identity,
                 arrays.label, mean, std)


def load_split(cfg: DataConfig, cache_dir) -> Split:
    return make_split(load_arrays(cfg, cache_dir), cfg)


# --- on-device batches -----------------------------------------------------------------------


def num_views(augment: bool) -> int:
    return (2 * PAD + 1) ** 2 * 2 if augment else 1


def view_index(dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return (dy * (2 * PAD + 1) + dx) * 2 + flip


def view_params(view: int) -> tuple[int, int, int]:
    """Inverse of view_index: (dy, dx, flip) of view number `view`."""
    yx, flip = divmod(view, 2)
    dy, dx = divmod(yx, 2 * PAD + 1)
    return dy, dx, flip


class DeviceData:
    """The split on the device as uint8 (4x smaller than float), normalised per batch.

    Batches come out in the layout `channels_last` asks for (the model's, see kdtune.train);
    it is a switch of its own, not derived from the device, so a CPU run can exercise the GPU
    layout."""

    def __init__(self, split: Split, device: torch.device, augment: bool = True,
                 resize: int | None = None, channels_last: bool = False):
        self.split, self.device, self.augment, self.resize = split, device, augment, resize
        self.channels_last = channels_last
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        # Padded once up front: every crop is then a pure gather (zero fill, like RandomCrop).
        self.train_padded = F.pad(t(split.x_train), (PAD, PAD, PAD, PAD))
        self.y_train = t(split.y_train)
        self.x_val, self.y_val = t(split.x_val), t(split.y_val)
        self.x_test, self.y_test = t(split.x_test), t(split.y_test)
        self.mean = torch.tensor(split.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(split.std, device=device).view(1, 3, 1, 1) * 255
        self.size = split.x_train.shape[-1]

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def input_size(self) -> int:
        return self.resize or self.size

    def normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = (x_u8.float() - self.mean) / self.std
        if self.resize and self.resize != x.shape[-1]:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              align_corners=False)
        # The crop gather yields channels_last memory whatever the switch says; fix it to the
        # model's layout so "off" really runs contiguous convs.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last
                            else torch.contiguous_format)

    def crop_flip(self, idx, dy, dx, flip) -> torch.Tensor:
        """Batched crop+flip as one gather: rows/cols index grids per image."""
        ar = torch.arange(self.size, device=self.device)
        rows = dy[:, None] + ar
        cols = dx[:, None] + ar
        cols = torch.where(flip[:, None].bool(), cols.flip(1), cols)
        # Advanced indices around a slice put the broadcast dims first: (B, H, W, C), which
        # permuted back is NCHW in channels_last memory, the layout cuDNN prefers anyway.
        out = self.train_padded[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)

    def view_batch(self, idx: torch.Tensor, view: int) -> torch.Tensor:
        """All images `idx` under one fixed view (for building the teacher's view cache)."""
        dy, dx, flip = view_params(view) if self.augment else (PAD, PAD, 0)
        full = lambda v: torch.full_like(idx, v)  # noqa: E731
        return self.normalize(self.crop_flip(idx, full(dy), full(dx), full(flip)))

    def train_batches(self, batch_size: int, seed: int, cutout: int = 0):
        """One epoch: yields (idx, x, y, view). Order and views come from `seed`, drawn in one go
        on the CPU generator and moved once, so the loop has no per-step host work. `cutout`
        > 0: each image also loses one cutout x cutout square (see `cutout`); `view` then no
        longer names the pixels exactly, so the view cache must not serve such a batch."""
        g = torch.Generator().manual_seed(seed)
        n = self.n_train
        perm = torch.randperm(n, generator=g)
        if self.augment:
            dy = torch.randint(0, 2 * PAD + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * PAD + 1, (n,), generator=g)
            flip = torch.randint(0, 2, (n,), generator=g)
        else:
            dy = dx = torch.full((n,), PAD)
            flip = torch.zeros(n, dtype=torch.long)
        # drawn after the views, so a run without cutout sees the very batches it always did
        centres = torch.randint(0, self.size, (2, n), generator=g).to(self.device) \
            if cutout else None
        perm, dy, dx, flip = (t.to(self.device) for t in (perm, dy, dx, flip))
        view = view_index(dy, dx, flip) if self.augment else torch.zeros_like(dy)
        # Drop the ragged last batch: a batch of 1 breaks BatchNorm, and equal steps keep the
        # schedule simple. With fewer images than one batch, use them all.
        bs = min(batch_size, n)
        for start in range(0, n - bs + 1, bs):
            i = perm[start:start + bs]
            x = self.crop_flip(i, dy[i], dx[i], flip[i])
            if cutout:
                x = self.cutout(x, centres[0, i], centres[1, i], cutout)
            yield i, self.normalize(x), self.y_train[i], view[i]

    def cutout(self, x_u8: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor,
               size: int) -> torch.Tensor:
        """Cutout (DeVries & Taylor 2017, arXiv:1708.04552): a size x size square centred at
        (cy, cx), clipped at the border, set to the data's mean colour, which normalises to 0
        as in the paper (it erases after normalising). On the uint8 batch, before any resize,
        with one mask per image built by broadcasting: no per-image loop."""
        ar = torch.arange(self.size, device=x_u8.device)
        lo_y, lo_x = cy - size // 2, cx - size // 2
        rows = (ar >= lo_y[:, None]) & (ar < lo_y[:, None] + size)
        cols = (ar >= lo_x[:, None]) & (ar < lo_x[:, None] + size)
        mask = (rows[:, :, None] & cols[:, None, :])[:, None]  # (B, 1, H, W)
        fill = self.mean.round().to(torch.uint8)  # (1, 3, 1, 1)
        return torch.where(mask, fill, x_u8)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self.n_train // min(batch_size, self.n_train))

    def eval_batches(self, which: str, batch_size: int = 1024):
        x, y = (self.x_val, self.y_val) if which == "val" else (self.x_test, self.y_test)
        for s in range(0, len(y), batch_size):
            yield self.normalize(x[s:s + batch_size]), y[s:s + batch_size]
