"""The HTTP judge (`http:URL`): an OpenAI-compatible chat-completions server as a pairwise judge.

    judge = HTTPJudge("http://localhost:8000/v1", cache_dir="runs/judge-cache")  # e.g. `vllm serve MODEL`
    verdicts = judge.compare(prompts, first, second)

Each pair is rendered with a `PairTemplate` (fenced texts, see preftune/judges/template.py) in both
orders, and each rendering is sent as one user message to POST {URL}/chat/completions with
max_tokens 1, temperature 0, logprobs true and top_logprobs. The answer log-probs are read from
choices[0].logprobs.content[0].top_logprobs: tokens are stripped of whitespace, and the
probabilities of the tokens that equal a label are summed (so "A" and " A" both count). A label
missing from the top logprobs gets probability 0; when neither label is there, the pair is not
judged. A server log-prob of -Infinity is probability 0, like a missing label; a NaN (or +Infinity)
one makes the pair "could not judge" ("non-finite log-probs"). Verdicts then follow
`two_order_verdicts`, as for the LLM judge.

Requests run in `concurrency` threads, at most `rate_limit` per second over all threads. A
request is retried (exponential backoff with jitter, or the server's Retry-After on 429 and 503,
capped at max_backoff) on timeouts, connection errors, HTTP 408, 429 and 5xx and a 200 reply whose
body is not JSON, and never on other 4xx. With `cache_dir`, each finished request is appended to a
JSONL file by the thread that made it, as soon as it returns (key: sha256 of URL, model, messages
and request parameters), so a run stopped by a dead server (or by Ctrl-C) resumes where it stopped.
The API key comes from PREFTUNE_JUDGE_API_KEY for any URL; OPENAI_API_KEY is used only when the URL's
host is api.openai.com. The key is never logged. Redirects are never followed: urllib would resend the
Authorization header to whatever host a redirect names and turn a POST into a GET, so a 3xx reply stops
the run with the target it named (give that URL as the judge URL instead).

Servers that ignore `logprobs` (e.g. `transformers serve`): with `mode="auto"` (the default) the first
request that is not cached finds out what the server returns. With log-probs the judge works as above;
without them it says so once and reads the verdict from generated text (`mode="text"`: max_tokens 8,
temperature 0): the reply, stripped of whitespace, quotes, asterisks and a final period, must be exactly
one of the labels, which then gets probability 1; any other reply is "could not judge" with the reply as
the reason, never a guess. A server that returns neither stops the run with one line. `extra_body`
adds fields to every request (e.g. `{"chat_template_kwargs": {"enable_thinking": false}}`); they are part
of the cache key.

The server's model is unknown here, so judged text cannot be escaped against its tokenizer's special
tokens as the LLM judge does; `reserved` breaks up the chat markers of the common templates
(`CHAT_MARKERS`: ChatML, Llama 3, Gemma, Mistral, Phi, ...) and any extra strings the caller names.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import http.client
import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from preftune.data import Completion, Prompt
from preftune.errors import UserFault
from preftune.judges.base import PairVerdicts, check_pairs
from preftune.judges.cache import VerdictCache, decode_logps, encode_logps
from preftune.judges.llm import DEFAULT_MIN_ANSWER_MASS
from preftune.judges.template import Answer, PairTemplate, two_order_verdicts

logger = logging.getLogger(__name__)

MODES = ("auto", "logprobs", "text")
"""How verdicts are read: from the answer labels' log-probs, from generated text, or whichever the server
allows (found on the first request)."""
API_KEY_VARIABLE = "PREFTUNE_JUDGE_API_KEY"
"""The judge's API key, sent to any URL."""
OPENAI_KEY_VARIABLE = "OPENAI_API_KEY"
"""Sent only to OPENAI_HOST (never to another server), when API_KEY_VARIABLE is not set."""
OPENAI_HOST = "api.openai.com"
RETRIED_STATUSES = (408, 429)
"""Client errors that are retried, besides every 5xx."""
CHAT_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
    "<|eos|>",
    "<|bos|>",
)
"""Special tokens of common chat templates, broken up inside judged text (the server's tokenizer is
unknown, so a response could otherwise end its turn early or open a fake one)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the 3xx reply reaches `_send` as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class JudgeRequestError(UserFault, RuntimeError):
    """A judge request failed for good (retries exhausted, or a status that retrying cannot fix). Its
    message names the URL, the failure and what is cached: the CLI shows it as one line."""


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RequestPolicy:
    """How the HTTP judge sends requests: timeouts, retries, rate and concurrency."""

    timeout: float = 60.0
    """Seconds to wait for one response before the request counts as failed (and is retried)."""
    max_retries: int = 5
    """Retries of one request after its first failure; then the judge raises JudgeRequestError."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one, times a random factor in [0.5, 1]."""
    max_backoff: float = 60.0
    """Upper bound of the wait before a retry, the server's Retry-After included."""
    rate_limit: float | None = None
    """At most this many requests per second over all threads; None for no limit."""
    concurrency: int = 8
    """Requests in flight at once (threads)."""

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and self.backoff >= 0 and self.max_backoff >= 0):
            raise ValueError(
                f"timeout must be > 0 and backoff, max_backoff >= 0; got {self.timeout}, {self.backoff}, "
                f"{self.max_backoff}."
            )
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}.")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0 requests per second (or None), got {self.rate_limit}.")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}.")


class _RateLimiter:
    """Spaces request starts at least 1 / rate seconds apart, over all threads."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if self.interval == 0.0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(start - now)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None when absent."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class HTTPJudge:
    """Pairwise verdicts from an OpenAI-compatible server's top log-probabilities of the answer labels."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        template: PairTemplate | None = None,
        min_answer_mass: float = DEFAULT_MIN_ANSWER_MASS,
        top_logprobs: int = 20,
        policy: RequestPolicy | None = None,
        cache_dir: str | None = None,
        reserved: Sequence[str] = (),
        mode: str = "auto",
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"http:{url}: the judge URL must start with http:// or https://.")
        if not 0.0 <= min_answer_mass <= 1.0:
            raise ValueError(f"min_answer_mass must be in [0, 1], got {min_answer_mass}. Default: 0.2.")
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {top_logprobs}. OpenAI allows up to 20.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        clash = sorted(
            set(extra_body or {}) & {"model", "messages", "logprobs", "top_logprobs", "max_tokens"}
        )
        if clash:
            raise ValueError(f"extra_body may not set {clash}: the judge sets them itself.")
        self.mode = mode
        self.extra_body = dict(extra_body or {})
        self.url = url.rstrip("/")
        self.template = template or PairTemplate()
        self.min_answer_mass = min_answer_mass
        self.top_logprobs = top_logprobs
        self.policy = policy or RequestPolicy()
        self.reserved = tuple(dict.fromkeys((*CHAT_MARKERS, *reserved)))
        self.cache = VerdictCache(cache_dir) if cache_dir else None
        self._limiter = _RateLimiter(self.policy.rate_limit)
        self._api_key = api_key_for(self.url)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        listing = self._request("GET", "/models", None)
        try:
            name = str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(
                f"GET {self.url}/models lists no model id ({json.dumps(listing)[:300]}); pass the model name "
                "with model=NAME."
            ) from error
        logger.info("HTTP judge %s: using model %s (the first one it serves).", self.url, name)
        return name

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        """One JSON request, retried by the policy; JudgeRequestError when it cannot succeed."""
        policy = self.policy
        for attempt in range(policy.max_retries + 1):
            self._limiter.wait()
            try:
                return self._send(method, path, payload)
            except _RetryableError as error:
                if attempt == policy.max_retries:
                    raise JudgeRequestError(
                        f"{method} {self.url}{path} failed {attempt + 1} times; last error: {error}"
                    ) from error
                if error.retry_after is not None:
                    delay = min(policy.max_backoff, error.retry_after)
                else:
                    delay = min(policy.max_backoff, policy.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                logger.debug("Retrying %s %s in %.2fs after: %s", method, path, delay, error)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with _OPENER.open(request, timeout=self.policy.timeout) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            if 300 <= error.code < 400:
                target = error.headers.get("Location", "(no Location header)")
                raise JudgeRequestError(
                    f"{method} {self.url}{path} was redirected (HTTP {error.code}) to {target}. The judge follows "
                    "no redirect, so that the API key never reaches another server and a POST stays a POST. "
                    "Fix: give the URL the server redirects to as the judge URL (http:URL)."
                ) from error
            excerpt = error.read().decode("utf-8", errors="replace")[:300]
            if error.code in RETRIED_STATUSES or error.code >= 500:
                wait = _retry_after(error.headers.get("Retry-After")) if error.code in (429, 503) else None
                raise _RetryableError(f"HTTP {error.code}: {excerpt}", wait) from error
            raise JudgeRequestError(
                f"{method} {self.url}{path} returned HTTP {error.code} (not retried): {excerpt}"
            ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            raise _RetryableError(f"{type(error).__name__}: {error}") from error
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:  # e.g. a proxy's HTML error page: retried like a 5xx
            raise _RetryableError(f"a body that is not JSON: {text[:300]}") from error

    def request_params(self, mode: str | None = None) -> dict[str, Any]:
        """The parameters of every judge request in `mode` (default: the judge's), part of the cache key."""
        if (mode or self.mode) == "text":
            return {"max_tokens": 8, "temperature": 0, **self.extra_body}
        return {
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
            **self.extra_body,
        }

    def compare(
        self, prompts: Sequence[Prompt], first: Sequence[Completion], second: Sequence[Completion]
    ) -> PairVerdicts:
        """(N,) verdicts: the mean over both orders of the probability that `first` wins."""
        check_pairs(prompts, first, second)
        texts = [
            t
            for p, a, b in zip(prompts, first, second, strict=True)
            for t in self.template.render_both_orders(p, a, b, self.reserved)
        ]
        answers = self.answer_logps(texts)  # 2N: forward, swapped, forward, swapped, ...
        return two_order_verdicts(answers[0::2], answers[1::2], self.min_answer_mass)

    def answer_logps(self, texts: Sequence[str]) -> list[Answer]:
        """(logp label 0, logp label 1) of each rendered text, or why it could not be judged, requesting only
        what the cache lacks."""
        probed: dict[str, list[float]] = {}
        if self.mode == "auto":
            self.mode, probed = self._find_mode(texts)
        keys, done, missing = self._lookup(texts, self.mode)
        for key, logps in probed.items():  # the probe's log-prob reply is kept, not asked for again
            done[key] = logps
            missing.pop(key, None)
        if missing:
            self._fetch(missing, done, self.request_params())
        return [self._answer(done[key]) for key in keys]

    def _find_mode(self, texts: Sequence[str]) -> tuple[str, dict[str, list[float]]]:
        """The mode the server allows, from the first of `texts` not in the cache, and that request's answer
        log-probs by cache key when it gave them. Texts all cached in one mode (a resumed run) ask nothing."""
        _, _, missing = self._lookup(texts, "logprobs")
        if not missing:
            return "logprobs", {}
        if not self._lookup(texts, "text")[2]:
            return "text", {}
        key, text = next(iter(missing.items()))
        try:
            logps = self._probe(key, text)
        except JudgeRequestError as failure:
            raise self._stopped(failure, 0, len(missing)) from failure
        return ("text", {}) if logps is None else ("logprobs", {key: logps})

    def _lookup(
        self, texts: Sequence[str], mode: str
    ) -> tuple[list[str], dict[str, list[float] | str], dict[str, str]]:
        """The cache keys of `texts` in `mode`, the results cached under them and the texts still missing."""
        params = self.request_params(mode)
        keys = [
            VerdictCache.key(self.url, self.model, [{"role": "user", "content": t}], params) for t in texts
        ]
        done: dict[str, list[float] | str] = {}
        for key in keys:
            stored = self.cache.get(key) if self.cache is not None else None
            if stored is not None:
                done[key] = (
                    self._parse_reply(stored["text"]) if "text" in stored else decode_logps(stored["logps"])
                )
        return keys, done, {key: text for key, text in zip(keys, texts, strict=True) if key not in done}

    def _probe(self, key: str, text: str) -> list[float] | None:
        """One request for `text` (not in the cache) with log-probs asked for: its answer log-probs (cached
        under `key`) if the server gives them, None if it only generates text (said once)."""
        reply = self._request(
            "POST", "/chat/completions", self._payload(text, self.request_params("logprobs"))
        )
        try:
            logps = self._read_logps(reply)
        except JudgeRequestError:
            if _logprobs_given(reply):  # log-probs it cannot read: a broken server, not one without them
                raise
        else:
            self._store(key, logps)
            return logps
        if not isinstance(_content(reply), str):
            raise JudgeRequestError(
                f"{self.url}/chat/completions returned neither choices[0].logprobs nor choices[0].message.content, so "
                f"it cannot judge. Reply excerpt: {json.dumps(reply)[:300]}. Fix: point http: at an "
                "OpenAI-compatible chat-completions server."
            )
        logger.warning(
            "HTTP judge %s (model %s) returns no log-probs: verdicts are read from its generated text, which must "
            "be exactly one of %s; any other reply is 'could not judge'.",
            self.url,
            self.model,
            " or ".join(self.template.answers),
        )
        return None

    def _fetch(
        self, missing: dict[str, str], done: dict[str, list[float] | str], params: dict[str, Any]
    ) -> None:
        """Request every text of `missing`, storing each result in `done` (and the cache) on arrival."""
        failure: JudgeRequestError | None = None
        pool = concurrent.futures.ThreadPoolExecutor(self.policy.concurrency)
        futures: dict[concurrent.futures.Future[list[float] | str], str] = {}
        try:
            for key, text in missing.items():
                futures[pool.submit(self._judge_one, key, text, params)] = key
            for future in concurrent.futures.as_completed(futures):
                done[futures[future]] = future.result()
        except JudgeRequestError as error:
            failure = error
        finally:
            # on any failure (Ctrl-C included) start no new request and let the running ones finish:
            # their workers cache what they get, so a re-run does not pay for them again
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is None:
            return
        finished = sum(f.done() and not f.cancelled() and f.exception() is None for f in futures)
        raise self._stopped(failure, finished, len(missing)) from failure

    def _stopped(self, failure: JudgeRequestError, finished: int, total: int) -> JudgeRequestError:
        """The error that ends a batch of requests: the failure, how many finished, and how to resume."""
        where = (
            f"{len(self.cache)} verdict requests are cached in {self.cache.path.parent}; re-running with "
            "the same cache_dir resumes from there"
            if self.cache is not None
            else "nothing was cached: pass cache_dir so that a re-run resumes instead of starting over"
        )
        return JudgeRequestError(
            f"The HTTP judge at {self.url} stopped: {failure}. {finished} of {total} new requests finished; {where}."
        )

    def _payload(self, text: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": text}], **params}

    def _judge_one(self, key: str, text: str, params: dict[str, Any]) -> list[float] | str:
        """[logp label 0, logp label 1] of one rendered text (-inf for a label not in the top logprobs), or in
        text mode the reply read as a label (or why it cannot be), cached under `key` at once unless a value is
        NaN or +inf."""
        reply = self._request("POST", "/chat/completions", self._payload(text, params))
        if self.mode == "text":
            content = _content(reply)
            if not isinstance(content, str):
                raise JudgeRequestError(
                    f"{self.url}/chat/completions returned no choices[0].message.content. Reply excerpt: "
                    f"{json.dumps(reply)[:300]}"
                )
            if self.cache is not None:
                self.cache.put(key, {"text": content})
            return self._parse_reply(content)
        logps = self._read_logps(reply)
        self._store(key, logps)
        return logps

    def _read_logps(self, reply: dict[str, Any]) -> list[float]:
        """[logp label 0, logp label 1] from a reply's top logprobs (-inf for a label not among them)."""
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            pairs = [(str(t["token"]).strip(), float(t["logprob"])) for t in top]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise JudgeRequestError(
                f"{self.url}/chat/completions returned no readable choices[0].logprobs.content[0].top_logprobs "
                f"({type(error).__name__}: {error}); the server must support logprobs, or use mode 'auto' or "
                f"'text'. Reply excerpt: {json.dumps(reply)[:300]}"
            ) from error
        logps: list[float] = []
        for label in self.template.answers:
            matches = [lp for token, lp in pairs if token == label]
            peak = max(matches, default=-math.inf)
            if any(math.isnan(lp) for lp in matches):  # kept: the pair is then not judged
                logps.append(math.nan)
            elif math.isinf(peak):  # no match or only -inf: probability 0; +inf: kept, not judged
                logps.append(peak)
            else:  # log of the summed probabilities, computed stably
                logps.append(peak + math.log(sum(math.exp(lp - peak) for lp in matches)))
        return logps

    def _store(self, key: str, logps: list[float]) -> None:
        stored = encode_logps(logps)
        if self.cache is not None and stored is not None:
            self.cache.put(key, {"logps": stored})

    def _parse_reply(self, content: str) -> list[float] | str:
        """A generated reply as answer log-probs (0 for the label it names, -inf for the other), or the reason
        it names no label: it must be exactly one label once whitespace, quotes, asterisks and a final
        period are stripped."""
        word = content.strip().strip("*\"'`").strip().removesuffix(".").strip()
        if word in self.template.answers:
            return [0.0 if label == word else -math.inf for label in self.template.answers]
        return f"reply {content[:40]!r} is not one of {' or '.join(self.template.answers)}"

    def _answer(self, logps: list[float] | str) -> Answer:
        if isinstance(logps, str):
            return logps
        if logps[0] == logps[1] == -math.inf:
            return f"neither {' nor '.join(self.template.answers)} in the top {self.top_logprobs} logprobs"
        return logps[0], logps[1]


def _logprobs_given(reply: dict[str, Any]) -> bool:
    """Whether a reply carries a choices[0].logprobs block at all (readable or not)."""
    try:
        return reply["choices"][0].get("logprobs") is not None
    except (KeyError, IndexError, TypeError, AttributeError):
        return False


def _content(reply: dict[str, Any]) -> Any:
    """choices[0].message.content of a chat-completions reply, or None."""
    try:
        return reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def api_key_for(url: str) -> str | None:
    """The API key to send to `url`: PREFTUNE_JUDGE_API_KEY, else OPENAI_API_KEY for api.openai.com only."""
    if os.environ.get(API_KEY_VARIABLE):
        return os.environ[API_KEY_VARIABLE]
    if urllib.parse.urlsplit(url).hostname == OPENAI_HOST and os.environ.get(OPENAI_KEY_VARIABLE):
        return os.environ[OPENAI_KEY_VARIABLE]
    return None
