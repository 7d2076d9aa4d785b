"""A test double for an OpenAI-compatible upstream, used by the tests and the load benchmark.

``conscience serve --upstream`` is exercised against a real HTTP server on 127.0.0.1, so the
connections, threads and timeouts are the ones a deployment sees, while the answers and their
timing are under the caller's control: it drafts a fixed answer and reviews through log-probs
(the first of ``review_top`` is the word it "chose"), and chosen reviews hang. Standard library
only; not used by the server itself.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: the benchmark's review table: "Yes" the more likely answer word, "No" in view, so a real verdict
REVIEW_TOP: tuple[tuple[str, float], ...] = (("Yes", -0.2), ("No", -1.8), ("yes", -4.0))


class _Server(ThreadingHTTPServer):
    # a real server's backlog (the default 5 drops concurrent connects, retried 1 s later);
    # daemon threads, so hung answers never block exit
    request_queue_size, daemon_threads = 1024, True


class FakeUpstream:
    """An OpenAI-compatible server on 127.0.0.1 (``start()`` gives its ``/v1`` URL).

    A call is a review when it asks for log-probs of one token; every call takes ``latency`` s,
    except a review that hangs, which takes ``hang_seconds``: every ``hang_every``-th review
    (0: none) and any review whose messages contain ``hang_marker``. ``peak_in_flight`` is the
    most calls it held at once, so a caller can check its own concurrency bound; ``calls`` counts
    every chat call (drafts and reviews)."""

    def __init__(self, latency: float = 0.0, *, hang_every: int = 0, hang_seconds: float = 0.0,
                 hang_marker: str | None = None, draft: str = "Here is a calm, careful answer.",
                 draft_tokens: int = 7, review_top: tuple[tuple[str, float], ...] = REVIEW_TOP):
        self.latency, self.hang_every, self.hang_seconds, self.hang_marker = latency, hang_every, hang_seconds, hang_marker
        self.draft, self.draft_tokens, self.review_top = draft, draft_tokens, review_top
        self.calls = self.reviews = self.in_flight = self.peak_in_flight = 0
        self.url: str | None = None
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def start(self) -> str:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real upstream (vLLM) serves

            def log_message(self, *args) -> None:  # quiet: callers report for themselves
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the caller gave up on a hung answer: fine
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self._send({"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                self._send(upstream.answer(request))

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self.url

    def answer(self, request: dict) -> dict:
        """The chat completion for ``request``, after its delay."""
        review = bool(request.get("logprobs")) and request.get("max_tokens") == 1
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            hang = False
            if review:
                self.reviews += 1
                hang = (self.hang_every > 0 and self.reviews % self.hang_every == 0) or (
                    self.hang_marker is not None and self.hang_marker in json.dumps(request.get("messages")))
        try:
            time.sleep(self.hang_seconds if hang else self.latency)
        finally:
            with self._lock:
                self.in_flight -= 1
        choice: dict = {"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": self.review_top[0][0] if review else self.draft}}
        if review:
            top = [{"token": token, "logprob": logprob} for token, logprob in self.review_top]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        completion = 1 if review else self.draft_tokens
        return {"id": "fake", "object": "chat.completion", "model": "fake", "choices": [choice],
                "usage": {"prompt_tokens": 8, "completion_tokens": completion, "total_tokens": 8 + completion}}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
