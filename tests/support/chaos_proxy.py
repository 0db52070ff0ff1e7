"""A TCP fault proxy for chaos tests (a small toxiproxy): forwards 127.0.0.1:<port> to an upstream, or injects
transport faults into new connections, switchable while it runs.

Modes (`proxy.mode = ...`), applied to connections accepted from then on:

    pass       forward bytes both ways
    reset      accept, then close with a TCP reset (SO_LINGER 0) before any byte is answered
    blackhole  accept and read, never answer (the client's timeout must end it)

`proxy.connections` counts accepted connections per mode, so a test can tell whether a client stopped calling
(for example because a circuit breaker opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter
from typing import Literal

Mode = Literal["pass", "reset", "blackhole"]


class ChaosProxy:
    """`ChaosProxy(upstream_port).start()`: listens on `self.port` (free, or the one given) in a daemon thread."""

    def __init__(self, upstream_port: int, port: int = 0, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.connections: Counter[str] = Counter()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(512)
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"chaos-proxy-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChaosProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._handle, sock=self._sock))
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        self.connections[mode] += 1
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if mode == "blackhole":
            with contextlib.suppress(OSError, ConnectionError):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
