"""A loopback OpenAI-compatible server for tests: ``POST /v1/chat/completions`` and ``/v1/completions``.

Each request takes the next :class:`Reply` from a queue (``server.push(...)``), or the
default reply when the queue is empty. Kinds:

* ``good``: a chat completion whose content is ``text`` (or ``answer(request_json)``), with
  logprobs when the request asks for them;
* ``garbage``: HTTP 200 whose body is not JSON;
* ``429``: rate limited, with ``Retry-After: <retry_after>`` when given;
* ``500``: internal server error;
* ``stall``: sleeps ``stall_s`` (bounded) before answering, to outlast a client timeout;
* ``drop``: closes the connection without sending anything;
* ``refuse``: a completion with ``finish_reason: content_filter``;
* ``html``: HTTP 200 with an HTML page (``text/html``), as from a proxy's error page;
* ``schema_violation``: (chat) a JSON answer that breaks any schema asked for (``{"answer": 7}``);
* ``reject_schema``: (chat) HTTP 400 when the request carries a ``response_format``, else ``good``.

``/v1/completions`` (teacher-forced reading: ``echo`` with ``logprobs``) answers ``good`` with one
token per character of the prompt, each with log-probability ``-0.1`` and the alternatives
``{char: -0.1, "1": -1.5, "0": -2.5}`` (ranked), then one generated token ``"!"``; kinds
``no_logprobs`` (no ``logprobs`` object) and ``wrong_tokens`` (the tokens of another text) test the
client's checks, and the transport kinds above apply too.

Every request is recorded (headers, body, time) and the server tracks the peak number of
requests in flight. It binds 127.0.0.1 on a free port, serves from a daemon thread and
stops when the ``with`` block exits.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_STALL_S = 5.0  # a stalled handler never outlives the test by more than this


@dataclass
class Reply:
    kind: str = "good"
    text: str | None = None
    retry_after: str | None = None
    stall_s: float = 2.0
    delay_s: float = 0.0
    """for ``good``: wait this long before answering (to make requests overlap)."""


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    """lower-cased header names."""
    body: dict | None
    t_start: float
    reply: str


def _as_reply(r: Reply | str) -> Reply:
    return r if isinstance(r, Reply) else Reply(kind=r)


class FakeOpenAIServer:
    def __init__(self, default: Reply | str = "good", answer: str | Callable[[dict], str] = "hello world"):
        self.default = _as_reply(default)
        self.answer = answer
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------
    def push(self, *replies: Reply | str) -> None:
        with self._lock:
            self._queue.extend(_as_reply(r) for r in replies)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- used by the handler ------------------------------------------------------------
    def _next(self) -> Reply:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @staticmethod
    def legacy_body(req: dict, kind: str) -> dict:
        return _legacy_body(req, kind)

    def completion_body(self, req: dict, reply: Reply, finish_reason: str = "stop") -> dict:
        text = reply.text if reply.text is not None else (
            self.answer(req) if callable(self.answer) else self.answer)
        choice: dict = {"index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": finish_reason, "logprobs": None}
        if finish_reason == "content_filter":
            choice["message"]["content"] = None
        elif req.get("logprobs"):
            n = int(req.get("top_logprobs") or 0)
            tokens = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
            choice["logprobs"] = {"content": [
                {"token": t, "logprob": -0.25, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": t if k == 0 else f"alt{k}", "logprob": -0.25 - k,
                                   "bytes": None} for k in range(n)]}
                for t in tokens]}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model", "fake"), "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _legacy_logprobs(text: str) -> dict:
    chars = list(text)
    return {"tokens": chars, "text_offset": list(range(len(chars))), "token_logprobs": [None] + [-0.1] * (len(chars) - 1),
            "top_logprobs": [None] + [{c: -0.1, "1": -1.5, "0": -2.5} for c in chars[1:]]}


def _legacy_body(req: dict, kind: str) -> dict:
    prompt = req.get("prompt", "")
    text = (prompt if req.get("echo") else "") + "!"
    choice: dict = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
    if kind != "no_logprobs" and req.get("logprobs") is not None:
        shown = prompt if kind == "good" else prompt[:-3] + "XYZ"
        lp = _legacy_logprobs(shown + "!")
        lp["top_logprobs"][-1] = {"!": -0.1}
        choice["logprobs"] = lp
    return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
            "model": req.get("model", "fake"), "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1}}


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to do

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                req = json.loads(raw)
            except ValueError:
                req = None
            reply = server._next()
            with server._lock:
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(Recorded(self.path, headers, req, time.monotonic(), reply.kind))
            server._enter()
            try:
                self._answer(req or {}, reply)
            finally:
                server._leave()

        def _answer(self, req: dict, reply: Reply) -> None:
            path = self.path.rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            kind = reply.kind
            if kind == "reject_schema":
                if "response_format" in req:
                    self._send(400, b'{"error": {"message": "response_format is not supported"}}')
                    return
                kind = "good"
            if path == "/v1/completions" and kind in ("good", "no_logprobs", "wrong_tokens"):
                self._send(200, json.dumps(server.legacy_body(req, kind)).encode())
                return
            if kind == "schema_violation":
                self._send(200, json.dumps(server.completion_body(req, Reply(text='{"answer": 7}'))).encode())
            elif kind == "html":
                self._send(200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
            elif kind == "good":
                time.sleep(reply.delay_s)
                self._send(200, json.dumps(server.completion_body(req, reply)).encode())
            elif kind == "refuse":
                self._send(200, json.dumps(server.completion_body(req, reply, "content_filter")).encode())
            elif kind == "garbage":
                self._send(200, b"<html>%%% not json at all {{", ctype="application/json")
            elif kind == "429":
                headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
                self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                           headers=headers)
            elif kind == "500":
                self._send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
            elif kind == "stall":
                time.sleep(min(reply.stall_s, MAX_STALL_S))
                self._send(200, json.dumps(server.completion_body(req, reply)).encode())
            elif kind == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            else:
                raise ValueError(f"unknown fake reply kind {kind!r}")

    return Handler
