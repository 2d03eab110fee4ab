"""Test only: what W&B wrote into an offline run folder, read back without a server.

W&B has no reader of its own for an offline run (`wandb.Api` asks the server; `wandb sync` only
uploads). Its run file (<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb) is a LevelDB-style
log: a 7-byte header (":W&B", 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a
7-byte header (CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a
piece of one serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

BLOCK, HEADER, CHUNK_HEADER = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """The Records of one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    out, pos, pieces = [], HEADER, []
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # a block's tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0 or pos + CHUNK_HEADER + length > len(data):
            break  # zeroed rest of the last block, or a chunk cut short by a kill
        pieces.append(data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            out.append(pb.Record.FromString(b"".join(pieces)))
            pieces = []
    return out


def _items(items) -> dict:
    return {"/".join([i.key] if i.key else list(i.nested_key)): json.loads(i.value_json)
            for i in items}


def offline_run(folder: Path) -> SimpleNamespace | None:
    """One offline run folder (one process's part of a run): its run record, config, tags,
    history rows (step -> values), summary updates and exit code (None: not finished); None
    when the file holds no run record (its process was killed before W&B wrote any)."""
    (path,) = Path(folder).glob("run-*.wandb")
    run, config, history, summary, exit_code, preempting = None, {}, [], {}, None, False
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
            config.update(_items(r.run.config.update))
        elif kind == "config":
            config.update(_items(r.config.update))
        elif kind == "history":
            values = _items(r.history.item)
            history.append((r.history.step.num, values))
        elif kind == "summary":
            summary.update(_items(r.summary.update))
        elif kind == "exit":
            exit_code = r.exit.exit_code
        elif kind == "preempting":
            preempting = True
    if run is None:
        return None
    return SimpleNamespace(folder=Path(folder), id=run.run_id, name=run.display_name,
                           group=run.run_group, project=run.project, tags=list(run.tags),
                           config=config, history=history, summary=summary,
                           exit_code=exit_code, preempting=preempting)


def offline_runs(run_dir: Path) -> list[SimpleNamespace]:
    """Every offline run folder under <run_dir>/wandb with a run record, oldest first."""
    runs = (offline_run(f) for f in sorted(Path(run_dir, "wandb").glob("offline-run-*")))
    return [r for r in runs if r is not None]


def by_run_id(run_dir: Path) -> dict[str, list[SimpleNamespace]]:
    """run id -> its offline folders, oldest first (a resumed run has one per process)."""
    out: dict[str, list] = {}
    for r in offline_runs(run_dir):
        out.setdefault(r.id, []).append(r)
    return out


def logged_steps(parts: list[SimpleNamespace], key: str = "val_acc") -> list[int]:
    """The steps at which `key` was logged, across a run's folders in order."""
    return [step for p in parts for step, values in p.history if key in values]
