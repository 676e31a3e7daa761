"""The worker-process count follows the cgroup's CPU quota, read from sample cgroup files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatcher.config import Settings
from dispatcher.cpu_quota import available_cpus, cgroup_cpu_limit

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
             "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
             "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")


def machine(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def host_cpus() -> int:
    return len(os.sched_getaffinity(0))


def test_a_v2_container_limited_to_one_and_a_half_cpus_gets_two_processes(tmp_path: Path) -> None:
    root = machine(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root) == 1.5
    assert available_cpus(root) == min(2, host_cpus())


def test_v2_limits_nest_the_smallest_one_above_the_process_counts(tmp_path: Path) -> None:
    root = machine(tmp_path, "0::/system.slice/app.service\n", V2_MOUNT, {
        "/sys/fs/cgroup/system.slice/app.service/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/system.slice/cpu.max": "50000 100000\n",
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
    })
    assert cgroup_cpu_limit(root) == 0.5
    assert available_cpus(root) == 1  # never zero processes


def test_v2_without_a_quota_falls_back_to_the_cpus_the_process_may_use(tmp_path: Path) -> None:
    root = machine(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root) == host_cpus()


def test_a_v1_docker_container_reads_the_cfs_quota(tmp_path: Path) -> None:
    # Without a cgroup namespace, /proc/self/cgroup names the host's path; the mount is ours.
    root = machine(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n", V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(root) == 1.0
    assert available_cpus(root) == 1


def test_a_v1_host_cgroup_below_the_mount_is_found_by_its_path(tmp_path: Path) -> None:
    root = machine(tmp_path, "3:cpu,cpuacct:/batch/job7\n", V1_MOUNTS, {
        "/sys/fs/cgroup/cpu,cpuacct/batch/job7/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/job7/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_quota_us": "300000\n",
        "/sys/fs/cgroup/cpu,cpuacct/batch/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(root) == 3.0
    assert available_cpus(root) == min(3, host_cpus())


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == host_cpus()


@pytest.mark.parametrize("setting, expected", [("3", 3), (None, None)])
def test_serve_sizes_its_processes_from_the_setting_else_the_quota(
        monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: int | None) -> None:
    monkeypatch.delenv("DISPATCHER_WORKER_PROCESSES", raising=False)
    if setting:
        monkeypatch.setenv("DISPATCHER_WORKER_PROCESSES", setting)
    assert Settings().process_count() == (expected or available_cpus())
