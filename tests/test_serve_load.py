"""``edgekit serve`` under load and faults: a bounded queue, client disconnects, SIGTERM, Ctrl-C.

Each test starts its own server process (SmolLM2-135M real weights); everything is bounded by
client timeouts and deadlines, never by sleeps.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from serve_process import ServerProcess

pytestmark = pytest.mark.slow
TIMEOUT = 60
SLOW_TIMEOUT = 300  # requests that wait in the queue behind others, on a loaded 2-core CI machine
# SmolLM2's <|endoftext|> and <|im_end|>: banned, so a request runs to max_tokens.
NO_EOS = {"0": -100, "2": -100}


def _body(model_id: str, max_tokens: int, **kw) -> dict:
    return {"model": model_id, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": max_tokens, "temperature": 0, "logit_bias": NO_EOS, **kw}


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_metric(http: httpx.Client, name: str, value: float, deadline_s: float = TIMEOUT) -> None:
    end = time.monotonic() + deadline_s
    while _metric(http, name) != value:
        assert time.monotonic() < end, f"{name} never became {value}"
        time.sleep(0.05)  # polling the readiness signal, not waiting for a guess


@pytest.fixture
def small_server(smollm2_gguf, tmp_path):
    srv = ServerProcess(smollm2_gguf, "--slots", "2", "--queue", "2", "--ctx", "1024", "--threads", "2",
                        home=tmp_path).wait_ready()
    yield srv
    srv.kill()


def test_queue_full_gives_exactly_four_fast_503s(small_server):
    with httpx.Client(base_url=small_server.url, timeout=TIMEOUT) as http:
        model_id = http.get("/v1/models").json()["data"][0]["id"]
    barrier = threading.Barrier(8)
    results: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=small_server.url, timeout=SLOW_TIMEOUT) as c:
            barrier.wait(TIMEOUT)
            results.append(c.post("/v1/chat/completions", json=_body(model_id, 32)))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SLOW_TIMEOUT * 2)
    assert len(results) == 8
    ok = [r for r in results if r.status_code == 200]
    busy = [r for r in results if r.status_code == 503]
    assert len(ok) == 4 and len(busy) == 4, [r.status_code for r in results]
    assert all(r.json()["usage"]["completion_tokens"] == 32 for r in ok)
    for r in busy:
        assert r.headers["Retry-After"] and r.json()["error"]["code"] == "server_busy"
    with httpx.Client(base_url=small_server.url, timeout=TIMEOUT) as http:
        assert _metric(http, "edgekit_rejected_total") == 4
        assert http.get("/health").status_code == 200


def test_disconnect_cancels_and_frees_the_slot(small_server):
    with httpx.Client(base_url=small_server.url, timeout=TIMEOUT) as http:
        model_id = http.get("/v1/models").json()["data"][0]["id"]
        with http.stream("POST", "/v1/chat/completions", json=_body(model_id, 900, stream=True)) as r:
            lines = r.iter_lines()
            got = [line for line, _ in zip(lines, range(6), strict=False) if line.startswith("data: ")]
            assert len(got) >= 3
            assert _metric(http, "edgekit_slots_busy") == 1
        # The response is closed mid-stream: the server cancels the sequence within a step.
        _wait_metric(http, "edgekit_cancelled_total", 1)
        _wait_metric(http, "edgekit_slots_busy", 0)
        assert _metric(http, "edgekit_generated_tokens_total") < 900
        r = http.post("/v1/chat/completions", json=_body(model_id, 4))  # the freed slot serves the next one
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def _first_chunk_then(srv: ServerProcess, model_id: str, max_tokens: int, sig: int) -> list[str]:
    """Stream a request, send ``sig`` after its first token, and return every data line received."""
    lines: list[str] = []
    with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        with http.stream("POST", "/v1/chat/completions", json=_body(model_id, max_tokens, stream=True)) as r:
            try:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        lines.append(line[6:])
                        if len(lines) == 2:
                            srv.proc.send_signal(sig)
            except httpx.HTTPError:  # the server closed the stream (Ctrl-C)
                pass
    return lines


def test_sigterm_finishes_running_requests_and_exits_0(smollm2_gguf, tmp_path):
    srv = ServerProcess(smollm2_gguf, "--ctx", "1024", "--threads", "2", home=tmp_path).wait_ready()
    try:
        model_id = httpx.get(srv.url + "/v1/models", timeout=TIMEOUT).json()["data"][0]["id"]
        lines = _first_chunk_then(srv, model_id, 8, signal.SIGTERM)  # well within the 10 s grace
        assert lines[-1] == "[DONE]"
        text = "".join(json.loads(x)["choices"][0]["delta"].get("content", "") for x in lines[:-1])
        assert json.loads(lines[-2])["choices"][0]["finish_reason"] == "length" and text
        assert srv.stop(None) == 0, srv.output()
        assert "Traceback" not in srv.output()
    finally:
        srv.kill()


def test_ctrl_c_cancels_and_exits_130_without_traceback(smollm2_gguf, tmp_path):
    srv = ServerProcess(smollm2_gguf, "--ctx", "1024", "--threads", "2", home=tmp_path).wait_ready()
    try:
        model_id = httpx.get(srv.url + "/v1/models", timeout=TIMEOUT).json()["data"][0]["id"]
        lines = _first_chunk_then(srv, model_id, 900, signal.SIGINT)
        assert "[DONE]" not in lines  # cancelled, not finished
        assert srv.stop(None) == 130, srv.output()
        assert "Traceback" not in srv.output() and "Interrupted" in srv.output()
    finally:
        srv.kill()


def test_a_draft_model_serves_the_same_greedy_text(smollm2_gguf, tmp_path):
    import edgekit

    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Repeat exactly: the quick brown fox jumps over the lazy dog."}]
    with edgekit.load(smollm2_gguf, n_ctx=1024, threads=2, speculative="off") as m:
        plain = m.chat(messages, temperature=0, max_tokens=24).text
    srv = ServerProcess(smollm2_gguf, "--ctx", "1024", "--threads", "2", "--draft", str(smollm2_gguf),
                        home=tmp_path).wait_ready()
    try:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
            model_id = http.get("/v1/models").json()["data"][0]["id"]
            body = {"model": model_id, "messages": messages, "max_tokens": 24, "temperature": 0}
            served = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            assert served == plain
            # a model drafting for itself can't pay (a guess costs a target step): the rule times one of its
            # steps and drops it for the call, so nothing is drafted (tests/test_many_models.py counts its decodes)
            assert _metric(http, "edgekit_drafted_tokens_total") == 0
    finally:
        srv.kill()


def test_a_draft_that_cannot_load_stops_the_server_with_one_line(smollm2_gguf, tmp_path):
    srv = ServerProcess(smollm2_gguf, "--ctx", "1024", "--draft", str(tmp_path / "missing.gguf"), home=tmp_path)
    assert srv.stop(None) == 1
    assert "missing.gguf" in srv.output() and "Traceback" not in srv.output()
