"""ASGI middleware: 413 for request bodies over a limit, declared or streamed."""
from __future__ import annotations

from fastapi.responses import JSONResponse


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._drain(receive)
            return await too_large(scope, receive, send)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._drain(receive)
                await too_large(scope, receive, send)

    async def _drain(self, receive, cap: int = 64 << 20) -> None:
        """Read (and drop) the rest of a refused body, up to ``cap`` bytes, so the client sees the 413
        instead of a connection reset mid-upload; beyond the cap the server just closes."""
        seen = 0
        while seen <= cap:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return
