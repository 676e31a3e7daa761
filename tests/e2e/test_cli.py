"""The ``dispatcher`` command line against live servers: send and follow, status, the dead
letters, tokens, ``.env``, global options after the command, configuration errors.

Every command runs as a real subprocess (``python -m dispatcher …``), as an operator types it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from servers.aws_errors import unused_port_url
from support import channel_counts, create_queues, free_port, path_id

if TYPE_CHECKING:
    from e2e.conftest import Server

CLI_TIMEOUT = 180.0
WaitUntil = Callable[..., Any]


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)


def api_env(env: dict[str, str], server: Server | str) -> dict[str, str]:
    """The environment of an operator's shell: the server's settings plus the API's address
    and the service key of ``dispatcher_env`` (``app:<key>``)."""
    url = server if isinstance(server, str) else server.url
    return {**env, "DISPATCHER_URL": url, "DISPATCHER_API_KEY": env["DISPATCHER_API_KEYS"].split(":", 1)[1]}


def in_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal of 120 columns; its exit status and all it showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(argv, env={**env, "TERM": "xterm-256color", "COLUMNS": "120"}, cwd=cwd,
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = bytearray()
    deadline = time.monotonic() + CLI_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not data:
                    break
                shown += data
            elif process.poll() is not None:
                break
        else:
            process.kill()
            pytest.fail(f"{argv} did not end within {CLI_TIMEOUT:.0f}s:\n{shown.decode(errors='replace')}")
        return process.wait(30), shown.decode(errors="replace")
    finally:
        os.close(leader)


def counts(server: Server, notification_id: str) -> dict[str, Any]:
    with server.client() as http:
        answer = http.get(f"/v1/notifications/{path_id(notification_id)}")
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False




def test_send_wait_follows_1000_recipients_with_live_bars_and_exits_0(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server({**dispatcher_env, "DISPATCHER_WORKER_PROCESSES": "2"})
    users = tmp_path / "users.csv"
    users.write_text("user_id,name\n" + "".join(f"user-{i},Name {i}\n" for i in range(1000)))
    code, shown = in_terminal(
        [sys.executable, "-m", "dispatcher", "send", "--template", "app-install", "--csv", str(users),
         "--data", '{"app_name": "Foo"}', "--state", "installing", "--channels", "in_app,email",
         "--wait"], api_env(dispatcher_env, server), tmp_path)
    assert code == 0, shown
    assert "━" in shown and "in_app" in shown and "1000/1000" in shown  # the bars, at the end full
    notification_id = next(line.strip() for line in shown.splitlines() if line.startswith("app#"))
    assert counts(server, notification_id)["counts"] == {
        "in_app": channel_counts(sent=1000),
        "email": channel_counts(skipped=1000)}  # no email addresses
    assert "deliveries" in shown and "skipped" in shown  # the summary table


def test_send_wait_exits_1_when_rows_fail_and_says_why(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path) -> None:
    env = {**dispatcher_env, "DISPATCHER_SMS_PROVIDER": "sns", "AWS_ENDPOINT_URL_SNS": unused_port_url(),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "DISPATCHER_RETRY_MAX_ATTEMPTS": "2",
           "DISPATCHER_RETRY_BASE_DELAY": "0", "DISPATCHER_WORKER_PROCESSES": "1"}
    server = start_server(env)
    with server.client() as http:
        assert http.put("/v1/users/u1", json={"phone": "+12025550123"}).status_code == 200
    shell = api_env(dispatcher_env, server)
    sent = cli(shell, tmp_path, "send", "-t", "app-install", "--to", "u1,u2,u1", "--data",
               '{"app_name": "Foo"}', "--channels", "in_app,sms", "--wait")
    assert sent.returncode == 1, sent.stderr
    assert "1 duplicate recipients dropped" in sent.stderr
    assert "progress: in_app" in sent.stderr  # progress lines when not on a terminal
    notification_id = sent.stdout.splitlines()[0]
    assert counts(server, notification_id)["counts"]["sms"] == {
        "pending": 0, "sent": 0, "delivered": 0, "bounced": 0, "complained": 0, "failed": 1,
        "skipped": 1}  # u1's SMS failed; u2 has no phone
    assert "retries_exhausted" in sent.stdout  # the summary's reasons
    status = cli(shell, tmp_path, "status", notification_id, "--watch")
    assert status.returncode == 1 and "app-install" in status.stdout
    as_json = cli(shell, tmp_path, "status", notification_id, "--json")
    assert json.loads(as_json.stdout)["counts"]["in_app"]["sent"] == 2


def test_a_csv_over_10000_recipients_is_sent_as_several_notifications(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server({**dispatcher_env, "DISPATCHER_WORKER_PROCESSES": "1"})
    users = tmp_path / "many.csv"
    users.write_text("".join(f"m{i}\n" for i in range(10_001)))  # no header: the first column
    sent = cli(api_env(dispatcher_env, server), tmp_path, "send", "-t", "app-install", "--csv",
               str(users), "--data", '{"app_name": "Foo"}', "--channels", "in_app")
    assert sent.returncode == 0, sent.stderr
    ids = sent.stdout.split()
    assert [counts(server, i)["recipients"] for i in ids] == [10_000, 1]
    assert len(set(ids)) == 2 and all(i.startswith("app#") for i in ids)


def test_dlq_replay_delivers_a_message_once_its_cause_is_fixed(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path,
        wait_until: WaitUntil) -> None:
    gateway = start_server(dispatcher_env, "gateway")
    # A worker started before service 'app' got its key: it refuses app's chunks as poison.
    stale = start_server({**dispatcher_env, "DISPATCHER_API_KEYS": "other:other-key"}, "worker")
    shell = api_env(dispatcher_env, gateway)
    sent = cli(shell, tmp_path, "send", "-t", "app-install", "--to", "a,b", "--data", '{"app_name": "Foo"}',
               "--channels", "in_app")
    assert sent.returncode == 0, sent.stderr
    notification_id = sent.stdout.strip()
    wait_until(lambda: cli(shell, tmp_path, "dlq", "count").stdout.strip() == "1",
               timeout=60, what="the chunk in the dead letters")
    [letter] = [json.loads(line) for line in cli(shell, tmp_path, "dlq", "list", "--json").stdout.splitlines()]
    assert "app" in letter["reason"] and letter["dead_lettered_at"].startswith(time.strftime("%Y-"))
    table = cli({**shell, "COLUMNS": "200"}, tmp_path, "dlq", "list", "--table")
    assert notification_id in table.stdout and "dead-lettered at" in table.stdout
    stale.stop()
    start_server(dispatcher_env, "worker")  # the cause fixed: a worker that knows 'app'
    replayed = cli(shell, tmp_path, "dlq", "replay", "--all")
    assert replayed.returncode == 0 and "replayed 1 message" in replayed.stdout
    wait_until(lambda: counts(gateway, notification_id)["counts"]["in_app"]["sent"] == 2,
               timeout=60, what="the replayed chunk delivered")
    assert cli(shell, tmp_path, "dlq", "count").stdout.strip() == "0"


def test_dlq_purge_wants_yes_then_deletes(dispatcher_env: dict[str, str], tmp_path: Path) -> None:
    refused = cli(dispatcher_env, tmp_path, "dlq", "purge")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = cli(dispatcher_env, tmp_path, "dlq", "purge", "--yes")
    assert purged.returncode == 0 and "purged 0 dead letters" in purged.stdout


def test_settings_and_the_api_address_come_from_a_dotenv_file(
        dispatcher_env: dict[str, str], start_server: Callable[..., Server], tmp_path: Path) -> None:
    env = {k: v for k, v in dispatcher_env.items() if k not in (
        "DISPATCHER_API_KEYS", "DISPATCHER_USER_TOKEN_SECRET")}
    secret = "dotenv-user-token-secret-of-32-bytes!"
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"DISPATCHER_API_KEYS=app:from-dotenv\nDISPATCHER_USER_TOKEN_SECRET={secret}\n"
                      "DISPATCHER_WORKER_PROCESSES=1\n")
    server = start_server(env)  # its working directory is tmp_path
    with dotenv.open("a") as file:
        file.write(f"DISPATCHER_URL={server.url}\nDISPATCHER_API_KEY=from-dotenv\n")
    # No --service: the key's service is found in DISPATCHER_API_KEYS of the same .env.
    sent = cli(env, tmp_path, "send", "-t", "app-install", "--to", "u1", "--data", '{"app_name": "Foo"}',
               "--channels", "in_app", "--wait")
    assert sent.returncode == 0, sent.stderr
    minted = cli(env, tmp_path, "token", "u1", "--ttl", "5m")
    assert minted.returncode == 0, minted.stderr
    feed = httpx.get(f"{server.url}/v1/users/u1/notifications", trust_env=False,
                     headers={"Authorization": f"Bearer {minted.stdout.strip()}"})
    assert feed.status_code == 200 and len(feed.json()["items"]) == 1
    refused = httpx.get(f"{server.url}/v1/users/u2/notifications", trust_env=False,
                        headers={"Authorization": f"Bearer {minted.stdout.strip()}"})
    assert refused.status_code == 403


def test_log_level_after_the_subcommand_is_honoured(
        dispatcher_env: dict[str, str], tmp_path: Path, wait_until: WaitUntil) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "serve", "--port", str(port), "--log-level", "debug"],
            env={**dispatcher_env, "DISPATCHER_WORKER_PROCESSES": "2"}, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: healthy(url) or process.poll() is not None, timeout=120,
                   what="dispatcher serve --log-level debug to start")
        assert process.poll() is None, log_path.read_text()
        shell = api_env(dispatcher_env, url)
        headers = {"Authorization": f"Bearer {shell['DISPATCHER_API_KEY']}"}
        assert httpx.put(f"{url}/v1/users/u1", json={"email": "ann@example.com"}, headers=headers,
                         trust_env=False).status_code == 200
        sent = cli(shell, tmp_path, "send", "-t", "app-install", "--to", "u1", "--data", '{"app_name": "Foo"}',
                   "--channels", "email", "--wait")
        assert sent.returncode == 0, sent.stderr
        # The log provider says what it would send at DEBUG only, in whichever process sent it
        # (serve passes its level on to its worker processes).
        wait_until(lambda: "would send" in log_path.read_text(), timeout=30, what="a DEBUG line")
    finally:
        process.terminate()
        process.wait(60)


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["dlq", "list"], ["dlq", "replay", "--all"]])
@pytest.mark.parametrize("database_url", ["unreachable", "postgresql://postgres@127.0.0.1:99999/x",
                                          "mysql://root@127.0.0.1/x"])
def test_a_bad_database_url_is_one_line_and_exit_status_2(
        dispatcher_env: dict[str, str], tmp_path: Path, command: list[str], database_url: str) -> None:
    if database_url == "unreachable":
        database_url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/dispatcher"
    result = cli({**dispatcher_env, "DISPATCHER_DATABASE_URL": database_url}, tmp_path, *command)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("dispatcher: ") and "DATABASE" in result.stderr.upper()
    assert "secret" not in result.stderr  # the password is not shown


def test_an_unreachable_api_is_one_line_and_exit_status_2(dispatcher_env: dict[str, str], tmp_path: Path) -> None:
    shell = {**dispatcher_env, "DISPATCHER_URL": f"http://127.0.0.1:{free_port()}", "DISPATCHER_API_KEY": "k"}
    result = cli(shell, tmp_path, "send", "-t", "app-install", "--to", "u1", "--service", "app")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no answer from the API" in result.stderr
    not_a_url = cli({**shell, "DISPATCHER_URL": "localhost:8000"}, tmp_path, "status", "app#x")
    assert not_a_url.returncode == 2 and "not an http(s) URL" in not_a_url.stderr


def test_every_command_has_help_with_examples(dispatcher_env: dict[str, str], tmp_path: Path) -> None:
    for command in (["send"], ["status"], ["dlq"], ["dlq", "replay"], ["token"], ["serve"], ["worker"]):
        shown = cli(dispatcher_env, tmp_path, *command, "--help")
        assert shown.returncode == 0 and "Examples" in shown.stdout and "dispatcher " in shown.stdout, command


def test_dlq_on_sqs_lists_replays_and_purges_the_dead_letter_queue(aws: str, tmp_path: Path) -> None:
    import boto3

    queue_url, dlq_url = create_queues()
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=dlq_url, MessageBody='{"id": "app#1", "template": "gone"}', MessageAttributes={
        "reason": {"DataType": "String", "StringValue": "unknown template 'gone'"}})
    sqs.send_message(QueueUrl=dlq_url, MessageBody="redriven")  # moved by SQS: no reason attribute
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(DISPATCHER_QUEUE_URL=queue_url, DISPATCHER_DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}")
    assert cli(env, tmp_path, "dlq", "count").stdout.strip() == "2"
    letters = {json.loads(line)["reason"]: json.loads(line)
               for line in cli(env, tmp_path, "dlq", "list", "--json").stdout.splitlines()}
    assert set(letters) == {"unknown template 'gone'", "redriven by SQS (maxReceiveCount)"}
    replayed = cli(env, tmp_path, "dlq", "replay", "--id", letters["unknown template 'gone'"]["id"])
    assert replayed.returncode == 0 and "replayed 1 message" in replayed.stdout, replayed.stderr
    [back] = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    assert back["Body"] == '{"id": "app#1", "template": "gone"}'
    purged = cli(env, tmp_path, "dlq", "purge", "--yes")
    assert purged.returncode == 0 and "purged 1 dead letter" in purged.stdout
    assert not (tmp_path / "unused.db").exists()  # the SQS commands need no database
