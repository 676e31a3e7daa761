"""The SES-event burst of ``python -m bench events``, as a process of its own.

``python -m bench.event_burst URL BODIES CONCURRENCY``: posts every SNS message in the file
``BODIES`` (one JSON document per line) to ``URL``/v1/providers/ses/events over
``CONCURRENCY`` keep-alive connections, then prints one JSON line: seconds, answers by
status, when each answer came (wall-clock seconds), and this process's CPU seconds.

Its own process, so the burst does not share the bench's interpreter (and GIL) with the
client that times the bulk; and a plain HTTP/1.1 writer over asyncio streams, not httpx,
since SNS itself costs the machine nothing while an httpx client spends about 3 ms of CPU per
event here, which on 2 cores would come out of the dispatcher's share and be counted as the
events' cost. Each request is built once, before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

PATH = "/v1/providers/ses/events"


def _request(host: str, body: bytes) -> bytes:
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: text/plain; charset=UTF-8\r\n"
            "x-amz-sns-message-type: Notification\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _lane(host: str, port: int, queue: list[bytes], statuses: Counter[int],
                answered: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue:
            writer.write(queue.pop())
            status_line = await reader.readline()
            status = int(status_line.split(b" ", 2)[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses[status] += 1
            answered.append(time.time())
    finally:
        writer.close()


async def burst(url: str, bodies: list[bytes], concurrency: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue = [_request(f"{host}:{port}", b) for b in reversed(bodies)]
    statuses: Counter[int] = Counter()
    answered: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(_lane(host, port, queue, statuses, answered) for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - started, "statuses": {str(k): v for k, v in statuses.items()},
            "answered_at": [round(t, 3) for t in answered]}


def main() -> None:
    url, path, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(path, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    cpu = time.process_time()
    result = asyncio.run(burst(url, bodies, concurrency))
    result["cpu_seconds"] = time.process_time() - cpu
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
