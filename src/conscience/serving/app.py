"""The FastAPI app: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``, ``/``.

Streaming (``stream: true``) starts only once the answer has been reviewed and decided: the
conscience must read the whole draft first, and an unreviewed stream would release it. The
chunks then arrive at once, followed by ``data: [DONE]``.

A request is measured before it is queued (:mod:`.admission`: a character bound on the event
loop, then token counts on a worker thread), waits in a bounded queue (429 with ``Retry-After``
when full) and is withdrawn from it the moment its client disconnects — a stream included,
since no byte of it is sent before the review. A body must arrive within ``body_timeout``.
"""

import asyncio
import hmac
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ConscienceError, PromptTooLongError
from ..log import log
from ..redact import redact
from .admission import Admission, check_characters
from .config import ServeConfig
from .engine import Engine
from .guard import CrossSiteGuard, HostPolicy
from .job_queue import QueueFull
from .metrics import Metrics
from .schemas import RequestError, chat_completion, completion_id, error_body, parse_chat_request, stream_chunks

STATIC = Path(__file__).parent / "static"
ADMISSION_THREADS = 2  # requests tokenised at once, off the event loop (more would only share the CPU)


class ClientGone(Exception):
    """The client disconnected before its answer: nothing is sent, nothing more is computed."""


def _error(exc: RequestError):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status,
                        headers=exc.headers)


async def _read_limited(request, limit: int, timeout: float) -> bytes:
    """The body, at most ``limit`` bytes, all of it within ``timeout`` seconds."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body has {declared} bytes; the limit is {limit}", code="body_too_large", status=413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(f"the body exceeds the limit of {limit} bytes", code="body_too_large",
                                       status=413)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(f"the body did not arrive within {timeout:g} s", code="request_timeout", status=408,
                           headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


async def _until_disconnected(receive) -> None:
    """Returns when the client has gone (the body is read: nothing else arrives before that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(cfg: ServeConfig, backend, learner=None, metrics: Metrics | None = None):
    """The app for a backend (see :mod:`conscience.serving.backends`); ``learner`` is optional."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    metrics = metrics or Metrics()
    engine = Engine(backend, cfg, metrics, learner)
    metrics.track("conscience_queued", "Requests waiting for the model.", engine.pending)
    admission = Admission(backend, cfg)
    measuring = ThreadPoolExecutor(max_workers=ADMISSION_THREADS, thread_name_prefix="admission")
    measured = {"now": 0}  # requests being measured (only the event loop changes it)
    if learner is not None:
        learner.attach(engine, metrics)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()
            measuring.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="conscience", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.cfg, app.state.learner = engine, metrics, cfg, learner
    started = time.time()
    # request defaults from the conscience config (each request passes its own sampling to the step)
    defaults = backend.conscience.sampling
    default_tokens, default_temperature = defaults.max_new_tokens, defaults.temperature

    @app.exception_handler(RequestError)
    async def on_request_error(request, exc: RequestError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request, exc: RequestValidationError):
        return JSONResponse(error_body("malformed request"), status_code=400)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    def internal_error(exc: Exception):
        """A bug or a failure of the model: one redacted line in the log, a 500 in OpenAI's shape."""
        text = redact(str(exc)).splitlines()[0][:300] if str(exc).strip() else ""
        log(f"internal error: {exc.__class__.__name__}: {text}")
        metrics.inc("conscience_requests_total", outcome="internal_error")
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.exception_handler(Exception)
    async def on_unexpected(request, exc: Exception):
        return internal_error(exc)

    def key_ok(request: Request) -> bool:
        if cfg.api_key is None:
            return True
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), cfg.api_key.encode())

    def check_key(request: Request) -> None:
        if not key_ok(request):
            raise RequestError("invalid or missing API key (send 'Authorization: Bearer KEY')",
                               code="invalid_api_key", status=401)

    def check_model(name: str | None) -> None:
        # no `model` is accepted (the one model); a name this server does not serve is refused
        if name is not None and name not in (backend.name, *cfg.model_aliases):
            raise RequestError(f"the model {name[:100]!r} does not exist here; this server serves "
                               f"{list(dict.fromkeys((backend.name, *cfg.model_aliases)))}", "model",
                               "model_not_found", status=404)

    @app.get("/health")
    async def health(request: Request):
        alive = engine.alive()
        if not key_ok(request):  # without the key: only whether it works (no paths, no settings)
            return JSONResponse({"status": "ok" if alive else "not ok"}, status_code=200 if alive else 503)
        body = {"status": "ok" if alive else "not ok", "model": backend.name, "backend": backend.kind,
                "mode": cfg.action,  # the wire key stays "mode" (clients read it); it holds the serve action
                "conscience": cfg.review, "on_error": cfg.on_error,
                "on_unresolved": cfg.on_unresolved, "queued": engine.pending(),
                "uptime_s": round(time.time() - started, 1)}
        if learner is not None:
            body["learning"] = learner.status()
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prometheus(request: Request):
        check_key(request)  # the counters describe the traffic: behind the key like the API
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        names = dict.fromkeys((backend.name, *cfg.model_aliases))
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(started),
                                            "owned_by": "conscience"} for name in names]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request)
        start = time.perf_counter()
        metrics.gauge_in_flight(1)
        try:
            return await _chat(request, start)
        except ClientGone:  # not an error of ours: counted apart, nothing to send
            metrics.inc("conscience_requests_total", outcome="abandoned")
            return Response(status_code=499)
        except RequestError as exc:
            metrics.inc("conscience_requests_total", outcome="error" if exc.status >= 500 else "rejected")
            raise
        except Exception as exc:  # answered here: Starlette's last-resort handler would re-raise and log a traceback
            return internal_error(exc)
        finally:
            metrics.gauge_in_flight(-1)

    def queue_full() -> RequestError:
        # the wait ahead: the queue, answered `parallel` at a time, at the mean latency seen so far
        ahead = math.ceil(engine.pending() / engine.parallel) * (metrics.mean_latency() or 1.0)
        return RequestError(f"the server is busy: {engine.pending()} requests are waiting (the bound is "
                            f"{cfg.max_queue}); retry later", code="queue_full", status=429,
                            headers={"Retry-After": str(min(max(math.ceil(ahead), 1), 60))})

    async def answer_unless_gone(request, future):
        """The outcome of ``future``, or :class:`ClientGone` as soon as the client disconnects (a
        request still queued is then withdrawn and never runs)."""
        answer = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_until_disconnected(request.receive))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not answer.done():
            engine.abandon(future)
            answer.cancel()
            raise ClientGone
        return answer.result()

    async def _chat(request, start: float):
        raw = await _read_limited(request, cfg.max_body_bytes, cfg.body_timeout)
        req = parse_chat_request(raw, cfg.max_tokens, cfg.max_logprobs)
        check_model(req.model)
        if req.logprobs and cfg.review and cfg.action != "monitor":
            raise RequestError("logprobs describe the draft, which the revise and block actions may replace: they "
                               "are served with --action monitor or with the conscience off (--no-conscience)",
                               "logprobs")
        check_characters(req.messages, cfg.max_prompt_tokens, backend.max_token_chars)  # before tokenising
        max_tokens = req.max_tokens or min(cfg.max_tokens, default_tokens)
        # every stage's length, checked before the draft (so no batch fails and no review is forced to); the
        # requests being measured count against the queue's bound, so a flood is refused before it is tokenised
        if engine.pending() + measured["now"] >= cfg.max_queue:
            raise queue_full()
        measured["now"] += 1
        try:
            await asyncio.get_running_loop().run_in_executor(measuring, admission.check, req.messages, max_tokens)
        finally:
            measured["now"] -= 1
        temperature = default_temperature if req.temperature is None else req.temperature
        try:
            future = engine.submit(req.messages, max_tokens, temperature, req.top_logprobs if req.logprobs else None,
                                   req.seed, req.stop, req.top_p)
        except QueueFull:
            raise queue_full() from None
        try:
            outcome = await answer_unless_gone(request, future)
        except PromptTooLongError as exc:
            raise RequestError(str(exc), "messages", "context_length_exceeded") from None
        except ConscienceError as exc:
            upstream = exc.__class__.__name__ == "UpstreamError"
            # `public`: an upstream's failure without its address (clients never learn where it lives)
            text = redact(getattr(exc, "public", None) or str(exc)).splitlines()
            raise RequestError(text[0] if text else "the request failed",
                               code="upstream_error" if upstream else None, status=502 if upstream else 400,
                               kind="server_error" if upstream else "invalid_request_error") from None
        _count(outcome)
        metrics.observe_latency(time.perf_counter() - start)
        cid, model = completion_id(), backend.name
        usage = {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                 "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}
        if not req.stream:
            return chat_completion(cid, model, outcome.content, outcome.finish_reason, usage, outcome.conscience,
                                   outcome.logprobs)
        chunks = stream_chunks(cid, model, outcome.content, outcome.finish_reason, usage, outcome.conscience,
                               req.include_usage)

        async def events():
            for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _count(outcome) -> None:
        metrics.inc("conscience_requests_total", outcome=outcome.status)
        if outcome.conscience and outcome.conscience.get("flagged"):
            metrics.inc("conscience_flagged_total")
        if outcome.status == "revised":
            metrics.inc("conscience_revised_total")
        if outcome.status == "blocked":
            metrics.inc("conscience_blocked_total")
        if outcome.status == "unresolved":
            metrics.inc("conscience_unresolved_total")

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def refused(path: str) -> None:
        if path == "/v1/chat/completions":
            metrics.inc("conscience_requests_total", outcome="rejected")

    app.add_middleware(CrossSiteGuard, policy=HostPolicy(cfg.host, cfg.allowed_hosts, cfg.cors_origins),
                       on_refused=refused)
    return app
