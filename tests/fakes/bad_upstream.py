"""An upstream that does not speak HTTP properly: a raw TCP server on loopback.

Each connection reads the request head and then misbehaves as told: ``close`` hangs up
without a word, ``reset`` aborts the connection, ``garbage`` answers bytes that are not
HTTP, ``stall`` says nothing until the client gives up.
"""

from __future__ import annotations

import socket
import struct
import threading
import time


class BadUpstream:
    def __init__(self, behaviour: str = "close") -> None:
        self.behaviour = behaviour
        self.connections = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._misbehave, args=(conn,), daemon=True).start()

    def _misbehave(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)
                if self.behaviour == "garbage":
                    conn.sendall(b"SPAM SPAM SPAM\r\n\r\nnot http at all")
                elif self.behaviour == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif self.behaviour == "stall":
                    time.sleep(10)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._server.close()
