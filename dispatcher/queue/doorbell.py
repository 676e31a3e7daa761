"""A doorbell between the processes that share one embedded queue on this machine.

The embedded queue is a table in a SQLite file, and ``serve`` runs its API and its workers in
processes of their own: a worker learns of a new message only by reading the table. Without
this module its receive loop polled every ``DISPATCHER_QUEUE_POLL_INTERVAL`` (50 ms) even when
nothing came: an idle ``serve`` spent 7.3 % of a core, 1.6 % with it (docs/BENCHMARKS.md).

Each process that receives binds a Unix datagram socket in a folder named after the
database's file; a process that enqueued rings every socket there once its transaction has
committed (a datagram of one byte, never waiting: a full socket buffer means that receiver has
rings pending already). An idle receiver woken reads the table at once (one that got messages
lately polls as before: :class:`~dispatcher.queue.local.LocalQueue`). Rings are hints, never
the only way a message is found: receivers still poll, seldom (:data:`POLL_WHEN_LISTENING`), so
a lost ring costs at most that long, and a message is taken by whoever reads it first.

A socket left by a killed process refuses rings; the ringer removes it. The folder is beside
the database (``.dispatcher.db.queue`` for ``dispatcher.db``: processes in containers that
share the database's volume share it too), or, when a socket's path there would not fit in
the 108 bytes Unix allows, in the temporary directory, named by a hash of the database's real
path; either way private to the user (mode 0700), so that processes sharing a file find each
other and others don't.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["POLL_WHEN_LISTENING", "Doorbell"]

log = logging.getLogger("dispatcher.queue")

#: How often a receiver that hears the doorbell still reads the table, in case a ring is lost.
POLL_WHEN_LISTENING: Final = 1.0
#: How long a ringer trusts its list of the folder's sockets (new receivers are found after this).
_LIST_FOR: Final = 1.0
_SUFFIX: Final = ".sock"
#: The longest socket name made here (Linux's largest pid), and what ``sun_path`` holds.
_LONGEST_NAME: Final = f"4194304-{'0' * 8}{_SUFFIX}"
_SUN_PATH: Final = 107


def _folder(database: Path) -> Path:
    beside = database.parent / f".{database.name}.queue"
    if len(os.fsencode(beside / _LONGEST_NAME)) <= _SUN_PATH:
        return beside
    digest = hashlib.sha256(str(database).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dispatcher-queue-{digest}"


class Doorbell:
    """The doorbell of the SQLite database at ``database``: :meth:`listen` to be woken,
    :meth:`ring` after a commit that enqueued."""

    def __init__(self, database: Path, *, folder: Path | None = None) -> None:
        self.folder = folder or _folder(database.resolve())
        self._socket: socket.socket | None = None
        self._path: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_at = -_LIST_FOR
        self._unavailable = False

    @property
    def listening(self) -> bool:
        return self._socket is not None

    def listen(self, on_ring: Callable[[], None]) -> bool:
        """Call ``on_ring`` on this loop whenever another process rings; False (and polling
        stays as it was) when the socket can't be made."""
        if self._socket is not None:
            return True
        if self._unavailable:
            return False
        path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        try:
            sock = self._bound(path)
        except OSError as exc:
            self._unavailable = True
            log.warning("queue doorbell unavailable in %s (%s): polling every "
                        "DISPATCHER_QUEUE_POLL_INTERVAL instead", self.folder, exc)
            return False
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._heard, sock, on_ring)
        self._socket, self._path, self._loop = sock, path, loop
        return True

    def _bound(self, path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            self.folder.mkdir(mode=0o700, exist_ok=True)
            try:
                sock.bind(str(path))
            except FileNotFoundError:  # the last listener out removed the folder meanwhile
                self.folder.mkdir(mode=0o700, exist_ok=True)
                sock.bind(str(path))
        except BaseException:
            sock.close()
            raise
        return sock

    def ring(self) -> None:
        """Wake every other listener of this database on this machine (best effort)."""
        now = time.monotonic()
        if now - self._listed_at >= _LIST_FOR:
            self._peers = self._list()
            self._listed_at = now
        if not self._peers:
            return
        if self._sender is None:
            try:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:  # no Unix sockets here: receivers poll
                self._peers = []
                self._listed_at = float("inf")
                return
            self._sender.setblocking(False)
        gone = []
        for peer in self._peers:
            try:
                self._sender.sendto(b"!", peer)
            except (BlockingIOError, InterruptedError):
                pass  # its buffer is full: it has rings to read already
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # its process is gone
                    gone.append(peer)
                    with contextlib.suppress(OSError):
                        os.unlink(peer)
                else:
                    log.debug("queue doorbell: %s: %s", peer, exc)
        if gone:
            self._peers = [p for p in self._peers if p not in gone]

    def close(self) -> None:
        if self._socket is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # the last one out (fails while others are there)
            self._path = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def _list(self) -> list[str]:
        own = str(self._path) if self._path is not None else None
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        return [p for p in (str(self.folder / n) for n in names if n.endswith(_SUFFIX)) if p != own]

    @staticmethod
    def _heard(sock: socket.socket, on_ring: Callable[[], None]) -> None:
        rang = False
        while True:  # every ring queued so far: one wake-up
            try:
                sock.recv(64)
            except OSError:  # nothing more to read (BlockingIOError), or nothing readable
                break
            rang = True
        if rang:
            on_ring()
