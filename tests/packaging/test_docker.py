"""The image and the compose file match the wheel: what the Dockerfile runs is the console
script pyproject defines, the running stage holds only the installed wheel (templates are its
package data, never copied beside it), and compose runs the gateway and two workers on the
database queue. (CI also runs ``docker compose config`` where a docker CLI has compose; no
test builds the image.)
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            found.append([])
        found[-1].append((instruction.upper(), arguments.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not the exec (JSON) form: {arguments}"
    return value


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_entrypoint_is_the_console_script_and_the_command_is_one_of_its_commands() -> None:
    final = dict(stages()[-1])
    [script] = exec_form(final["ENTRYPOINT"])
    assert script in pyproject()["project"]["scripts"]
    command = exec_form(final["CMD"])
    installed = Path(sys.executable).with_name(script)  # this venv's console script
    shown = subprocess.run([str(installed), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr


def test_the_running_stage_holds_only_the_installed_wheel() -> None:
    build, final = stages()[0], stages()[-1]
    copies = [arguments for instruction, arguments in final if instruction == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), copies  # no sources, no templates/
    assert any("pip install" in a and ".whl" in a for i, a in build if i == "RUN")


def test_the_build_stage_copies_every_package_the_wheel_lists() -> None:
    setuptools = pyproject()["tool"]["setuptools"]
    folders = {p.split(".")[0] for p in setuptools["packages"] if p not in setuptools["package-dir"]}
    folders |= set(setuptools["package-dir"].values())
    copied = {shlex.split(a)[0].rstrip("/") for i, a in stages()[0] if i == "COPY"}
    assert folders <= copied, f"the wheel needs {sorted(folders - copied)} copied into the build stage"


def test_the_image_runs_as_a_user_and_checks_its_health() -> None:
    final = stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    [check] = [a for i, a in final if i == "HEALTHCHECK"]
    assert "/healthz" in check and "python" in check


def test_compose_runs_a_gateway_and_two_workers_on_the_database_queue() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert {"postgres", "redis", "gateway", "worker"} <= set(services)
    assert services["gateway"]["command"] == ["gateway"] and services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    gateway, worker = services["gateway"]["environment"], services["worker"]["environment"]
    assert gateway == worker  # the same keys and token secret in every process
    assert gateway["DISPATCHER_QUEUE_URL"] == "database"
    assert gateway["DISPATCHER_DATABASE_URL"].startswith("postgresql://")
    assert gateway["DISPATCHER_REDIS_URL"].startswith("redis://")
