"""A local OpenAI-compatible server for the HTTP judge tests: it serves a real (tiny) causal LM.

POST /v1/chat/completions renders the messages with the tokenizer's chat template (generation
prompt on), runs the model once and returns the next-token distribution's top_logprobs as OpenAI
and vLLM do (choices[0].logprobs.content[0].top_logprobs). GET /v1/models lists the model.

Failures are injected on the first attempt of a request body, chosen by its sha256 so that the same
requests fail in every run: HTTP 500, HTTP 429 with Retry-After, or a stall longer than the
client's timeout. `replies` scripts the first completions instead, in the order they arrive (one
of `SCRIPTED`): HTTP 408, a 200 reply that is not JSON, a top_logprobs entry without "logprob", all
log-probs NaN, or the answer "A" at log-prob -0.5 with "B" at -Infinity. `die_after` shuts the whole
server down after that many answered completions. Every request is counted by kind in `counts`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FAILURES = ("500", "429", "stall", None)
SCRIPTED = ("408", "html", "bad-entry", "nan", "neg-inf-b")


class TinyModelServer:
    """Serve the model at `path` on 127.0.0.1 (`port` 0 picks a free one); `url` ends in /v1."""

    def __init__(
        self,
        path: str,
        name: str = "tiny",
        port: int = 0,
        inject_failures: bool = False,
        stall_s: float = 1.0,
        retry_after: str = "0.05",
        die_after: int | None = None,
        replies: Sequence[str] = (),
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        self.model = model or AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
        self.inject_failures = inject_failures
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.die_after = die_after
        unknown = set(replies) - set(SCRIPTED)
        assert not unknown, f"unknown scripted replies {unknown}; use {SCRIPTED}"
        self.replies = collections.deque(replies)
        self.counts: collections.Counter[str] = collections.Counter()
        self.attempts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.dead = False

    def __enter__(self) -> TinyModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        with self.lock:
            if self.dead:
                return
            self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()

    @torch.no_grad()
    def top_logprobs(self, messages: list[dict[str, str]], k: int) -> list[tuple[str, float]]:
        """The k most likely next tokens after the chat-templated messages, with their log-probs."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with self.lock:
            logits = self.model(input_ids=ids).logits[0, -1]
        logps = logits.float().log_softmax(dim=-1)
        values, indices = logps.topk(min(k, logps.shape[0]))
        return [
            (self.tokenizer.decode([i]), v) for i, v in zip(indices.tolist(), values.tolist(), strict=True)
        ]

    def failure_for(self, body: bytes) -> str | None:
        if not self.inject_failures:
            return None
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            self.attempts[digest] += 1
            if self.attempts[digest] > 1:
                return None
        return FAILURES[int(digest, 16) % len(FAILURES)]

    def scripted(self) -> str | None:
        with self.lock:
            return self.replies.popleft() if self.replies else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _reply(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _scripted(self, script: str) -> None:
                if script == "408":
                    return self._reply(408, {"error": "request timeout (scripted)"})
                if script == "html":
                    body = b"<html><body>502 Bad Gateway</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                top = (
                    [("A", -0.5), ("B", -math.inf)]
                    if script == "neg-inf-b"
                    else [("A", math.nan), ("B", math.nan)]
                )
                reply = completion(server.name, top[0][0], top[0][1], top)
                if script == "bad-entry":
                    del reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["logprob"]
                self._reply(200, reply)  # json.dumps writes NaN and -Infinity, as some servers do

            def do_GET(self) -> None:
                server.counts["models"] += 1
                if self.path != "/v1/models":
                    return self._reply(404, {"error": f"no route {self.path}"})
                self._reply(200, {"object": "list", "data": [{"id": server.name, "object": "model"}]})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.counts["chat"] += 1
                request = json.loads(body)
                if self.path != "/v1/chat/completions" or request.get("model") != server.name:
                    server.counts["rejected"] += 1
                    return self._reply(404, {"error": f"model {request.get('model')!r} does not exist"})
                script = server.scripted()
                if script:
                    server.counts[script] += 1
                    return self._scripted(script)
                failure = server.failure_for(body)
                if failure:
                    server.counts[failure] += 1
                if failure == "500":
                    return self._reply(500, {"error": "internal error (injected)"})
                if failure == "429":
                    return self._reply(429, {"error": "slow down"}, {"Retry-After": server.retry_after})
                if failure == "stall":
                    time.sleep(server.stall_s)
                top = server.top_logprobs(request["messages"], int(request["top_logprobs"]))
                token, logprob = top[0]
                try:
                    self._reply(200, completion(server.name, token, logprob, top))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (stall)
                    return
                server.counts["answered"] += 1
                if server.die_after is not None and server.counts["answered"] >= server.die_after:
                    threading.Thread(target=server.stop, daemon=True).start()

        return Handler


def completion(model: str, token: str, logprob: float, top: list[tuple[str, float]]) -> dict[str, Any]:
    """An OpenAI chat.completion object with one generated token and its top log-probs."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": token},
                "logprobs": {
                    "content": [
                        {
                            "token": token,
                            "logprob": logprob,
                            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top],
                        }
                    ]
                },
                "finish_reason": "length",
            }
        ],
    }
