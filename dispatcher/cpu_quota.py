"""How many CPUs this process may really use: the cgroup's CPU quota, not the host's cores.

A container limited to 2 CPUs on a 64-core host sees 64 in ``os.cpu_count()``; one worker
process per "CPU" there is 64 processes time-sliced onto 2 CPUs' worth of quota, each one
throttled in turn (latency spikes of a whole CFS period, 100 ms). So, as the JVM and Go's
runtime do, the count is the smallest of:

* the CFS quota of this process's cgroup and of every cgroup above it (limits nest):
  cgroup v2 ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: none), cgroup v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (``-1``: none), rounded up (1.5 CPUs is 2
  processes: the quota is a rate, the half CPU is still worth a process);
* the CPUs this process may run on (``sched_getaffinity``: ``docker --cpuset-cpus``, taskset);
* ``os.cpu_count()`` where neither is known.

The cgroup is found as the kernel tells it (``/proc/self/cgroup``, ``/proc/self/mountinfo``),
under a ``root`` that tests point at sample files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_limit"]


def available_cpus(root: Path = Path("/")) -> int:
    """CPUs worth of processes to start here (at least 1)."""
    cpus = _affinity()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(cpus, 1)


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroups, or None when there is none."""
    try:
        membership = (root / "proc/self/cgroup").read_text()
        mounts = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return None
    limits = [limit for folder in _cgroup_folders(root, membership, mounts)
              for limit in _limits_up_to_mount(folder)]
    return min(limits) if limits else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _cgroup_folders(root: Path, membership: str, mounts: str) -> list[tuple[Path, Path]]:
    """(this process's cgroup folder, its mount point) for the cpu controller: cgroup v2's
    unified hierarchy, or v1's ``cpu`` hierarchy."""
    v2_path, v1_path = None, None
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    found = []
    for line in mounts.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or len(fields) < 5:
            continue
        mount_root, mount_point, fstype = fields[3], fields[4], fields[dash + 1]
        options = fields[dash + 3].split(",")
        if fstype == "cgroup2" and v2_path is not None:
            found.append(_folder(root, mount_point, mount_root, v2_path))
        elif fstype == "cgroup" and "cpu" in options and v1_path is not None:
            found.append(_folder(root, mount_point, mount_root, v1_path))
    return found


def _folder(root: Path, mount_point: str, mount_root: str, path: str) -> tuple[Path, Path]:
    """Where ``path`` (as /proc/self/cgroup names it) is under ``mount_point``. In a container
    with its own cgroup namespace the mount's root is the container's cgroup: its path is
    relative to that; when the path is outside the mount's root, the mount itself is ours."""
    base = root / mount_point.lstrip("/")
    relative = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
    if relative.startswith(".."):
        return base, base
    return base / relative if relative not in ("", ".") else base, base


def _limits_up_to_mount(pair: tuple[Path, Path]) -> list[float]:
    folder, mount = pair
    limits = []
    while True:
        limit = _limit_in(folder)
        if limit is not None:
            limits.append(limit)
        if folder == mount or mount not in folder.parents:
            return limits
        folder = folder.parent


def _limit_in(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100_000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
