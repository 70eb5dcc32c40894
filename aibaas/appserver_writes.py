"""One send per small response: uvicorn writes a response's head (status line and headers) and
its body in two writes, which are two send() calls and two TCP segments. On the loopback and
local links an app server sits behind, a send costs tens of microseconds (the receiving side's
stack runs inside it), so the second one is a measurable part of a request's cost.

`HeadWithBody` stands for the connection's transport in one request/response cycle
(BoundedHttpToolsProtocol gives each cycle its own): the cycle's first write, which is its
response head, is held and goes out joined to the next write, its first body part. A head
whose body does not follow in the same turn of the event loop (a 100 Continue, a stream that
starts empty) goes out alone at the next turn, and a close sends what is held first: nothing is
reordered, delayed past one turn or lost.
"""

import asyncio


class HeadWithBody:
    """The transport as one uvicorn RequestResponseCycle uses it (write, close, is_closing;
    anything else is the transport's own)."""

    __slots__ = ("_held", "_loop", "_turn", "_written", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._turn: asyncio.Handle | None = None
        self._written = False  # the first write went (held or not)

    def write(self, data: bytes) -> None:
        if not self._written:
            self._written = True
            self._held = data
            self._turn = self._loop.call_soon(self.release)
            return
        held = self._held
        if held is not None:
            self._held = None
            self._turn.cancel()
            data = held + data
        self.transport.write(data)

    def release(self) -> None:
        """Send what is held, if anything (the next turn, or before a close)."""
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        if self._turn is not None:
            self._turn.cancel()
        self.release()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)
