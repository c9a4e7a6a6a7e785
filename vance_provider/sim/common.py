"""Helpers shared by the simulator's two API surfaces."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .state import RequestRecord, SimState

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "mp4": "video/mp4"}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_of(request: Request) -> SimState:
    return request.app.state.sim


def record_of(request: Request) -> RequestRecord:
    return request.scope["sim_record"]


class FileResponse(Response):
    """Streams a result file; may cut it short when a 'truncate' fault is drawn.

    Half the truncations keep the full ``Content-Length`` and close the connection
    early; the other half omit the length (chunked), so only a client that checks
    the reported size can notice.
    """

    def __init__(
        self,
        path: Path,
        media_type: str,
        filename: str,
        truncate: bool = False,
        chunked_truncation: bool = False,
    ) -> None:
        super().__init__(media_type=media_type)
        self.path, self.truncate, self.chunked = path, truncate, chunked_truncation
        self.size = path.stat().st_size
        if not (truncate and chunked_truncation):
            self.headers["content-length"] = str(self.size)
        else:
            del self.headers["content-length"]
        ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
        self.headers["content-disposition"] = (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        limit = self.size // 2 if self.truncate else self.size
        sent = 0
        with open(self.path, "rb") as fh:
            while sent < limit:
                chunk = fh.read(min(1 << 20, limit - sent))
                if not chunk:
                    break
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if self.truncate and not self.chunked:
            raise ConnectionAbortedError("simulated truncated download")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def form_or_query(request: Request) -> dict[str, Any]:
    """Fields from a form body (POST) merged over the query string (GET)."""
    fields: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form(max_part_size=64 * 1024 * 1024)
        for k, v in form.multi_items():
            fields[k] = v
    return fields
