"""The simulator's ASGI app: routes, request log, fault injection and job scheduler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import open_api, visioncraft, web_api, worker
from .config import SimConfig
from .state import Job, RequestRecord, SimState


class SimMiddleware:
    """Logs every request and injects the configured faults, deterministically per seed."""

    def __init__(self, app: ASGIApp, sim: SimState) -> None:
        self.app, self.sim = app, sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim"):
            await self.app(scope, receive, send)
            return
        sim = self.sim
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{scope['path']}?{query}" if query else scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rec = RequestRecord(
            sim.clock.now(),
            scope["method"],
            url,
            scope["path"],
            idempotency_key=headers.get("idempotency-key"),
            authorization="authorization" in headers,
        )
        scope["sim_record"] = rec
        with sim.lock:
            sim.requests.append(rec)
        fault = self._draw(scope["path"])
        rec.fault = fault
        is_web = scope["path"].startswith("/web_api/")

        async def logging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                rec.status = message["status"]
                limits = scope.get("sim_ratelimit")  # rate_headers="always": every keyed answer has them
                if limits and message["status"] != 429:
                    names = {k.lower() for k, _ in message.get("headers", [])}
                    extra = [
                        (k.lower().encode(), v.encode())
                        for k, v in limits.items()
                        if k.lower().encode() not in names
                    ]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if fault == "slow":
            await asyncio.sleep(sim.config.faults.slow_seconds)
        elif fault == "error":
            if is_web and sim.rng.random() < 0.5:
                resp: Response = JSONResponse({"code": 10010, "msg": "Internal error"})
            elif is_web or sim.rng.random() < 0.5:  # the web API: HTTP 200 + 10010 or a 503, never a 500
                resp = open_api.error(
                    503, "service_unavailable", "A downstream dependency is temporarily unavailable."
                )
            else:
                resp = open_api.error(500, "internal_error", "Unexpected server error.")
            await resp(scope, receive, logging_send)
            return
        elif fault == "rate_limit":
            resp = open_api.error(
                429,
                "rate_limited",
                headers={
                    "Retry-After": sim.told_seconds(1),
                    "X-RateLimit-Limit": "60",
                    "X-RateLimit-Remaining": "0",
                },
            )
            await resp(scope, receive, logging_send)
            return
        elif fault == "drop":
            # The request is processed (a job may be created) but the client never hears back.
            async def dropping_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    rec.status = -1
                    await send(message)
                    raise ConnectionAbortedError("simulated dropped connection")

            await self.app(scope, receive, dropping_send)
            return
        await self.app(scope, receive, logging_send)

    def _draw(self, path: str) -> str | None:
        f = self.sim.config.faults
        with self.sim.lock:
            r = self.sim.rng.random()
            acc = 0.0
            for kind in ("error", "drop", "slow", "rate_limit"):
                p = getattr(f, kind)
                if kind == "rate_limit" and path.startswith(("/web_api/", "/storage/")):
                    continue  # only the Open API documents 429
                acc += p
                if p and r < acc:
                    self.sim.faults_injected[kind] += 1
                    return kind
        return None


async def run_scheduler(sim: SimState) -> None:
    """Start due jobs and render finished ones; runs for the app's lifetime."""
    renderers = asyncio.Semaphore(2)
    pending: set[asyncio.Task[None]] = set()

    async def finish(job: Job) -> None:
        async with renderers:
            try:
                if job.planned_failure:
                    sim.complete(job, None, None, None)
                else:
                    path, info = await asyncio.to_thread(worker.render, job, sim.workdir)
                    sim.complete(job, path, info, None)
            except Exception as exc:  # a source the engine cannot read
                sim.complete(
                    job, None, None, ("processing_failed", f"The engine could not process the input: {exc}")
                )
        if job.webhook:
            await deliver_webhook(sim, job)

    while True:
        with sim.lock:
            sim.due_for_start()
            due = sim.due_for_finish()
            sim.ticks += 1
        for job in due:
            task = asyncio.create_task(finish(job))
            pending.add(task)
            task.add_done_callback(pending.discard)
        # The tick is on the simulator's clock: a scaled clock ticks faster, up to 1000 times a second.
        tick = sim.clock.wall_seconds(sim.config.tick)
        await asyncio.sleep(max(0.001, tick) if sim.clock.scaled else tick)


async def deliver_webhook(sim: SimState, job: Job) -> None:
    """POST the result to the job's webhook; two more attempts on a status >= 400."""
    data: dict[str, Any] = {"trans_id": job.id, "status": web_api.STATUS[job.status]}
    if job.result_info:
        data["filesize"] = str(job.result_info["size"])
    body = {"code": 200, "data": data}
    with sim.lock:
        sim.webhooks_in_flight += 1
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for attempt in range(3):
                status = 0
                try:
                    status = (await client.post(str(job.webhook), json=body)).status_code
                except httpx.HTTPError:
                    status = 0
                with sim.lock:
                    sim.webhook_deliveries.append(
                        {"trans_id": job.id, "url": job.webhook, "attempt": attempt + 1, "status": status}
                    )
                if 0 < status < 400:
                    return
                await asyncio.sleep(sim.clock.wall_seconds(sim.config.webhook_retry_delay))
    finally:
        with sim.lock:
            sim.webhooks_in_flight -= 1


def admin_routes(sim: SimState) -> list[Route]:
    async def ledger(request: Request) -> Response:
        with sim.lock:
            return JSONResponse([e.__dict__ for e in sim.ledger])

    async def requests_(request: Request) -> Response:
        with sim.lock:
            return JSONResponse([r.__dict__ for r in sim.requests])

    async def jobs(request: Request) -> Response:
        """Each job's times on the simulator's clock (for benches: the service's own span)."""
        with sim.lock:
            return JSONResponse([job_times(j) for j in sim.jobs.values()])

    return [Route("/_sim/ledger", ledger), Route("/_sim/requests", requests_), Route("/_sim/jobs", jobs)]


def job_times(job: Job) -> dict[str, Any]:
    """A job's record for the admin route: its status and times on the simulator's clock."""
    return {
        "id": job.id,
        "api": job.api,
        "media": job.media,
        "status": job.status,
        "created_at": job.created_at,
        "ready_at": job.ready_at,
        "started_at": job.started_at,
        "finish_at": job.finish_at,  # when its processing time was over
        "finished_at": job.finished_at,  # when it was seen done (rendered)
        "processing_time": job.processing_time,
    }


def create_app(config: SimConfig | None = None, state: SimState | None = None) -> Starlette:
    """Build the simulator's ASGI app. ``app.state.sim`` is the :class:`SimState`."""
    sim = state or SimState(config or SimConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        task = asyncio.create_task(run_scheduler(sim))
        try:
            yield {}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    routes = (
        web_api.routes
        + open_api.routes
        + visioncraft.routes
        + (admin_routes(sim) if sim.config.admin_routes else [])
    )
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = sim
    app.add_middleware(SimMiddleware, sim=sim)
    return app
