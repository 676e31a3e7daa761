"""kill -9 of the process between a ledger change and its webhook: the webhook still arrives,
with the same webhook-id, from the process started next on the same store.

A real ``dispatcher serve``; a real local receiver verifying Standard Webhooks signatures. The
receiver answers 500 until the server is killed, so the webhook written with the ledger's last
change is provably in the outbox (seen, not delivered) when the process dies."""

from __future__ import annotations

import uuid

from webhook_receiver import Receiver


def test_a_webhook_survives_kill_9_and_keeps_its_id(dispatcher_env, start_server, wait_until):
    receiver = Receiver()
    receiver.failing = True
    env = dispatcher_env | {
        "DISPATCHER_WORKER_PROCESSES": "1",
        "DISPATCHER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DISPATCHER_WEBHOOK_RETRY_BASE_DELAY": "0.2",
        "DISPATCHER_WEBHOOK_RETRY_MAX_DELAY": "0.5",
        "DISPATCHER_WEBHOOK_POLL_INTERVAL": "0.1",
        "DISPATCHER_WEBHOOK_TIMEOUT": "2",
    }
    try:
        server = start_server(env)
        with server.client() as client:
            r = client.put("/v1/webhooks", json={"url": receiver.url, "events": ["notification.completed"]})
            assert r.status_code == 200, r.text
            receiver.secret = r.json()["secret"]
            for i in range(20):
                assert client.put(f"/v1/users/u{i}", json={"email": f"u{i}@example.com"}).status_code == 200
            nid = f"app#{uuid.uuid4()}"
            r = client.post("/v1/notifications", json={"id": nid, "recipients": [f"u{i}" for i in range(20)],
                                                        "template": "app-install", "data": {"app_name": "Foo"}})
            assert r.status_code == 202, r.text
        wait_until(lambda: sum(receiver.attempts.values()) >= 2, timeout=60,
                   what="the completed webhook to be attempted (and refused) twice")
        server.kill()
        [webhook_id] = list(receiver.attempts)
        assert receiver.accepted == {}

        receiver.failing = False
        start_server(env)
        wait_until(lambda: webhook_id in receiver.accepted, timeout=60,
                   what="the webhook to arrive after the restart")
        payload = receiver.accepted[webhook_id]
        assert payload["type"] == "notification.completed" and payload["data"]["notification_id"] == nid
        assert list(receiver.attempts) == [webhook_id]  # one webhook, one id, across both processes
        assert receiver.bad_signatures == 0
    finally:
        receiver.close()


def test_a_receiver_that_never_answers_does_not_hold_up_delivery(dispatcher_env, start_server, wait_until):
    """Every webhook request hangs; notifications after it are still delivered to the end."""
    receiver = Receiver()
    receiver.holding = True
    env = dispatcher_env | {"DISPATCHER_WORKER_PROCESSES": "1", "DISPATCHER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
                            "DISPATCHER_WEBHOOK_POLL_INTERVAL": "0.1", "DISPATCHER_WEBHOOK_CONCURRENCY": "2",
                            "DISPATCHER_WEBHOOK_TIMEOUT": "60"}
    try:
        server = start_server(env)
        with server.client() as client:
            r = client.put("/v1/webhooks", json={"url": receiver.url})
            receiver.secret = r.json()["secret"]
            for i in range(50):
                client.put(f"/v1/users/u{i}", json={"email": f"u{i}@example.com"})
            ids = []
            for _ in range(6):  # 6 completed webhooks for 2 request slots, all hanging
                nid = f"app#{uuid.uuid4()}"
                ids.append(nid)
                assert client.post("/v1/notifications", json={
                    "id": nid, "recipients": [f"u{i}" for i in range(50)], "template": "app-install",
                    "data": {"app_name": "Foo"}}).status_code == 202

            def all_final() -> bool:
                for nid in ids:
                    counts = client.get(f"/v1/notifications/{nid.replace('#', '%23')}").json()["counts"]
                    if any(c["pending"] for c in counts.values()):
                        return False
                return True

            wait_until(lambda: receiver.held >= 2, timeout=60, what="the receiver to hold two webhook requests")
            wait_until(all_final, timeout=120, what="every notification to be delivered while webhooks hang")
            pending = client.get("/v1/webhooks/deliveries", params={"status": "pending"}).json()["items"]
            assert len(pending) == 6 and receiver.accepted == {}  # none told yet: all waiting
        receiver.holding = False
        receiver.release.set()
        wait_until(lambda: len(receiver.of_type("notification.completed")) == 6, timeout=120,
                   what="the six webhooks once the receiver answers")
    finally:
        receiver.release.set()
        receiver.close()
