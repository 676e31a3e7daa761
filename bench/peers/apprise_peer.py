"""The Apprise peer: the same email, SMS and push per recipient through Apprise's own plugins.

What is measured: Apprise 2.x used as its users use it, sending the ``app-install`` message
(rendered once with our template registry, as any sender would) to every recipient on three
channels: SES (``ses://``, Apprise's SES v1 ``SendRawEmail``), SNS (``sns://``, ``Publish`` to
a phone number) and FCM (``fcm://project/token?keyfile=…``, HTTP v1 with a service-account key
and OAuth2). Per recipient it builds an ``apprise.Apprise()`` from those URLs, tagged by
channel, and calls ``notify()`` once per channel, since each channel has its own text.

How: ``workers`` subprocesses (both cores), each with its share of the recipients. Only two
things differ from production, both in each worker's process: every plugin's endpoint points
at the stand-ins (SES and SNS set ``notify_url`` in ``__init__``, FCM formats the class's
``notify_oauth2_url``; the token endpoint comes from the key file's ``token_uri``), and
``request_rate_per_sec = 0`` turns the per-plugin throttle off. The subclasses that do this
are registered under Apprise's own schemas, so the URLs and every line of ``send()`` are
Apprise's. The time runs from the first send to the last (imports and plugin loading before
it); deliveries are what the stand-ins counted (``/_stats``), errors the ``notify()`` calls
that returned False.

What Apprise does per send, as shipped (so it is in the figures): a new HTTP connection per
request (``requests.post``, no session), a MIME message per email, a SigV4 signature per AWS
call, and, for FCM, the key file re-read and re-parsed and a new OAuth2 token fetched per
``send()`` (``NotifyFCM.access_token`` calls ``GoogleOAuth.load()``, which drops the cached
token): the stand-ins' ``token`` counter shows it. Loading the PEM key validates it, about 30 ms
of CPU for RSA-2048 with cryptography 50 on OpenSSL 3, which makes push cost ~20 times what an
email or SMS costs here. One ``fcm://`` URL listing many tokens would pay it once per
``notify()``, but only recipients who get the very same text can share a URL.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote

import apprise
from apprise.manager_plugins import NotificationManager
from apprise.plugins.fcm import NotifyFCM
from apprise.plugins.ses import NotifySES
from apprise.plugins.sns import NotifySNS

from bench.peers import PeerResult
from dispatcher.rendering import TemplateRegistry

if TYPE_CHECKING:
    from bench.standins import StandIns

__all__ = ["PeerResult", "run_apprise"]

ROOT: Final = Path(__file__).resolve().parents[2]
TEMPLATES: Final = ROOT / "templates"
PROJECT: Final = "bench"
SENDER: Final = "no-reply@example.com"
AWS_KEY, AWS_SECRET, AWS_REGION = "AKIDBENCHEXAMPLE", "benchsecret", "us-east-1"
CHANNELS: Final = ("email", "sms", "push")
#: Seconds a worker may take to start, or to send its share, before the run is abandoned.
TIMEOUT: Final = 900.0


# -- Apprise, pointed at the stand-ins ----------------------------------------------------------

class StandInSES(NotifySES):  # type: ignore[no-untyped-call]
    """Apprise's SES plugin with its endpoint at the stand-ins and no throttle."""

    request_rate_per_sec = 0
    endpoint: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.notify_url = self.endpoint  # was https://email.{region}.amazonaws.com


class StandInSNS(NotifySNS):  # type: ignore[no-untyped-call]
    """Apprise's SNS plugin with its endpoint at the stand-ins and no throttle."""

    request_rate_per_sec = 0
    endpoint: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.notify_url = f"{self.endpoint}/"  # was https://sns.{region}.amazonaws.com/


class StandInFCM(NotifyFCM):  # type: ignore[no-untyped-call]
    """Apprise's FCM plugin with its endpoint at the stand-ins and no throttle (the OAuth2
    token endpoint is the key file's ``token_uri``, already the stand-ins')."""

    request_rate_per_sec = 0


def point_apprise_at(standins_url: str) -> None:
    """In this process, ``ses://``, ``sns://`` and ``fcm://`` build the stand-in subclasses."""
    StandInSES.endpoint = StandInSNS.endpoint = standins_url
    StandInFCM.notify_oauth2_url = f"{standins_url}/v1/projects/{{project}}/messages:send"
    manager = NotificationManager()  # type: ignore[no-untyped-call]
    for plugin in (StandInSES, StandInSNS, StandInFCM):
        if not manager.add(plugin, force=True):  # type: ignore[no-untyped-call]
            raise RuntimeError(f"Apprise refused {plugin.__name__}")


def recipient_urls(recipient: dict[str, Any], keyfile: str) -> dict[str, str]:
    """The Apprise URL of each channel this recipient can get, as a user would write it."""
    urls: dict[str, str] = {}
    if recipient.get("email"):
        urls["email"] = (f"ses://{SENDER}/{AWS_KEY}/{AWS_SECRET}/{AWS_REGION}/"
                         f"{quote(recipient['email'], safe='@')}")
    if recipient.get("phone"):
        urls["sms"] = (f"sns://{AWS_KEY}/{AWS_SECRET}/{AWS_REGION}/"
                       f"{quote(recipient['phone'], safe='')}")
    if recipient.get("token"):
        urls["push"] = (f"fcm://{PROJECT}/{quote(recipient['token'], safe='')}"
                        f"?keyfile={quote(keyfile, safe='')}")
    return urls


def notify_recipient(recipient: dict[str, Any], keyfile: str,
                     content: dict[str, dict[str, str]]) -> int:
    """Send one recipient its email, SMS and push; returns how many ``notify()`` calls failed."""
    sender = apprise.Apprise()
    urls = recipient_urls(recipient, keyfile)
    for channel, url in urls.items():
        sender.add(url, tag=channel)
    email, sms, push = content["email"], content["sms"], content["push"]
    calls = {
        "email": lambda: sender.notify(body=email["html"], title=email["subject"], tag="email",
                                       body_format=apprise.NotifyFormat.HTML),
        "sms": lambda: sender.notify(body=sms["text"], tag="sms",
                                     body_format=apprise.NotifyFormat.TEXT),
        "push": lambda: sender.notify(body=push["body"], title=push["title"], tag="push",
                                      body_format=apprise.NotifyFormat.TEXT),
    }
    return sum(not calls[channel]() for channel in urls)


# -- one worker process: ``python -m bench.peers.apprise_peer`` ---------------------------------

def worker_main() -> int:
    """Read a job (one JSON line), say ``ready``, wait for ``go``, send, print the outcome."""
    job = json.loads(sys.stdin.readline())
    point_apprise_at(job["standins_url"])
    _say("ready")
    if sys.stdin.readline().strip() != "go":
        return 1
    first = time.monotonic()  # CLOCK_MONOTONIC on Linux: one clock for every process
    errors = sum(notify_recipient(r, job["keyfile"], job["content"]) for r in job["recipients"])
    _say(json.dumps({"errors": errors, "first": first, "last": time.monotonic()}))
    return 0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- the harness's driver -----------------------------------------------------------------------

def render_content() -> dict[str, dict[str, str]]:
    """The ``app-install`` message, rendered once: ``{channel: {part: text}}``."""
    return TemplateRegistry(TEMPLATES).render(
        "app-install", CHANNELS, {"app_name": "Foo", "state": "installing", "category": "app",
                                  "notification_id": "app#bench", "locale": None})


def run_apprise(standins: StandIns, recipients: list[dict[str, Any]], *,
                workers: int = 2) -> PeerResult:
    """Send every recipient its email, SMS and push through Apprise in ``workers`` processes."""
    with tempfile.TemporaryDirectory(prefix="apprise-peer-") as folder:
        keyfile = standins.write_service_account(Path(folder) / "fcm.json", PROJECT)
        content = render_content()
        jobs = [{"standins_url": standins.url, "keyfile": str(keyfile), "content": content,
                 "recipients": recipients[i::workers]} for i in range(workers)]
        before = standins.stats()
        errors, seconds = _run_workers([job for job in jobs if job["recipients"]])
        after = standins.stats()
    deliveries = sum(after[channel] - before[channel] for channel in CHANNELS)
    return PeerResult("apprise", len(recipients), deliveries, seconds, errors)


def _run_workers(jobs: list[dict[str, Any]]) -> tuple[int, float]:
    """Start the workers, let them go together; (errors, first send to last).

    Workers are plain subprocesses (not ``multiprocessing``), so the caller's ``__main__``
    needs no guard and is not re-imported; stdout carries their two lines, stderr is ours.
    """
    command = [sys.executable, "-m", "bench.peers.apprise_peer"]
    processes = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE) for _ in jobs]
    try:
        for process, job in zip(processes, jobs, strict=True):
            _write(process, json.dumps(job))
        for process in processes:
            _expect(process, "ready")
        for process in processes:
            _write(process, "go")
        outcomes = [json.loads(_read(process)) for process in processes]
    finally:
        _stop(processes)
    errors = sum(int(o["errors"]) for o in outcomes)
    return errors, max(o["last"] for o in outcomes) - min(o["first"] for o in outcomes)


def _write(process: subprocess.Popen[bytes], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line.encode() + b"\n")
    process.stdin.flush()


def _read(process: subprocess.Popen[bytes]) -> str:
    """The worker's next line, or an error naming its exit code when it has none to give."""
    assert process.stdout is not None
    if not select.select([process.stdout], [], [], TIMEOUT)[0]:
        raise RuntimeError(f"Apprise worker {process.pid} said nothing in {TIMEOUT:.0f} s")
    line = process.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"Apprise worker {process.pid} exited with {process.wait()}")
    return line


def _expect(process: subprocess.Popen[bytes], word: str) -> None:
    line = _read(process)
    if line.strip() != word:
        raise RuntimeError(f"Apprise worker {process.pid}: expected {word!r}, got {line!r}")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    raise SystemExit(worker_main())
