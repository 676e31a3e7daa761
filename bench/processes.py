"""Processes the harness starts: dispatcher gateways and workers, moto_server; their CPU and RSS.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["Proc", "ResourceMonitor", "free_port", "start_dispatcher", "start_moto", "stop_all"]


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
    """``serve`` / ``gateway`` (waits for /healthz) or ``worker`` (waits for its start line)."""
    argv = [sys.executable, "-m", "dispatcher", "--log-level", "warning", command]
    if command == "worker":
        proc = _spawn(name, [sys.executable, "-m", "dispatcher", command], env, folder)
        _wait(proc, lambda: "worker started" in proc.output(), "ready")
        return proc
    port = free_port()
    proc = _spawn(name, argv + ["--port", str(port)], env, folder)
    proc.url = f"http://127.0.0.1:{port}"
    _wait(proc, lambda: _answers(f"{proc.url}/healthz"), "healthy")
    return proc


def start_moto(folder: Path) -> Proc:
    port = free_port()
    moto = str(Path(sys.executable).with_name("moto_server"))
    proc = _spawn("moto_server", [moto, "-H", "127.0.0.1", "-p", str(port)], {}, folder)
    proc.url = f"http://127.0.0.1:{port}"
    _wait(proc, lambda: _answers(f"{proc.url}/moto-api/data.json"), "ready")
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


@dataclass
class ResourceMonitor:
    """Samples the RSS of some processes (peak per process) and their CPU time."""

    pids: dict[str, int]
    interval: float = 0.25
    peak_rss: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _cpu0: dict[str, float] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "ResourceMonitor":
        self._procs = {n: psutil.Process(p) for n, p in self.pids.items()}
        self._cpu0 = {n: _cpu(p) for n, p in self._procs.items()}
        self._machine0 = _machine_cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.cpu_seconds = {n: _cpu(p) - self._cpu0[n] for n, p in self._procs.items()}
        self.machine_cpu_seconds = _machine_cpu() - self._machine0

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, proc in self._procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
            self._stop.wait(self.interval)


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return 0.0


def _machine_cpu() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + getattr(times, "irq", 0) + getattr(times, "softirq", 0))
