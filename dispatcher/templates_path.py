"""Where the shipped templates are: the default of ``DISPATCHER_TEMPLATES_DIR``.

The repository keeps them at its top (``templates/``, where template authors work), and
``pyproject.toml`` maps that folder into the distribution as the data-only package
``dispatcher_templates``. So a wheel install has them in ``site-packages/dispatcher_templates``
and an editable install finds them in the checkout, both through the import system.

Why ``find_spec`` and not ``importlib.resources.files``: the folder has no ``__init__.py`` (it
is a namespace package, so no Python file lives among the templates), and for an editable
install setuptools adds a path-hook entry to such a package's ``__path__`` that Python 3.11's
namespace resource reader rejects (``NotADirectoryError``). The first real folder on that path
is the answer for both install kinds; a checkout used without any install falls back to its
own ``templates/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["PACKAGE", "shipped_templates"]

PACKAGE = "dispatcher_templates"
_CHECKOUT = Path(__file__).resolve().parent.parent / "templates"


def shipped_templates() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    for entry in (spec.submodule_search_locations or []) if spec else []:
        if Path(entry).is_dir():
            return Path(entry)
    return _CHECKOUT
