"""Helpers for the simulator protocol tests: polling, request builders, a tiny local HTTP server."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN, image_bytes

T = TypeVar("T")

WEB_TERMINAL = {"finish", "fatal"}
WEB_STATUSES = {"waiting", "process", "busy", "finish", "fatal", "webhook"}
OPEN_TERMINAL = {"succeeded", "failed", "canceled"}


def poll(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Call ``fetch`` until ``done(value)`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout} s; last value: {value!r}")
        time.sleep(interval)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    poll(condition, bool, timeout, interval)


# A job delay on the simulator's clock that no test outlives: the job waits (or runs) until the
# test moves the clock (``server.state.clock.advance``), so each state is seen, however slow the
# machine, and nobody waits for it in real time.
HOLD = 600.0


def scheduler_passes(server: Any, passes: int = 2) -> None:
    """Wait until the simulator's scheduler has made ``passes`` more passes over its jobs (two: one
    begun after the caller's change, whatever the clock says, has looked at every job)."""
    start = server.state.ticks
    wait_for(lambda: server.state.ticks >= start + passes)


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# --- web API v1 -----------------------------------------------------------------------
def step(
    module: str, params: dict[str, Any] | None = None, out: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One jconfig step (the inner ``config`` object)."""
    cfg: dict[str, Any] = {"module": module, "module_params": params or {}}
    if out is not None:
        cfg["out_params"] = out
    return cfg


def single(module: str, params: dict[str, Any] | None = None, out: dict[str, Any] | None = None) -> str:
    """A single-step jconfig: ``{"name": ..., "config": {module...}}``."""
    return json.dumps({"name": module, "config": step(module, params, out)})


def workflow(*steps: dict[str, Any], name: str = "workflow") -> str:
    """A workflow jconfig: ``{"name": ..., "config": [{"name": ..., "config": step}, ...]}``."""
    return json.dumps({"name": name, "config": [{"name": s["module"], "config": s} for s in steps]})


ENLARGE_2X = step("enlarge3", {"model_name": "EnlargeStandard_2x_Stable", "scale": 2})
DENOISE = step("denoise", {"model_name": "DenoiseStable", "auto_params": True})
SHARPEN = step("sharpen3", {"model_name": "SharpenGeneralStable", "autoparams": True})


def enlarge(scale: Any, model: str | None = None, out: dict[str, Any] | None = None) -> str:
    if model is None:
        model = "EnlargeStandard_2x_Stable" if scale == 2 else "EnlargeStandard_4x_Stable"
    return single(
        "enlarge3", {"model_name": model, "scale": scale, "suppress_noise": 40, "remove_blur": 60}, out
    )


class Web:
    """A thin web API v1 client over one ``httpx.Client``; every call sends the token by POST form."""

    def __init__(self, client: httpx.Client, token: str = WEB_TOKEN) -> None:
        self.client, self.token = client, token

    def post(self, path: str, **fields: Any) -> httpx.Response:
        files = fields.pop("files", None)
        data = {"api_token": self.token, **{k: v for k, v in fields.items() if v is not None}}
        return self.client.post(f"/web_api/v1/{path}", data=data, files=files)

    def upload(self, data: bytes | None = None, name: str = "cat.jpg") -> httpx.Response:
        return self.post("upload", files={"file": (name, image_bytes() if data is None else data)})

    def uid(self, data: bytes | None = None, name: str = "cat.jpg") -> str:
        body = self.upload(data, name).json()
        assert body["code"] == 200, body
        return body["data"]["uid"]

    def transform(self, uid: str, jconfig: str, webhook: str | None = None) -> httpx.Response:
        return self.post("transform", uid=uid, jconfig=jconfig, webhook=webhook)

    def start(self, jconfig: str, data: bytes | None = None, webhook: str | None = None) -> str:
        """Upload and transform; return the trans_id."""
        body = self.transform(self.uid(data), jconfig, webhook).json()
        assert body["code"] == 200, body
        return body["data"]["trans_id"]

    def progress(self, trans_id: str) -> dict[str, Any]:
        body = self.post("progress", trans_id=trans_id).json()
        assert body["code"] == 200, body
        return body["data"]

    def wait(self, trans_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return poll(lambda: self.progress(trans_id), lambda d: d["status"] in WEB_TERMINAL, timeout)

    def download(self, trans_id: str) -> httpx.Response:
        return self.post("download", trans_id=trans_id)

    def run(self, jconfig: str, data: bytes | None = None) -> tuple[str, bytes]:
        """Upload, transform, wait for finish and download; return (trans_id, result bytes)."""
        trans_id = self.start(jconfig, data)
        assert self.wait(trans_id)["status"] == "finish"
        resp = self.download(trans_id)
        assert resp.headers["content-type"].startswith("image/"), resp.text
        return trans_id, resp.content


def web_error(resp: httpx.Response, code: int) -> Any:
    """Assert the legacy error convention: HTTP 200, ``{"code": code, "msg": ...}``; return ``msg``."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert "msg" in body and "data" not in body, body
    assert isinstance(body["msg"], str | dict), body
    return body["msg"]


# --- Open API v1 ----------------------------------------------------------------------
def bearer(key: str = OPEN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def open_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the documented error shape ``{"error": {"code", "message", "type"}}``."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == code, body
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] in {"auth", "billing", "validation", "processing", "rate_limit", "server"}, body
    return err


class Open:
    """A thin Open API v1 client over one ``httpx.Client``."""

    def __init__(self, client: httpx.Client, key: str = OPEN_KEY) -> None:
        self.client, self.key = client, key

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)

    def submit(
        self,
        tool: str = "upscale",
        config: dict[str, Any] | None = None,
        data: bytes | None = None,
        field_name: str = "image",
        output_format: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        form: dict[str, str] = {"tool": tool}
        if config is not None:
            form["config"] = json.dumps(config)
        if output_format:
            form["output_format"] = output_format
        files = {field_name: ("photo.jpg", image_bytes() if data is None else data, "image/jpeg")}
        return self.client.post(
            "/api/v1/jobs", data=form, files=files, headers={**self.headers, **(headers or {})}
        )

    def submit_json(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post("/api/v1/jobs", json=body, headers={**self.headers, **(headers or {})})

    def create(self, *args: Any, **kwargs: Any) -> str:
        resp = self.submit(*args, **kwargs)
        assert resp.status_code == 202, resp.text
        return resp.json()["job_id"]

    def get(self, job_id: str) -> dict[str, Any]:
        resp = self.client.get(f"/api/v1/jobs/{job_id}", headers=self.headers)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return poll(lambda: self.get(job_id), lambda b: b["status"] in OPEN_TERMINAL, timeout)

    def wait_status(self, job_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
        return poll(lambda: self.get(job_id), lambda b: b["status"] == status, timeout)

    def result_location(self, job_id: str) -> str:
        resp = self.client.get(f"/api/v1/jobs/{job_id}/result", headers=self.headers)
        assert resp.status_code == 302, resp.text
        return resp.headers["location"]

    def download(self, job_id: str) -> bytes:
        """Follow the 302 by hand, without the Authorization header."""
        resp = httpx.get(self.result_location(job_id))
        assert resp.status_code == 200, resp.text
        return resp.content

    def create_upload(self, file_name: str = "clip.mp4", **extra: Any) -> httpx.Response:
        return self.client.post(
            "/api/v1/uploads", json={"file_name": file_name, **extra}, headers=self.headers
        )

    def upload_video(self, data: bytes, file_name: str = "clip.mp4") -> str:
        """Both phases: ``POST /uploads`` then one ``PUT`` of the raw bytes without auth; the upload_id."""
        resp = self.create_upload(file_name, file_size=len(data), content_type="video/mp4")
        assert resp.status_code == 201, resp.text
        put = httpx.put(resp.json()["put_url"], content=data, headers={"Content-Type": "video/mp4"})
        assert put.status_code == 200, put.text
        return resp.json()["upload_id"]

    def credits(self) -> dict[str, Any]:
        resp = self.client.get("/api/v1/credits", headers=self.headers)
        assert resp.status_code == 200, resp.text
        return resp.json()


# --- a tiny local HTTP server (webhook receiver, image_url source) --------------------
@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LocalServer:
    url: str
    received: list[Received] = field(default_factory=list)


@contextmanager
def local_server(
    statuses: list[int] | None = None,
    default_status: int = 200,
    body: bytes = b"ok",
    content_type: str = "text/plain",
) -> Iterator[LocalServer]:
    """Serve on 127.0.0.1: answer each request with the next of ``statuses`` (then ``default_status``)."""
    script = list(statuses or [])
    lock = threading.Lock()
    state = LocalServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            payload = self.rfile.read(length) if length else b""
            with lock:
                state.received.append(Received(self.command, self.path, dict(self.headers), payload))
                status = script.pop(0) if script else default_status
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
