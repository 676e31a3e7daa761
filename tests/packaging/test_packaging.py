"""What a wheel holds: every Python package of the checkout, and the shipped templates.

``pyproject.toml`` lists its packages (the templates folder is mapped in as package data, which
``packages.find`` can't express), so a package added later must be listed too. The end-to-end
proof, a wheel installed in a fresh venv serving a notification, is ``.ci/wheel_smoke.py``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from dispatcher.config import Settings
from dispatcher.rendering import TemplateRegistry
from dispatcher.templates_path import PACKAGE, shipped_templates

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_config() -> dict[str, object]:
    config: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config


def test_every_package_of_the_checkout_is_in_the_wheel() -> None:
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for top in ("dispatcher", "channels") for init in (ROOT / top).rglob("__init__.py")}
    listed = set(_setuptools_config()["packages"])  # type: ignore[arg-type]
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_the_templates_folder_ships_as_package_data() -> None:
    config = _setuptools_config()
    assert config["package-dir"] == {PACKAGE: "templates"}
    assert PACKAGE in config["packages"]  # type: ignore[operator]


def test_the_default_templates_dir_is_the_shipped_templates() -> None:
    assert shipped_templates() == ROOT / "templates"  # this checkout, installed editable
    assert Settings().templates_dir == shipped_templates()
    assert "app-install" in TemplateRegistry(shipped_templates()).names()


def test_the_api_pages_assets_ship_as_package_data() -> None:
    """/docs and /redoc work offline only if their scripts are in the wheel."""
    from dispatcher.api.openapi import ASSETS

    package_data = _setuptools_config()["package-data"]
    assert package_data["dispatcher.api"] == ["docs_assets/*"]  # type: ignore[index]
    shipped = {p.name for p in ASSETS.iterdir()}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
            "swagger-ui-dist.LICENSE", "redoc.LICENSE"} <= shipped
