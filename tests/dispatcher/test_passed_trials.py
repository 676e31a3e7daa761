"""The gateway's memory of trial renders that passed (dispatcher.fan_out.PassedTrials): what it
keys on, and its bounds. What a caller sees of it is in tests/api/test_api_trial_render.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dispatcher.fan_out import PassedTrials
from dispatcher.rendering import Part, TemplateRegistry, TemplateSet

SHIPPED = Path(__file__).resolve().parents[2] / "templates"


def _parts(templates: TemplateSet, channel: str = "sms") -> list[Part]:
    return list(templates.resolve("app-install", channel, None).values())


def _context(**values: Any) -> dict[str, Any]:
    return {"app_name": "Maps", "state": "installing", "notification_id": "app#1", **values}


def test_the_key_holds_what_the_parts_read_and_nothing_else() -> None:
    templates = TemplateRegistry(SHIPPED).current()
    passed, parts = PassedTrials(), _parts(templates)
    key = passed.key(templates, parts, _context())
    assert key is not None
    # The SMS part reads app_name and state, not the notification's id.
    assert passed.key(templates, parts, _context(notification_id="app#2")) == key
    assert passed.key(templates, parts, _context(app_name="Mail")) != key
    assert passed.key(templates, parts, _context(state="completed")) != key
    assert passed.key(templates, _parts(templates, "push"), _context()) != key


def test_only_the_most_recent_keys_are_kept() -> None:
    templates = TemplateRegistry(SHIPPED).current()
    passed, parts = PassedTrials(size=2), _parts(templates)
    keys = []
    for name in ("A", "B", "C"):
        key = passed.key(templates, parts, _context(app_name=name))
        assert key is not None
        passed.add(templates, key)
        keys.append(key)
    assert [passed.seen(k) for k in keys] == [False, True, True]


def test_long_or_odd_values_are_not_kept() -> None:
    templates = TemplateRegistry(SHIPPED).current()
    passed, parts = PassedTrials(max_key_chars=100), _parts(templates)
    assert passed.key(templates, parts, _context(app_name="x" * 200)) is None
    assert passed.key(templates, parts, _context(app_name=object())) is None


def test_a_new_template_set_starts_empty_and_a_key_of_the_old_one_is_not_kept() -> None:
    registry = TemplateRegistry(SHIPPED)
    old, new = registry.current(), TemplateSet(SHIPPED, registry.budget)
    passed = PassedTrials()
    old_key = passed.key(old, _parts(old), _context())
    assert old_key is not None
    passed.add(old, old_key)
    assert passed.seen(old_key)
    new_key = passed.key(new, _parts(new), _context())  # the set changed: forgotten
    assert new_key is not None and not passed.seen(old_key) and not passed.seen(new_key)
    passed.add(old, old_key)  # rendered against the old set meanwhile: not kept
    assert not passed.seen(old_key)
