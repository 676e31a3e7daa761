"""The arrows between modules point one way (README, "Layout"): read from the source's imports.

* ``channels/`` (provider adapters) imports nothing from ``dispatcher/``;
* ``transport/`` (shared wire clients) imports neither ``dispatcher/`` nor ``channels/``;
* the core (``dispatcher/`` outside ``store/`` and ``queue/``) imports no ``sqlalchemy``;
* the core imports no adapter module: only ``runtime.py`` (the wiring) and ``cli.py`` choose
  adapters; everything else receives ports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ("channels.ses", "channels.sns", "channels.fcm", "channels.log", "dispatcher.queue.sqs",
            "dispatcher.queue.local", "dispatcher.bus.redis", "dispatcher.bus.local", "dispatcher.bus.pipe")
WIRING = {"dispatcher/runtime.py", "dispatcher/cli.py"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(paths: list[Path], bad: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        hits = sorted(n for n in imports(path) if any(n == b or n.startswith(b + ".") for b in bad))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    return found


def core() -> list[Path]:
    return [p for p in modules("dispatcher")
            if not str(p.relative_to(ROOT)).startswith(("dispatcher/store/", "dispatcher/queue/"))]


def test_there_are_modules_to_check() -> None:
    assert len(modules("dispatcher")) > 20 and modules("channels") and modules("transport")


def test_channels_import_nothing_from_the_core() -> None:
    assert offending(modules("channels"), ("dispatcher",)) == {}


def test_transport_imports_neither_the_core_nor_the_channels() -> None:
    assert offending(modules("transport"), ("dispatcher", "channels")) == {}


def test_the_core_does_not_speak_sql() -> None:
    assert offending(core(), ("sqlalchemy",)) == {}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_only_the_wiring_chooses_an_adapter(adapter: str) -> None:
    assert offending([p for p in core() if str(p.relative_to(ROOT)) not in WIRING], (adapter,)) == {}
