"""Helpers shared by the simulator's two API surfaces."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .state import RequestRecord, SimState

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "mp4": "video/mp4"}


def iso(ts: float | None, *, ms: bool = False) -> str | None:
    if ts is None:
        return None
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    if ms:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def told_iso(sim: SimState, ts: float | None) -> str | None:
    """An instant of the simulator's clock as an answer tells it: on the wall clock, ISO 8601, with
    milliseconds when the clock is time-scaled (a 40 s job at a scale of 60 lasts 0.67 s)."""
    if ts is None:
        return None
    return iso(sim.clock.to_wall(ts), ms=sim.clock.scaled)


def state_of(request: Request) -> SimState:
    return request.app.state.sim


def record_of(request: Request) -> RequestRecord:
    return request.scope["sim_record"]


class FileResponse(Response):
    """Streams a result file; may cut it short when a 'truncate' fault is drawn.

    Half the truncations keep the full ``Content-Length`` and close the connection
    early; the other half omit the length (chunked), so only a client that checks
    the reported size can notice. ``drip`` sends one byte every ``drip`` seconds;
    ``pad_to`` goes on past the file with zeros up to that many bytes (announced in
    ``Content-Length`` when ``announce``, else chunked). Both stop when the client goes.
    """

    def __init__(
        self,
        path: Path,
        media_type: str,
        filename: str,
        truncate: bool = False,
        chunked_truncation: bool = False,
        drip: float = 0.0,
        pad_to: int | None = None,
        announce: bool = True,
    ) -> None:
        super().__init__(media_type=media_type)
        self.path, self.truncate, self.chunked = path, truncate, chunked_truncation
        self.drip, self.pad_to = drip, pad_to
        self.size = path.stat().st_size
        if pad_to is not None:
            if announce:
                self.headers["content-length"] = str(max(pad_to, self.size))
            else:
                del self.headers["content-length"]
        elif not (truncate and chunked_truncation):
            self.headers["content-length"] = str(self.size)
        else:
            del self.headers["content-length"]
        ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
        self.headers["content-disposition"] = (
            f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.drip or self.pad_to is not None:
            await self._hostile(receive, send)
            return
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

    async def _hostile(self, receive: Receive, send: Send) -> None:
        """A slow drip or an endless file, until it is done or the client goes away."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            data = self.path.read_bytes()
            if self.drip:
                for i in range(len(data)):
                    await send({"type": "http.response.body", "body": data[i : i + 1], "more_body": True})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), self.drip)
                    if gone.is_set():
                        return
            else:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                left, pad = max(0, (self.pad_to or 0) - len(data)), bytes(1 << 20)
                while left > 0 and not gone.is_set():
                    chunk = pad[: min(left, len(pad))]
                    left -= len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if gone.is_set():
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def result_response(sim: SimState, path: Path, media_type: str, filename: str) -> FileResponse:
    """A result download, with the faults drawn for it: truncation, slow drip, oversize, and the
    ``result_content_type`` label whatever the file is."""
    faults = sim.config.faults
    truncate = sim.draw_fault("truncate", faults.truncate)
    chunked = truncate and sim.rng.random() < 0.5
    drip = faults.drip_interval if sim.draw_fault("drip", faults.drip) else 0.0
    pad_to = faults.oversize_bytes if sim.draw_fault("oversize", faults.oversize) else None
    return FileResponse(
        path,
        sim.config.result_content_type or media_type,
        filename,
        truncate=truncate,
        chunked_truncation=chunked,
        drip=drip,
        pad_to=pad_to,
        announce=faults.oversize_announced,
    )


GARBLE_KINDS = ("html", "truncated", "list")


def garble(sim: SimState, endpoint: str, response: Response) -> Response:
    """Maybe replace a JSON answer of HTTP 2xx with an HTML page, truncated JSON or a JSON list,
    served with HTTP 200 (the 'garble' fault), as a misbehaving proxy or a half-deployed service
    would answer."""
    faults = sim.config.faults
    if not 200 <= response.status_code < 300 or not faults.garble:
        return response
    if faults.garble_endpoints and endpoint not in faults.garble_endpoints:
        return response
    if not sim.draw_fault("garble", faults.garble):
        return response
    kind = faults.garble_kind or GARBLE_KINDS[sim.rng.randrange(len(GARBLE_KINDS))]
    body = bytes(response.body)
    headers = {
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
    }
    if kind == "html":
        page = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
        return Response(page, status_code=200, headers=headers, media_type="text/html")
    if kind == "truncated":
        return Response(
            body[: max(1, len(body) // 2)], status_code=200, headers=headers, media_type="application/json"
        )
    return Response(b"[" + body + b"]", status_code=200, headers=headers, media_type="application/json")


def is_json_error(response: Response, ok_code: int = 200) -> bool:
    """A web API answer whose body carries an error ``code`` (its HTTP status is 200 all the same)."""
    try:
        body = json.loads(bytes(response.body))
    except (ValueError, AttributeError):
        return False
    return isinstance(body, dict) and body.get("code", ok_code) != ok_code


async def form_or_query(request: Request) -> dict[str, Any]:
    """Fields from a form body (POST) merged over the query string (GET)."""
    fields: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form(max_part_size=64 * 1024 * 1024)
        for k, v in form.multi_items():
            fields[k] = v
    return fields
