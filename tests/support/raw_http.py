"""HTTP over a plain socket, for tests that send what no HTTP client would (a head that never
ends, a 64 MiB header) and read what the server answers before it closes."""

from __future__ import annotations

import socket


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer ends the read too)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The one answer the server sends before it closes: status, headers (lower-case names), body."""
    head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, data: bytes, *, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` to 127.0.0.1:``port`` on a new connection; the answer (``read_answer``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)
