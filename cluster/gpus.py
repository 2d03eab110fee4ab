"""Ask the autoscaler for GPU workers before a sweep, and let them go after it.

Run on the head of a cluster/*.yaml cluster (`ray attach cluster/aws-gpu.yaml`, then):

    python ~/kdtune/cluster/gpus.py 2    # hold 2 GPUs; returns once they have joined
    kdtune sweep sweeps/kd_prune.yaml --address auto --out s3://bucket/kd_prune
    python ~/kdtune/cluster/gpus.py 0    # drop the request; idle workers go after
                                         # idle_timeout_minutes

Why: the cluster starts with no worker (min_workers: 0), and `kdtune sweep` sizes its work from
the nodes alive when it starts: with no GPU node yet it refuses trials that ask for one
("search.resources: ... which no node of this cluster has"). Ray's `request_resources` makes
the autoscaler start the workers now and keep them until the request is replaced (by
`gpus.py 0`, or another count).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable


def wait_for_gpus(want: int, cluster_gpus: Callable[[], float], timeout_s: float, *,
                  poll_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep,
                  log: Callable[[str], None] = print) -> bool:
    """Poll until the cluster has `want` GPUs; False if `timeout_s` passes first. A line each
    time the count changes, so a slow boot is visibly alive."""
    deadline = clock() + timeout_s
    last = None
    while True:
        have = cluster_gpus()
        if have >= want:
            log(f"{have:g} GPU(s) in the cluster")
            return True
        if have != last:
            log(f"waiting for GPU workers: {have:g} of {want} GPU(s) so far")
            last = have
        if clock() >= deadline:
            return False
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpus.py", description=__doc__.split("\n\n")[0])
    p.add_argument("gpus", type=int, help="GPUs to hold (one worker each); 0 drops the request")
    p.add_argument("--timeout", type=float, default=1200.0,
                   help="seconds to wait for them (default 1200: a new GPU node boots and "
                        "installs for several minutes)")
    p.add_argument("--address", default="auto", help="Ray address (default: this node's)")
    a = p.parse_args(argv)
    if a.gpus < 0:
        p.error(f"gpus: got {a.gpus}; allowed: 0 or more")

    import ray
    from ray.autoscaler.sdk import request_resources

    ray.init(address=a.address, log_to_driver=False, logging_level="ERROR")
    request_resources(bundles=[{"GPU": 1}] * a.gpus)
    if a.gpus == 0:
        print("GPU request dropped: idle workers are removed after idle_timeout_minutes")
        return 0
    if wait_for_gpus(a.gpus, lambda: ray.cluster_resources().get("GPU", 0), a.timeout):
        return 0
    print(f"gpus.py: error: fewer than {a.gpus} GPU(s) after {a.timeout:g} s; see `ray status` "
          "and /tmp/ray/session_latest/logs/monitor.* on the head (quota, capacity in the "
          "zone, max_workers); the request stays until `gpus.py 0`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
