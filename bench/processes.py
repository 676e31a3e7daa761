"""Processes the harness starts: dispatcher gateways and workers, the SQS server (the stand-in or
moto_server); their CPU and RSS.

Every process writes its output to a file in the run's folder (never a pipe that could fill
up) and is stopped at the end, error or not.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

__all__ = ["PidLister", "Proc", "ResourceMonitor", "children_of", "free_port", "PostgresBackends",
           "redis_server_pid", "start_dispatcher", "start_moto", "start_sqs_standin", "stop_all"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _spawn(name: str, argv: list[str], env: dict[str, str], folder: Path) -> Proc:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def _wait(proc: Proc, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            stop_all([proc])
            raise RuntimeError(f"{proc.name} did not become {what}:\n{proc.output()[-3000:]}")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def start_dispatcher(command: str, env: dict[str, str], folder: Path, name: str) -> Proc:
    """``serve`` / ``gateway`` (waits for /readyz: ``serve``'s worker processes started too) or
    ``worker`` (waits for its start line)."""
    argv = [sys.executable, "-m", "dispatcher", "--log-level", "warning", command]
    if command == "worker":
        proc = _spawn(name, [sys.executable, "-m", "dispatcher", command], env, folder)
        _wait(proc, lambda: "worker started" in proc.output(), "ready")
        return proc
    port = free_port()
    proc = _spawn(name, argv + ["--port", str(port)], env, folder)
    proc.url = f"http://127.0.0.1:{port}"
    _wait(proc, lambda: _answers(f"{proc.url}/readyz"), "ready")
    return proc


#: The production stack's SQS servers: "standin" (:mod:`bench.sqs_standin`, the default) or
#: "moto" (moto_server, which spends more CPU per message than the dispatcher's own processes do).
SQS_SERVERS = ("standin", "moto")


def start_moto(folder: Path) -> Proc:
    port = free_port()
    moto = str(Path(sys.executable).with_name("moto_server"))
    proc = _spawn("moto_server", [moto, "-H", "127.0.0.1", "-p", str(port)], {}, folder)
    proc.url = f"http://127.0.0.1:{port}"
    _wait(proc, lambda: _answers(f"{proc.url}/moto-api/data.json"), "ready")
    return proc


def start_sqs_standin(folder: Path) -> Proc:
    """:mod:`bench.sqs_standin`: SQS's JSON protocol in memory, far cheaper than moto_server."""
    port = free_port()
    root = str(Path(__file__).resolve().parents[1])
    proc = _spawn("sqs_standin", [sys.executable, "-m", "bench.sqs_standin", "--port", str(port)],
                  {"PYTHONPATH": root}, folder)
    proc.url = f"http://127.0.0.1:{port}"
    _wait(proc, lambda: _answers(f"{proc.url}/_health"), "ready")
    return proc


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.terminate()
    for proc in procs:
        try:
            proc.popen.wait(30)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)


#: Where a group's processes are found at each sample: a process tree's children, the
#: PostgreSQL backends of one database. Processes come and go (a pool opens a connection).
PidLister = Callable[[], Iterable[int]]


@dataclass
class ResourceMonitor:
    """Samples the RSS of some processes (peak per process) and their CPU time.

    ``pids``: fixed processes, by name. ``groups``: processes listed again at every sample, by
    name, their CPU summed (a process born inside the window counts from zero; one that ends
    between two samples loses at most its last ``interval``)."""

    pids: dict[str, int]
    interval: float = 0.25
    groups: dict[str, PidLister] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _cpu0: dict[str, float] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ResourceMonitor:
        self._procs = {n: psutil.Process(p) for n, p in self.pids.items()}
        self._cpu0 = {n: _cpu(p) for n, p in self._procs.items()}
        self._members = {name: _Members(time.time()) for name in self.groups}
        self._refresh_groups()
        self._machine0 = _machine_cpu()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._refresh_groups()
        self.cpu_seconds = {n: _cpu(p) - self._cpu0[n] for n, p in self._procs.items()}
        self.cpu_seconds.update({n: m.cpu_seconds() for n, m in self._members.items()})
        self.machine_cpu_seconds = _machine_cpu() - self._machine0
        self.seconds = time.monotonic() - self._began
        for lister in self.groups.values():
            close = getattr(lister, "close", None)
            if close is not None:
                close()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, proc in self._procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
            self._refresh_groups()
            self._stop.wait(self.interval)

    def _refresh_groups(self) -> None:
        for name, lister in self.groups.items():
            try:
                pids = list(lister())
            except Exception:  # noqa: BLE001  a lister's server going away ends its sampling only
                continue
            self._members[name].sample(pids)


@dataclass
class _Members:
    """One group's processes: CPU at first sight (0 if born after ``since``) and at last sight."""

    since: float
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    procs: dict[int, psutil.Process] = field(default_factory=dict)

    def sample(self, pids: Iterable[int]) -> None:
        for pid in pids:
            try:
                proc = self.procs.get(pid) or psutil.Process(pid)
                cpu = float(sum(proc.cpu_times()[:2]))
                born = proc.create_time()
            except psutil.Error:
                continue
            self.procs[pid] = proc
            self.first.setdefault(pid, 0.0 if born >= self.since else cpu)
            self.last[pid] = cpu

    def cpu_seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def children_of(pid: int) -> PidLister:
    """The processes a process started (``dispatcher serve``'s workers, Celery's pool)."""
    def list_children() -> list[int]:
        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    return list_children


class PostgresBackends:
    """The PostgreSQL server processes serving connections to ``database`` (not the server's
    other databases, which other developers' tests may be using at the same time). A
    :data:`PidLister`; :class:`ResourceMonitor` closes its connection at the end."""

    def __init__(self, admin_url: str, database: str) -> None:
        self._admin_url = admin_url
        self._database = database
        self._conn: Any = None

    def __call__(self) -> list[int]:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5)
        rows = self._conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                  "AND pid <> pg_backend_pid()", (self._database,)).fetchall()
        return [int(row[0]) for row in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def postgres_admin(admin_url: str, sql: str) -> None:
    """Run one statement (``CREATE DATABASE``, ``DROP DATABASE``) outside a transaction."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql)


def redis_server_pid(url: str) -> int | None:
    """The local ``redis-server`` listening on ``url``'s port (its title names the port)."""
    port = f":{url.rpartition(':')[2].split('/')[0]}"
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "redis-server" and any(port in a for a in proc.info["cmdline"] or ()):
            return int(proc.pid)
    return None


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return 0.0


def _machine_cpu() -> float:
    times = psutil.cpu_times()  # on Linux, user excludes the time of niced processes: nice has it
    return float(times.user + getattr(times, "nice", 0) + times.system + getattr(times, "irq", 0)
                 + getattr(times, "softirq", 0))
