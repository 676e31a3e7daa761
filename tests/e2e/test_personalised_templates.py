"""Personalised bulks and template reloads on a real ``dispatcher serve`` (two processes: the
API with its worker, and a worker process it spawned), checked in what the providers received
(the log provider's JSON-lines file), message by message."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from e2e.conftest import Server, wait_until
from support import new_id, path_id, sent_lines

N = 1000
GREET = {
    "default/email.subject.txt": "Hi {{ user.name }}, {{ app_name }} is ready",
    "default/email.html": '{% extends "_layouts/mail.html" %}{% block body %}<p>Hi {{ user.name }}, '
                          "your code is <b>{{ code }}</b>.</p>{% endblock %}",
    "default/email.txt": "Hi {{ user.name }}, your code is {{ code }}.",
    "default/sms.txt": "Hi {{ user.name }}, {{ app_name }} code {{ code }}"
                       "{% if discount is defined %}, {{ 100 // discount }}% off{% endif %}",
    "default/push.title.txt": "Hi {{ user.name }}",
    "default/push.body.txt": "{{ app_name }}: {{ user.attributes.plan }} plan",
    "default/in_app.title.txt": "Hi {{ user.name }}",
    "default/in_app.body.txt": "{{ app_name }} code {{ code }}",
}
LAYOUT = "<html><body>{% block body %}{% endblock %}</body></html>"


def write_templates(root: Path, files: dict[str, str], layout: str = LAYOUT, name: str = "greet") -> Path:
    for relative, text in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "_layouts").mkdir(parents=True, exist_ok=True)
    (root / "_layouts" / "mail.html").write_text(layout, encoding="utf-8")
    return root


def seed(client: httpx.Client, count: int) -> None:
    for i in range(count):
        r = client.put(f"/v1/users/u{i}", json={
            "name": f"Name{i}", "email": f"u{i}@example.com", "phone": f"+8210{10_000_000 + i}",
            "attributes": {"plan": "pro" if i % 2 else "free"}})
        assert r.status_code == 200, r.text
        assert client.post(f"/v1/users/u{i}/devices",
                           json={"token": f"tok-{i}", "platform": "android"}).status_code == 201


def settled(client: httpx.Client, nid: str) -> dict[str, Any] | None:
    counts = client.get(f"/v1/notifications/{path_id(nid)}").json()["counts"]
    return counts if all(c["pending"] == 0 for c in counts.values()) else None


def test_a_personalised_bulk_reaches_each_recipient_with_its_own_text(
        tmp_path: Path, dispatcher_env: dict[str, str], start_server: Callable[..., Server]) -> None:
    templates = write_templates(tmp_path / "templates", GREET)
    server = start_server({**dispatcher_env, "DISPATCHER_TEMPLATES_DIR": str(templates),
                           "DISPATCHER_WORKER_PROCESSES": "2"})
    with server.client() as client:
        seed(client, N)
        recipients: list[Any] = [{"id": f"u{i}", "data": {"code": f"C{i:04d}"}} for i in range(N)]
        recipients[500] = {"id": "u500", "data": {"code": "C0500", "discount": 0}}  # 100 // 0: fails alone
        nid = new_id()
        r = client.post("/v1/notifications", json={
            "id": nid, "template": "greet", "recipients": recipients, "data": {"app_name": "Foo"}})
        assert r.status_code == 202, r.text
        counts = wait_until(lambda: settled(client, nid), timeout=240, what="every row final")
        for channel in ("email", "sms", "push", "in_app"):  # u500 fails alone, all of its rows
            assert counts[channel] == {"pending": 0, "sent": N - 1, "delivered": 0, "bounced": 0,
                                       "complained": 0, "failed": 1, "skipped": 0}, channel
        failed = client.get(f"/v1/notifications/{path_id(nid)}/deliveries", params={"status": "failed"}).json()
        assert sorted((r["user_id"], r["channel"], r["reason"]) for r in failed["items"]) == [
            ("u500", channel, "template_error") for channel in ("email", "in_app", "push", "sms")]
        assert all("ZeroDivisionError" in r["detail"] and "sms.txt" in r["detail"] for r in failed["items"])

    sent = [m for m in sent_lines(tmp_path / "sent.jsonl") if m["notification_id"] == nid]
    by_key = Counter((m["user_id"], m["channel"]) for m in sent)
    assert set(by_key.values()) == {1}  # nobody got anything twice
    assert len(sent) == 3 * (N - 1)
    for m in sent:
        i = int(m["user_id"][1:])
        name, code, plan = f"Name{i}", f"C{i:04d}", "pro" if i % 2 else "free"
        expected = {
            "email": {"subject": f"Hi {name}, Foo is ready",
                      "html": f"<html><body><p>Hi {name}, your code is <b>{code}</b>.</p></body></html>",
                      "text": f"Hi {name}, your code is {code}."},
            "sms": {"text": f"Hi {name}, Foo code {code}"},
            "push": {"title": f"Hi {name}", "body": f"Foo: {plan} plan"},
        }[m["channel"]]
        assert m["parts"] == expected, m
        assert m["to"] == {"email": f"u{i}@example.com", "sms": f"+8210{10_000_000 + i}",
                           "push": f"tok-{i}"}[m["channel"]]
    assert not [key for key in by_key if key[0] == "u500"]


def test_sighup_reloads_every_process_under_load_and_a_broken_set_is_kept_out(
        tmp_path: Path, dispatcher_env: dict[str, str], start_server: Callable[..., Server]) -> None:
    files = {"default/sms.txt": "v1 Hi {{ user.name }} {{ code }}"}
    templates = write_templates(tmp_path / "templates", files)
    # A reload must pass the check, which renders every part with the template's example.
    (templates / "greet" / "template.json").write_text(
        '{"example": {"data": {"code": "7"}, "user": {"name": "Ann"}}}', encoding="utf-8")
    server = start_server({**dispatcher_env, "DISPATCHER_TEMPLATES_DIR": str(templates),
                           "DISPATCHER_WORKER_PROCESSES": "2"})
    users = 50
    sent_ids: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:  # notifications keep coming while the templates change under them
        with server.client() as client:
            while not stop.is_set():
                nid = new_id()
                r = client.post("/v1/notifications", json={
                    "id": nid, "template": "greet", "channels": ["sms"],
                    "recipients": [{"id": f"u{i}", "data": {"code": f"{len(sent_ids)}-{i}"}}
                                   for i in range(users)]})
                if r.status_code == 202:
                    sent_ids.append(nid)
                else:
                    errors.append(r.text)

    # At once: the worker process serve spawned may still be starting; it reloads once it can.
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: server.output().count("templates reloaded") >= 2, timeout=120,
               what="both processes to reload, the one still starting included")
    with server.client() as client:
        seed(client, users)
    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_until(lambda: len(sent_ids) >= 5, timeout=60, what="load before the reload")
        write_templates(templates, {"default/sms.txt": "v2 Hello {{ user.name }} {{ code }}"})
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server.output().count("templates reloaded") >= 4, timeout=60,
                   what="both processes to reload")
        reloaded_at = len(sent_ids)
        wait_until(lambda: len(sent_ids) >= reloaded_at + 5, timeout=60, what="load after the reload")
        # A broken set: a syntax error. Every process keeps v2 and says why.
        write_templates(templates, {"default/sms.txt": "v3 {% if %}"})
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server.output().count("templates not reloaded") >= 2, timeout=60,
                   what="both processes to refuse the broken set")
        broken_at = len(sent_ids)
        wait_until(lambda: len(sent_ids) >= broken_at + 5, timeout=60, what="load after the refusal")
    finally:
        stop.set()
        sender.join(60)
    assert errors == []
    assert "keeping the previous set: template 'greet', locale 'default', part file 'sms.txt'" in server.output()

    with server.client() as client:
        for nid in sent_ids:
            counts = wait_until(lambda nid=nid: settled(client, nid), timeout=240, what=f"{nid} final")
            assert counts["sms"] == {"pending": 0, "sent": users, "delivered": 0, "bounced": 0,
                                       "complained": 0, "failed": 0, "skipped": 0}
    sent = sent_lines(tmp_path / "sent.jsonl")
    keys = Counter((m["notification_id"], m["user_id"]) for m in sent)
    assert len(keys) == len(sent_ids) * users and set(keys.values()) == {1}  # nothing lost, nothing twice
    version: dict[str, set[str]] = {}
    for m in sent:
        version.setdefault(m["notification_id"], set()).add(m["parts"]["text"][:2])
    for i, nid in enumerate(sent_ids):
        texts = version[nid]
        assert texts <= {"v1", "v2"}, texts  # v3 never loaded
        if i >= reloaded_at + 1:  # accepted after every process had reloaded: v2 everywhere
            assert texts == {"v2"}, (i, texts)
