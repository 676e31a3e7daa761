"""Personalised chunks through the real worker path (queue, planner, ledger, providers):
per-recipient data and user fields in every part, a recipient whose data breaks the template
failing alone, the unsubscribe link per recipient in a shared email, and which parts are
rendered per recipient (decided from the parts' AST when the template is loaded)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from support import new_id

from channels.base import Message, Receipt
from dispatcher.config import Settings
from dispatcher.messages import ChunkMessage, decode_chunk, encode_chunk
from dispatcher.rendering import TemplateSet
from dispatcher.runtime import Runtime

FILES = {
    "greet/default/sms.txt": "Hi {{ user.name or 'there' }}, {{ app_name }} code {{ code }}"
                             "{% if discount is defined %} {{ 100 // discount }}% off{% endif %}",
    "greet/default/push.title.txt": "{{ app_name }} is ready",
    "greet/default/push.body.txt": "{{ user.attributes.plan | default('free') }} plan",
    "greet/default/email.subject.txt": "{{ app_name }} installed",
    "greet/default/email.html": '{% extends "_layouts/mail.html" %}{% block body %}<b>{{ app_name }}</b>{% endblock %}',
    "greet/default/email.txt": "{{ app_name }}\n{{ unsubscribe_url }}",
    "greet/ko/sms.txt": "{{ user.name }}님 {{ code }}",
    "_layouts/mail.html": '<html>{% block body %}{% endblock %}<a href="{{ unsubscribe_url }}">x</a></html>',
}


class Recording:
    name: ClassVar[str] = "recording"

    def __init__(self, channel: str) -> None:
        self.channel = channel  # type: ignore[misc]
        self.calls: list[Message] = []

    async def send(self, message: Message) -> Receipt:
        self.calls.append(message)
        return Receipt(f"{self.channel}-{len(self.calls)}")

    async def aclose(self) -> None:
        return None


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    for relative, text in FILES.items():
        path = tmp_path / "templates" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path / "templates"


@pytest.fixture
def providers() -> dict[str, Recording]:
    return {c: Recording(c) for c in ("email", "sms", "push")}


@pytest.fixture
async def runtime(settings: Settings, templates_dir: Path,
                  providers: dict[str, Recording]) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings.model_copy(update={
        "templates_dir": templates_dir, "public_url": "https://notify.example.com",
        "unsubscribe_secret": "unsubscribe-secret-of-at-least-32-bytes!"}), providers=providers)
    yield rt
    await rt.close()


async def test_each_recipient_gets_its_own_data_and_name_and_a_bad_one_fails_alone(
        runtime: Runtime, providers: dict[str, Recording]) -> None:
    for i in range(60):
        await runtime.store.users.upsert(f"u{i}", {
            "name": f"Name{i}", "phone": f"+8210{10000000 + i}", "email": f"u{i}@example.com",
            "attributes": {"plan": "pro"} if i % 2 else {}, "locale": "ko" if i == 7 else None})
        await runtime.store.users.add_device(f"u{i}", f"tok-{i}", "android")
    own: dict[str, dict[str, Any]] = {f"u{i}": {"code": f"C{i}"} for i in range(0, 60, 3)}
    own["u5"] = {"code": "C5", "discount": 0}  # 100 // 0: this recipient's sms fails, no one else's
    message = ChunkMessage(id=new_id(), service="app", template="greet",
                           recipients=tuple(f"u{i}" for i in range(60)) + ("nobody",),
                           data={"app_name": "Foo", "code": "shared"}, recipient_data=own)
    assert decode_chunk(encode_chunk(message)) == message
    await runtime.queue.send_batch([encode_chunk(message)])
    await runtime.worker().drain()

    sms = {m.user_id: m.parts["text"] for m in providers["sms"].calls}
    for i in range(60):
        if i == 5:
            continue
        code = own.get(f"u{i}", {}).get("code", "shared")
        expected = f"Name{i}님 {code}" if i == 7 else f"Hi Name{i}, Foo code {code}"
        assert sms.pop(f"u{i}") == expected
    assert sms == {}
    push = {m.user_id: m.parts for m in providers["push"].calls}
    assert "u5" not in push  # u5's rows all fail: one broken part fails the recipient, loudly
    assert [push[f"u{i}"]["body"] for i in (1, 2)] == ["pro plan", "free plan"]
    assert len(push) == 59
    rows, _ = await runtime.store.notifications.deliveries(message.id, limit=1000)
    failed = sorted((r["user_id"], r["channel"], r["reason"]) for r in rows if r["status"] == "failed")
    assert failed == [("u5", channel, "template_error") for channel in ("email", "push", "sms")]
    assert all("ZeroDivisionError" in r["detail"] and "sms.txt" in r["detail"]
               for r in rows if r["status"] == "failed")
    assert {r["status"] for r in rows if r["user_id"] == "nobody"} == {"skipped"}  # no record, no contacts

    emails = {m.user_id: m for m in providers["email"].calls}
    assert len(emails) == 59
    for mail in emails.values():  # one shared render, each recipient's own link in it
        link = mail.unsubscribe_url
        assert link and link.startswith("https://notify.example.com/v1/unsubscribe/")
        assert mail.parts["html"] == f'<html><b>Foo</b><a href="{link}">x</a></html>'
        assert mail.parts["text"] == f"Foo\n{link}"
    assert len({m.unsubscribe_url for m in emails.values()}) == 59


def test_what_each_part_uses_is_known_at_load(templates_dir: Path) -> None:
    parts = TemplateSet(templates_dir).locale_parts("greet")["default"]
    personal = {file for file, part in parts.items() if part.personal}
    assert personal == {"sms.txt", "push.body.txt"}  # they use user
    assert parts["email.html"].variables == frozenset({"app_name", "unsubscribe_url"})  # the layout's too
    assert parts["sms.txt"].uses_any({"discount"}) and not parts["push.title.txt"].uses_any({"code"})


def test_the_shipped_email_footer_carries_each_recipients_link_and_none_when_critical() -> None:
    from dispatcher.model import UserRecord
    from dispatcher.planning import Planner, channel_sets
    from dispatcher.rendering import TemplateRegistry
    from dispatcher.templates_path import shipped_templates
    from dispatcher.unsubscribe import UnsubscribeLinks

    links = UnsubscribeLinks("https://notify.example.com", "unsubscribe-secret-of-at-least-32-bytes!")
    registry = TemplateRegistry(shipped_templates())
    info = registry.info("app-install")
    people = {"u1": UserRecord("u1", email="u1@example.com"),
              "u2": UserRecord("u2", email="u2@example.com", locale="ko-KR")}

    def emails(category: str, critical: frozenset[str]) -> dict[str, Message]:
        message = ChunkMessage(id=new_id(), service="app", template="app-install", recipients=("u1", "u2"),
                               data={"app_name": "Foo"}, state="completed", category=category)
        plan = Planner(registry, critical=critical, phone_region=None, links=links).plan(
            message, info, channel_sets(["email"], info), people)
        return {key.user_id: mail for key, [mail] in plan.sends.items()}

    for user_id, mail in emails("app", frozenset()).items():
        link = links.read(mail.unsubscribe_url.rpartition("/")[2]) if mail.unsubscribe_url else None
        assert link is not None and link.user_id == user_id
        assert f'<a href="{mail.unsubscribe_url}"' in mail.parts["html"]
        assert mail.parts["text"].endswith(mail.unsubscribe_url or "")
        assert ("이메일 수신 거부" if user_id == "u2" else "Unsubscribe from these emails") in mail.parts["html"]
    for mail in emails("security", frozenset({"security"})).values():
        assert mail.unsubscribe_url is None and "unsubscribe" not in mail.parts["html"].lower()
        assert mail.parts["html"].endswith("</html>")


def test_data_for_someone_not_among_a_messages_recipients_is_dropped() -> None:
    import json

    body = json.loads(encode_chunk(ChunkMessage(id=new_id(), service="app", template="greet",
                                                recipients=("u1",), recipient_data={"u1": {"code": "A"}})))
    body["recipient_data"]["u9"] = {"code": "B"}
    assert decode_chunk(json.dumps(body)).recipient_data == {"u1": {"code": "A"}}


def test_images_beside_the_layouts_are_left_alone(templates_dir: Path) -> None:
    (templates_dir / "_layouts" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert "_layouts/logo.png" not in TemplateSet(templates_dir).layouts()


def test_recipients_held_for_quiet_hours_keep_their_own_data(templates_dir: Path) -> None:
    from datetime import UTC, datetime

    from dispatcher.delivery import _held
    from dispatcher.model import UserRecord
    from dispatcher.planning import Planner, channel_sets
    from dispatcher.preferences import Preferences
    from dispatcher.rendering import TemplateRegistry

    registry = TemplateRegistry(templates_dir)
    info = registry.info("greet")
    night = Preferences.from_json({"quiet_hours": {"start": "22:00", "end": "07:00"}})
    people = {"u1": UserRecord("u1", phone="+821012345678", name="Ann", timezone="Asia/Seoul", preferences=night),
              "u2": UserRecord("u2", phone="+821012345679", name="Bo")}
    message = ChunkMessage(id=new_id(), service="app", template="greet", recipients=("u1", "u2"),
                           data={"app_name": "Foo"}, recipient_data={"u1": {"code": "A"}, "u2": {"code": "B"}})
    planner = Planner(registry, critical=frozenset(), phone_region=None, quiet_default=None,
                      clock=lambda: datetime(2026, 6, 1, 14, 0, tzinfo=UTC))  # 23:00 in Seoul
    plan = planner.plan(message, info, channel_sets(["sms"], info), people)
    assert [m.parts["text"] for [m] in plan.sends.values()] == ["Hi Bo, Foo code B"]  # u2 now
    [held] = _held(plan)
    later = decode_chunk(held.body)
    assert later.recipients == ("u1",) and later.recipient_data == {"u1": {"code": "A"}}
