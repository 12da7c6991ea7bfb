"""Which worker process answers each of many connections opened together."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from urllib.parse import urlsplit


def pids_of_connections(
    url: str, path: str, pid_key: str, busy_worker: int, count: int = 32
) -> list[int]:
    """Open ``count`` connections to ``url`` while worker ``busy_worker`` cannot accept
    (stopped with SIGSTOP, as a worker busy with a long request is), then GET ``path``
    on each; return the worker pid (``pid_key`` of the JSON answer) per connection.
    A shared listening socket gives every such connection to the workers that are
    free at that moment, for as long as the connection lives; a pool that a client
    opens at once then loads one worker and leaves the others idle."""
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    sockets = []
    os.kill(busy_worker, signal.SIGSTOP)
    try:
        try:
            for _ in range(count):
                sockets.append(socket.create_connection(address, timeout=30))
            time.sleep(0.5)  # the free workers accept what they can meanwhile
        finally:
            os.kill(busy_worker, signal.SIGCONT)
        request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        for sock in sockets:
            sock.sendall(request.encode())
        pids = []
        for sock in sockets:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            pids.append(json.loads(body)[pid_key])
        return pids
    finally:
        for sock in sockets:
            sock.close()
