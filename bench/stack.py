"""``python -m bench.stack``: the production stack on this machine, against stand-ins.

Starts ``moto_server`` (SQS, SES, SNS over HTTP) and a local FCM-compatible server, creates
the SQS queue with its redrive policy and DLQ, verifies the SES sender, writes an FCM
service-account file, then runs ``dispatcher gateway`` and ``--workers`` ``dispatcher worker``
processes against PostgreSQL (``DISPATCHER_DATABASE_URL``, default the local server) and
Redis (``DISPATCHER_REDIS_URL``, default the local server). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.fcm_server import FcmServer

SENDER = "no-reply@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (folder / "moto_server.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def prepare_aws(env: dict[str, str]) -> str:
    """Queue + DLQ with a redrive policy, and a verified sender; returns the queue URL."""
    os.environ.update(env)
    import boto3

    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName="dispatcher-chunks-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName="dispatcher-chunks", Attributes={
        "VisibilityTimeout": "30",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})})["QueueUrl"]
    boto3.client("sesv2").create_email_identity(EmailIdentity=SENDER)
    return str(queue)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    folder = Path(tempfile.mkdtemp(prefix="dispatcher-stack-"))
    moto, moto_url = start_moto(folder)
    fcm = FcmServer(keep_messages=False).start()
    aws = {"AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "local",
           "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**os.environ, **aws,
           "DISPATCHER_DATABASE_URL": os.environ.get(
               "DISPATCHER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
           "DISPATCHER_REDIS_URL": os.environ.get("DISPATCHER_REDIS_URL", "redis://127.0.0.1:6379/0"),
           "DISPATCHER_QUEUE_URL": prepare_aws(aws),
           "DISPATCHER_EMAIL_PROVIDER": "ses", "DISPATCHER_EMAIL_FROM": SENDER,
           "DISPATCHER_SMS_PROVIDER": "sns", "DISPATCHER_PUSH_PROVIDER": "fcm",
           "DISPATCHER_FCM_ENDPOINT": fcm.url,
           "GOOGLE_APPLICATION_CREDENTIALS": str(fcm.write_service_account(folder / "fcm.json")),
           "DISPATCHER_API_KEYS": os.environ.get("DISPATCHER_API_KEYS", "app:local-key"),
           "DISPATCHER_USER_TOKEN_SECRET": os.environ.get(
               "DISPATCHER_USER_TOKEN_SECRET", "local-stack-user-token-secret-32-bytes!"),
           "DISPATCHER_PUBLIC_URL": f"http://127.0.0.1:{args.port}"}
    dispatcher = [sys.executable, "-m", "dispatcher"]
    procs = [subprocess.Popen(dispatcher + ["gateway", "--port", str(args.port)], env=env)]
    procs += [subprocess.Popen(dispatcher + ["worker"], env=env) for _ in range(args.workers)]
    print(f"gateway http://127.0.0.1:{args.port}  API key {env['DISPATCHER_API_KEYS']}\n"
          f"moto_server {moto_url}  FCM {fcm.url}  files in {folder}\nCtrl-C stops it all.",
          flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        fcm.stop()
        moto.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
