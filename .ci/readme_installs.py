"""CI step: every ``pip install`` line the README shows works as written, in a fresh venv.

Finds each ``pip install …`` command in README.md (up to ``&&``, ``;``, a backtick or the end
of the line), groups them by the extras they name (``.``, ``-e .`` → none; ``-e '.[bench]'`` →
bench), and for each group makes one fresh venv, runs each command there from the checkout
exactly as written (through bash, so the quoting is the README's), then checks what the
README says it gives: the ``dispatcher`` command; ``python -m bench --help`` with ``bench``;
with ``test``, that pytest collects the whole suite (every test module's imports). pip's
cache is shared, so a group costs its install time only. Standard library only:
``python .ci/readme_installs.py [--ran LINE]``: ``--ran`` names a line the caller has just run
itself in a fresh venv (``.ci/run`` makes its ``.venv`` in a fresh clone with
``pip install -e '.[test,bench]'``, then runs the suite in it), which is then not run twice.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"pip install [^`&;\n]+")
CHECKS = {
    "": [["dispatcher", "--help"]],
    "bench": [["python", "-m", "bench", "--help"]],
    "test": [["python", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]],
}


def commands(readme: str) -> list[str]:
    return list(dict.fromkeys(match.group(0).strip() for match in COMMAND.finditer(readme)))


def extras(command: str) -> frozenset[str]:
    """The extras a ``pip install`` command names (``'.[test,bench]'`` -> test, bench)."""
    names: set[str] = set()
    for word in shlex.split(command)[2:]:
        match = re.fullmatch(r"[^\[]*\[([^\]]*)\]", word)
        if match:
            names |= {n.strip() for n in match.group(1).split(",") if n.strip()}
    return frozenset(names)


def main(argv: list[str]) -> int:
    ran = {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--ran"}
    found = commands((CHECKOUT / "README.md").read_text())
    if not found:
        print("readme installs: README.md shows no pip install line", file=sys.stderr)
        return 1
    groups: dict[frozenset[str], list[str]] = {}
    for command in found:
        if command in ran:
            print(f"  ran  {command}  (by the caller, in its fresh venv)")
            continue
        groups.setdefault(extras(command), []).append(command)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="readme-installs-") as tmp:
        for n, (names, lines) in enumerate(sorted(groups.items(), key=lambda g: sorted(g[0]))):
            failures += _group(Path(tmp) / f"venv{n}", names, lines)
    print(f"readme installs: {len(found)} install lines in {len(groups)} fresh venvs, "
          f"{failures} failed")
    return 1 if failures else 0


def _group(venv: Path, names: frozenset[str], lines: list[str]) -> int:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    failures = 0
    for line in lines:
        started = time.monotonic()
        ok = _run(["bash", "-c", line], env, f"{line}")
        checks = [check for extra in ("", *sorted(names)) for check in CHECKS.get(extra, [])]
        ok = ok and all(_run(check, env, f"after {line}: {' '.join(check)}") for check in checks)
        print(f"  {'ok  ' if ok else 'FAIL'} {line}  ({time.monotonic() - started:.0f} s)", flush=True)
        failures += not ok
    return failures


def _run(argv: list[str], env: dict[str, str], what: str) -> bool:
    result = subprocess.run(argv, cwd=CHECKOUT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"readme installs: {what} failed ({result.returncode}):\n"
              f"{(result.stdout + result.stderr)[-3000:]}", file=sys.stderr)
    return result.returncode == 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
