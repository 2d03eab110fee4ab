"""Where files live: atomic local writes, and a sweep's run folder as a local path or a URI.

A run folder given as a URI (`search.storage: s3://bucket/kd/run1`, `--out gs://...`, any
filesystem `pyarrow.fs.FileSystem.from_uri` knows: s3, gs, hdfs, file) is split in two:

* Ray Tune writes its experiment state and every trial checkpoint to `<URI>/ray` itself
  (`RunConfig(storage_filesystem=...)`). That is what a multi-node cluster needs: a trial on
  another node checkpoints to the bucket, not to a disk the driver cannot see.
* kdtune's own files (sweep.yaml, trials.parquet, epochs.parquet, asha_rungs.json,
  teachers.json, ray-snapshot.pkl, checkpoints/, the dashboard) are written whole into a local
  working copy (`<cache_dir>/runs/<scheme>/<bucket>/<path>`) and uploaded one object each as
  soon as they are written. An object store replaces an object whole, so a reader of the bucket
  (or a crash) sees the previous table or the new one, never half of one.

`--resume` at a URI downloads kdtune's files into a fresh working copy first: the bucket is the
truth, so a sweep can be continued from a different machine than the one that started it.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import KDTuneError

RAY_DIR = "ray"


@contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """A temporary name beside `path` to write to; renamed over `path` when the block ends
    without an error, removed otherwise. Readers (another process, a resumed run) see the old
    file or the new one, never a torn one. `suffix` for writers that append their own
    extension (np.savez adds .npz to a name without it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def is_uri(target) -> bool:
    return "://" in str(target)


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI, or a one-line KDTuneError."""
    import pyarrow.fs

    if "?" in uri or "#" in uri:
        # the options would end up in every file name derived from the URI
        raise KDTuneError(f"{uri}: no ?options in a storage URI; set them in the environment "
                          "(AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, ...)")
    scheme = uri.split("://", 1)[0]
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError) as e:
        raise KDTuneError(f"{uri}: pyarrow cannot open '{scheme}://' URIs "
                          f"({str(e).splitlines()[0]}); use s3://, gs://, hdfs://, file:// "
                          "or a local/shared-filesystem path") from None
    except OSError as e:  # e.g. S3's bucket-region lookup, HDFS without a JVM
        raise KDTuneError(f"cannot open {uri}: {str(e).splitlines()[0]}") from None
    return fs, path.rstrip("/")


class RunStore:
    """A sweep's run folder: `local` is where kdtune writes; for a URI run every written file
    is also pushed to the URI, and `ray_storage()` points Ray Tune at the URI directly."""

    def __init__(self, target, cache_dir, purpose: str = "runs"):
        """`purpose` names the working copy's folder under cache_dir: a sweep's ("runs") and a
        dashboard's ("dashboards") never share one, so rendering a run that is still being
        written cannot delete or overwrite the sweep's own files."""
        target = str(target)
        self.pending: set[str] = set()  # files whose upload failed, retried on the next push
        self._made: set[str] = set()  # folders created by this process (see _mkdir)
        self.uri = target.rstrip("/") if is_uri(target) else None
        if self.uri is None:
            import pyarrow.fs

            self.local = Path(target).expanduser().resolve()
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), str(self.local)
        else:
            self.fs, self.root = _filesystem(self.uri)
            scheme, rest = self.uri.split("://", 1)
            parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
            self.local = Path(cache_dir).expanduser().resolve() / purpose / scheme / Path(*parts)

    def __str__(self) -> str:
        return self.uri or str(self.local)

    @property
    def remote(self) -> bool:
        return self.uri is not None

    def url(self, name: str) -> str:
        """A file of the run as the user addresses it (a URI for a remote run)."""
        return f"{self.uri}/{name}" if self.uri else str(self.local / name)

    # -- what Ray Tune is given ------------------------------------------------------------------

    def ray_storage(self) -> tuple[str, object]:
        """(storage_path, storage_filesystem) for RunConfig / Tuner.restore / can_restore."""
        return self.root, (self.fs if self.remote else None)

    @property
    def ray_path(self) -> str:
        return f"{self.root}/{RAY_DIR}"

    # -- files --------------------------------------------------------------------------------

    def _type(self, name: str):
        """pyarrow FileType of a file or folder of the run (a name relative to its root)."""
        path = f"{self.root}/{name}"
        return self._call("read", path, self.fs.get_file_info, path).type

    def _call(self, what: str, path: str, fn, *args):
        """Remote errors (no credentials, no bucket, no network) as one line naming the URI."""
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except OSError as e:
            where = f"{self.uri}{path[len(self.root):]}" if self.remote else path
            raise KDTuneError(f"cannot {what} {where}: "
                              f"{str(e).splitlines()[0]}") from None

    def _mkdir(self, path: str) -> None:
        """A local disk needs the folder before a file goes in; a store takes it as a no-op
        marker. Once per folder and process."""
        if path not in self._made:
            self._call("write", path, lambda: self.fs.create_dir(path, recursive=True))
            self._made.add(path)

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        return self._type(name) != pyarrow.fs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        path = f"{self.root}/{name}"
        with self._call("read", path, self.fs.open_input_stream, path) as f:
            return f.read()

    def push(self, *names: str, soft: bool = False) -> None:
        """Upload files of the local working copy (names relative to it) to the URI, with any
        whose upload failed before; a file absent locally is skipped. Nothing to do for a local
        run. `soft` (during a sweep): a failed upload is a warning and is retried on the next
        push, so a network hiccup does not end hours of trials; the end of a sweep pushes what
        is still pending with soft=False, which raises."""
        if not self.remote:
            return
        for name in sorted(self.pending | set(names)):
            src = self.local / name
            if not src.is_file():
                self.pending.discard(name)
                continue
            dst = f"{self.root}/{name}"
            try:
                self._mkdir(dst.rsplit("/", 1)[0])
                with self._call("write", dst, self.fs.open_output_stream, dst) as out:
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            except (KDTuneError, OSError) as e:
                if not soft:
                    raise
                if name not in self.pending:
                    print(f"warning: {e}; the upload is retried with the next one",
                          file=sys.stderr, flush=True)
                self.pending.add(name)
            else:
                self.pending.discard(name)

    def delete(self, name: str) -> None:
        """A file of the run, gone from the working copy and from the URI."""
        (self.local / name).unlink(missing_ok=True)
        if self.remote:
            path = f"{self.root}/{name}"
            try:
                self._call("delete", path, self.fs.delete_file, path)
            except FileNotFoundError:
                pass

    def pull(self, top_level_only: bool = False) -> None:
        """A fresh working copy of the URI's files: all but Ray's own folder, which Tune
        reads from the URI itself (`top_level_only`: the tables, not checkpoints/)."""
        if not self.remote:
            return
        import pyarrow.fs

        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)
        sel = pyarrow.fs.FileSelector(self.root, recursive=not top_level_only,
                                      allow_not_found=True)
        for info in self._call("list", self.root, self.fs.get_file_info, sel):
            rel = info.path[len(self.root):].lstrip("/")
            if info.type != pyarrow.fs.FileType.File or rel.split("/")[0] == RAY_DIR:
                continue
            dst = self.local / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with self._call("read", info.path, self.fs.open_input_stream, info.path) as src, \
                    atomic_path(dst) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)

    def prepare_local(self) -> None:
        """The working copy of a new remote run starts empty (whatever an earlier run left
        there belongs to a sweep the bucket no longer has)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)

    # -- Ray's folder (for --resume's repairs) ---------------------------------------------------

    def ray_glob(self, pattern: str) -> list[str]:
        """Names of the files directly in ray/ matching a glob pattern, sorted."""
        import pyarrow.fs

        sel = pyarrow.fs.FileSelector(self.ray_path, allow_not_found=True)
        names = [i.base_name for i in self._call("list", self.ray_path, self.fs.get_file_info,
                                                 sel) if i.type == pyarrow.fs.FileType.File]
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

    def ray_read_text(self, name: str) -> str:
        return self.read_bytes(f"{RAY_DIR}/{name}").decode()

    def ray_write(self, name: str, data: bytes) -> None:
        """A whole file into ray/: a temporary name then a rename on a local disk (a kill
        leaves the old file), one object upload on a store (atomic there)."""
        dst = f"{self.ray_path}/{name}"
        self._mkdir(self.ray_path)
        if not self.remote:
            with atomic_path(Path(dst)) as tmp:
                tmp.write_bytes(data)
            return
        with self._call("write", dst, self.fs.open_output_stream, dst) as out:
            out.write(data)

    def ray_delete(self, name: str) -> None:
        path = f"{self.ray_path}/{name}"
        self._call("delete", path, self.fs.delete_file, path)

    def ray_is_dir(self, rel: str) -> bool:
        import pyarrow.fs

        return self._type(f"{RAY_DIR}/{rel}") == pyarrow.fs.FileType.Directory

    def ray_exists(self, rel: str) -> bool:
        return self.exists(f"{RAY_DIR}/{rel}")

    def ray_mkdir(self, rel: str) -> None:
        self._mkdir(f"{self.ray_path}/{rel}")

    def ray_remove(self) -> None:
        """Ray's whole folder (a --resume of a sweep none of whose trials had started)."""
        self._made = {p for p in self._made if not p.startswith(self.ray_path)}
        try:
            self._call("delete", self.ray_path, self.fs.delete_dir, self.ray_path)
        except FileNotFoundError:
            pass


def local_run(run: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A run folder on this machine: `run` itself, or for a URI (s3://, gs://, ...) a fresh
    copy of its tables (its checkpoints stay in the bucket), as `kdtune dashboard` reads it:
    a dashboard's working copy, never the sweep's own (see RunStore's `purpose`)."""
    from .config import TrialConfig

    store = RunStore(run, cache_dir or TrialConfig().cache_dir, purpose="dashboards")
    store.pull(top_level_only=True)
    return store.local
