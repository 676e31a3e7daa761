"""The embedded queue's doorbell: a commit in one process wakes receivers in others at once,
not at their next poll; stale sockets are cleared; callbacks run only after a commit."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.queue.doorbell import Doorbell
from dispatcher.queue.local import LocalQueue
from dispatcher.runtime import Runtime
from dispatcher.store.database import Database

#: Far longer than any test waits: a receiver that gets a message did not find it by polling.
NEVER = 600.0


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two connections to one SQLite file with nothing in common but the file, as two
    processes have (each its own engine, write lock and in-process wake-up)."""
    url = f"sqlite:///{tmp_path / 'dispatcher.db'}"
    first, second = Database(url), Database(url)
    await first.create_schema()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_message_committed_elsewhere_wakes_a_waiting_receiver(
        two_processes: tuple[Database, Database]) -> None:
    worker_db, api_db = two_processes
    worker = LocalQueue(worker_db, poll_interval=NEVER)
    api = LocalQueue(api_db, poll_interval=NEVER)
    try:
        assert await worker.receive(1, wait_seconds=0) == []  # listening from now on
        waiting = asyncio.create_task(worker.receive(1, wait_seconds=NEVER))
        await api.send_batch(["hello"])
        received = await asyncio.wait_for(waiting, timeout=30)
    finally:
        await worker.close()
        await api.close()

    assert [m.body for m in received] == ["hello"]


async def test_each_of_several_receivers_is_woken(two_processes: tuple[Database, Database]) -> None:
    worker_db, api_db = two_processes
    workers = [LocalQueue(worker_db, poll_interval=NEVER), LocalQueue(worker_db, poll_interval=NEVER)]
    api = LocalQueue(api_db, poll_interval=NEVER)
    try:
        for worker in workers:
            assert await worker.receive(1, wait_seconds=0) == []
        waiting = [asyncio.create_task(w.receive(1, wait_seconds=NEVER)) for w in workers]
        await api.send_batch(["one", "two"])
        received = await asyncio.wait_for(asyncio.gather(*waiting), timeout=30)
    finally:
        for queue in (*workers, api):
            await queue.close()

    assert sorted(m.body for batch in received for m in batch) == ["one", "two"]


async def test_a_socket_left_by_a_killed_process_is_cleared_by_the_next_ring(tmp_path: Path) -> None:
    folder = tmp_path / "bell"
    folder.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / "4242-deadbeef.sock"))
    dead.close()  # its file stays, as after kill -9
    heard = asyncio.Event()
    alive = Doorbell(tmp_path / "dispatcher.db", folder=folder)
    ringer = Doorbell(tmp_path / "dispatcher.db", folder=folder)
    try:
        assert alive.listen(heard.set)
        ringer.ring()
        await asyncio.wait_for(heard.wait(), timeout=30)
    finally:
        alive.close()
        ringer.close()

    assert not (folder / "4242-deadbeef.sock").exists()
    assert not folder.exists()  # the last listener out removed the folder


async def test_without_a_folder_to_listen_in_receivers_go_on_polling(tmp_path: Path) -> None:
    (tmp_path / "bell").write_text("a file where the folder would be")
    doorbell = Doorbell(tmp_path / "dispatcher.db", folder=tmp_path / "bell")

    assert doorbell.listen(lambda: None) is False
    assert doorbell.listening is False
    doorbell.ring()  # and ringing is harmless


def test_the_folder_is_beside_the_database_unless_a_socket_path_there_is_too_long() -> None:
    assert Doorbell(Path("/data/dispatcher.db")).folder == Path("/data/.dispatcher.db.queue")
    deep = Path("/" + "d" * 100) / "dispatcher.db"
    far = Doorbell(deep).folder
    assert far.parent == Path(tempfile.gettempdir()) and far.name.startswith("dispatcher-queue-")
    assert Doorbell(deep).folder == far  # every process of that database finds the same one


async def test_after_commit_callbacks_run_once_committed_and_never_on_rollback(
        runtime: Runtime) -> None:
    db, called = runtime.store.db, []
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            db.after_commit(conn, lambda: called.append("rolled back"))
            raise RuntimeError("roll back")
    async with db.write() as conn:
        db.after_commit(conn, lambda: called.append("committed"))
        assert called == []  # not before the commit
    async with db.write():
        pass  # a later transaction on the same pooled connection runs nothing again

    assert called == ["committed"]
