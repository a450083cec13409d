"""Bad requests to `bitdistill serve`, one row each: raw HTTP (httpx) against a real server, and every answer
must be the promised 4xx status with an OpenAI-style JSON error body naming the culprit, never a 500 or a
dropped connection. After the table the server must still answer a good request.
"""

from __future__ import annotations

import json

import httpx
import pytest

from bitdistill.serve import Limits, create_app
from tiny_server import CTX, Server, build_packed

KEY = "sk-bad-inputs"
MAX_BODY = 64 * 1024
LIMIT = 512  # the server's --max-tokens here

C, CHAT, CLS = "/v1/completions", "/v1/chat/completions", "/v1/classify"
OK = {"prompt": "w1 w2", "max_tokens": 2}
USER = [{"role": "user", "content": "w1"}]
LONG = "w1 " * (CTX + 10)  # more tokens than the model's context, still under the body limit

# (id, path, json body or raw bytes, status, param, code, words the message must contain)
# fmt: off
CASES = [
    ("malformed-json", C, b'{"prompt": "w1",', 400, None, "invalid_json", ["not valid JSON"]),
    ("nan-literal", C, b'{"prompt": "w1", "temperature": NaN}', 400, "temperature", None, ["finite"]),
    ("deeply-nested", C, b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}", 400, None, None, []),
    ("lone-surrogate", C, b'{"prompt": "w1 \\ud800"}', 400, "prompt", None, ["unpaired surrogate"]),
    ("body-not-object", C, b"[1, 2]", 400, None, None, ["JSON object"]),
    ("body-empty", C, b"", 400, None, None, ["missing"]),
    ("missing-prompt", C, {"max_tokens": 3}, 400, "prompt", "missing_required_parameter", ["prompt"]),
    ("prompt-not-string", C, {"prompt": 42}, 400, "prompt", None, ["string"]),
    ("prompt-too-many", C, {"prompt": ["w1"] * 17}, 400, "prompt", "invalid_value", ["1 to 16", "--max-prompts"]),
    ("prompt-empty-list", C, {"prompt": []}, 400, "prompt", None, []),
    ("prompt-empty-token-list", C, {"prompt": [[1, 2], []]}, 400, "prompt", None, []),
    ("prompt-token-outside-vocab", C, {"prompt": [5, 128]}, 400, "prompt", "invalid_value", ["vocabulary", "0 to 127"]),
    ("prompt-negative-token", C, {"prompt": [[5, -1]]}, 400, "prompt", "invalid_value", ["vocabulary"]),
    ("prompt-mixed-list", C, {"prompt": ["w1", 3]}, 400, "prompt", None, []),
    ("prompt-list-empty-text", C, {"prompt": ["w1", " "]}, 400, "prompt", None, ["no tokens"]),
    ("prompt-empty", C, {"prompt": ""}, 400, "prompt", None, ["no tokens"]),
    ("unknown-field", C, {**OK, "max_token": 3}, 400, "max_token", "unknown_parameter", ["max_token"]),
    ("unsupported-openai-field", C, {**OK, "logprobs": 2}, 400, "logprobs", "unknown_parameter", ["logprobs"]),
    ("max-tokens-string", C, {"prompt": "w1", "max_tokens": "5"}, 400, "max_tokens", None, ["integer"]),
    ("max-tokens-float", C, {"prompt": "w1", "max_tokens": 5.5}, 400, "max_tokens", None, ["integer"]),
    ("max-tokens-bool", C, {"prompt": "w1", "max_tokens": True}, 400, "max_tokens", None, ["integer"]),
    ("max-tokens-0", C, {"prompt": "w1", "max_tokens": 0}, 400, "max_tokens", None, ["from 1 to 512"]),
    ("max-tokens-over-limit", C, {"prompt": "w1", "max_tokens": LIMIT + 1}, 400, "max_tokens", None, ["--max-tokens"]),
    ("prompt-beyond-context", C, {"prompt": LONG, "max_tokens": 1}, 400, "prompt", "context_length_exceeded",
     [f"context is {CTX} tokens"]),
    ("prompt-plus-max-tokens-beyond-context", C, {"prompt": "w1 " * (CTX - 5), "max_tokens": 10}, 400,
     "max_tokens", "context_length_exceeded", ["at most 5"]),
    ("temperature-negative", C, {**OK, "temperature": -0.5}, 400, "temperature", None, ["greater than or equal"]),
    ("temperature-too-high", C, {**OK, "temperature": 2.5}, 400, "temperature", None, ["less than or equal"]),
    ("temperature-string", C, {**OK, "temperature": "hot"}, 400, "temperature", None, ["number"]),
    ("top-p-0", C, {**OK, "top_p": 0}, 400, "top_p", None, ["greater than 0"]),
    ("top-p-over-1", C, {**OK, "top_p": 1.5}, 400, "top_p", None, ["less than or equal"]),
    ("top-k-negative", C, {**OK, "top_k": -1}, 400, "top_k", None, ["greater than or equal"]),
    ("top-k-float", C, {**OK, "top_k": 2.5}, 400, "top_k", None, ["integer"]),
    ("seed-negative", C, {**OK, "seed": -1}, 400, "seed", None, ["greater than or equal"]),
    ("stop-too-many", C, {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None, ["at most 4"]),
    ("stop-empty", C, {**OK, "stop": ""}, 400, "stop", None, ["must not be empty"]),
    ("stop-number", C, {**OK, "stop": 7}, 400, "stop", None, ["string"]),
    ("n-2", C, {**OK, "n": 2}, 400, "n", None, ["less than or equal to 1"]),
    ("stream-options-unknown", C, {**OK, "stream_options": {"x": 1}}, 400, "stream_options.x",
     "unknown_parameter", []),
    ("presence-penalty", C, {**OK, "presence_penalty": 0.5}, 400, "presence_penalty", None, ["not supported"]),
    ("logit-bias", C, {**OK, "logit_bias": {"5": 1.0}}, 400, "logit_bias", None, ["not supported"]),
    ("chat-two-budgets", CHAT, {"messages": USER, "max_tokens": 2, "max_completion_tokens": 2}, 400, None, None,
     ["not both"]),
    ("stream-string", C, {**OK, "stream": "yes"}, 400, "stream", None, ["boolean"]),
    ("wrong-model", C, {**OK, "model": "gpt-4"}, 404, "model", "model_not_found", ["'packed'"]),
    ("chat-missing-messages", CHAT, {"max_tokens": 2}, 400, "messages", "missing_required_parameter", ["messages"]),
    ("chat-no-messages", CHAT, {"messages": []}, 400, "messages", None, ["at least 1"]),
    ("chat-bad-role", CHAT, {"messages": [{"role": "robot", "content": "w1"}]}, 400, "messages.0.role", None,
     ["system"]),
    ("chat-content-number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content", None,
     []),
    ("chat-message-extra-field", CHAT, {"messages": [{"role": "user", "content": "w1", "mood": "x"}]}, 400,
     "messages.0.mood", "unknown_parameter", ["mood"]),
    ("chat-beyond-context", CHAT, {"messages": [{"role": "user", "content": LONG}]}, 400, "prompt",
     "context_length_exceeded", ["shorten the prompt"]),
    ("classify-missing-input", CLS, {"labels": ["w1", "w2"]}, 400, "input", "missing_required_parameter", []),
    ("classify-input-number", CLS, {"input": 3, "labels": ["w1", "w2"]}, 400, "input", None, []),
    ("classify-input-empty-list", CLS, {"input": [], "labels": ["w1", "w2"]}, 400, "input", None, ["send 1 to"]),
    ("classify-too-many-inputs", CLS, {"input": ["w1"] * 300, "labels": ["w1", "w2"]}, 400, "input", None,
     ["--max-classify-inputs"]),
    ("classify-empty-text", CLS, {"input": "  ", "labels": ["w1", "w2"]}, 400, None, None, ["no tokens"]),
    ("classify-no-labels", CLS, {"input": "w1"}, 400, "labels", "missing_required_parameter", ["--task"]),
    ("classify-one-label", CLS, {"input": "w1", "labels": ["w1"]}, 400, "labels", None, ["at least 2"]),
    ("classify-unknown-word", CLS, {"input": "w1", "labels": ["w1", "zebra"]}, 400, "labels", None,
     ["unknown token"]),
    ("classify-same-words", CLS, {"input": "w1", "labels": ["w1", " w1"]}, 400, "labels", None, ["at least two distinct"]),
    ("classify-template-without-text", CLS, {"input": "w1", "labels": ["w1", "w2"], "template": "w3"}, 400,
     "labels", None, ["{text}"]),
    ("classify-template-bad-placeholder", CLS, {"input": "w1", "labels": ["w1", "w2"], "template": "{text} {x}"},
     400, "labels", None, ["placeholders"]),
    ("classify-pair-missing", CLS, {"input": "w1", "labels": ["w1", "w2"], "template": "{text} {text_pair}"}, 400,
     "text_pair", None, ["text_pair"]),
    ("classify-pair-count", CLS, {"input": ["w1", "w2"], "text_pair": ["w3"], "labels": ["w1", "w2"],
     "template": "{text} {text_pair}"}, 400, "text_pair", None, ["1 strings for 2 inputs"]),
]
# fmt: on


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_bad")
    return build_packed(root), build_packed(root, chat=False)


@pytest.fixture(scope="module")
def server(packed):
    s = Server(create_app(packed[0], threads=1, limits=Limits(max_body_bytes=MAX_BODY, max_tokens=LIMIT)))
    yield s
    s.close()


def check(r, status: int, param: str | None = None, code: str | None = None, words=()) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    for w in words:
        assert w in err["message"], (w, err["message"])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server, case) -> None:
    _, path, body, status, param, code, words = case
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(server.url + path, json=body)
    check(r, status, param, code, words)


def test_body_size_limit_announced_or_streamed(server) -> None:
    big = b'{"prompt": "' + b"w1 " * (MAX_BODY // 3 + 10) + b'"}'
    check(httpx.post(server.url + C, content=big), 413, code="request_too_large", words=[str(MAX_BODY)])

    def chunks():  # no Content-Length: the server must count what arrives
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    check(httpx.post(server.url + C, content=chunks()), 413, code="request_too_large")


def test_unknown_route_wrong_method_and_no_content_type(server) -> None:
    check(httpx.post(server.url + "/v1/embeddings", json={}), 404, code="not_found")
    check(httpx.get(server.url + C), 405, code="method_not_allowed")
    check(httpx.post(server.url + C, content=b'{"prompt": "w1"}', headers={"content-type": "text/plain"}), 400,
          words=["Content-Type: application/json"])  # fmt: skip


def test_chat_without_a_template(packed) -> None:
    s = Server(create_app(packed[1], threads=1))
    try:
        r = httpx.post(s.url + CHAT, json={"messages": USER})
        check(r, 400, "messages", "no_chat_template", ["no chat template", "/v1/completions"])
        assert httpx.post(s.url + C, json=OK).status_code == 200  # completions still work
    finally:
        s.close()


def test_a_broken_model_is_reported_as_json_streamed_or_not(tmp_path) -> None:
    """NaN logits (a diverged checkpoint) stop generation with the runtime's message: as a JSON error, or,
    once a stream's headers are sent, as an error event before [DONE]; never a dropped connection."""
    s = Server(create_app(build_packed(tmp_path, nan_head=True), threads=1))
    try:
        body = {"prompt": "w1 w2", "max_tokens": 4, "temperature": 0.8}
        check(httpx.post(s.url + C, json=body), 400, words=["NaN/inf"])
        with httpx.stream("POST", s.url + C, json={**body, "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line]
        assert events[-1] == "data: [DONE]" and "NaN/inf" in json.loads(events[-2][6:])["error"]["message"]
    finally:
        s.close()


def test_missing_or_wrong_api_key(packed) -> None:
    s = Server(create_app(packed[0], threads=1, api_key=KEY))
    try:
        check(httpx.post(s.url + C, json=OK), 401, code="invalid_api_key", words=["missing API key"])
        check(httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer nope"}), 401,
              code="invalid_api_key", words=["incorrect API key"])  # fmt: skip
        check(httpx.post(s.url + C, json=OK, headers={"Authorization": KEY}), 401, code="invalid_api_key")
        assert httpx.post(s.url + C, json=OK, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200  # probes need no key
    finally:
        s.close()


def test_server_still_serves_after_the_bad_requests(server) -> None:
    r = httpx.post(server.url + C, json=OK)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics


# -- the command line: every bad flag is one line on stderr and exit code 2, before anything listens --------

CLI = [
    ("missing-dir", lambda p, d: [str(d / "nope")], ["nope"]),
    ("not-packed", lambda p, d: [str(d)], ["config.json"]),
    ("port-out-of-range", lambda p, d: [p, "--port", "70000"], ["--port 70000"]),
    ("threads-0", lambda p, d: [p, "--threads", "0"], ["--threads"]),
    ("queue-size-0", lambda p, d: [p, "--queue-size", "0"], ["--queue-size 0"]),
    ("max-body-0", lambda p, d: [p, "--max-body-bytes", "0"], ["--max-body-bytes 0"]),
    ("max-tokens-0", lambda p, d: [p, "--max-tokens", "0"], ["--max-tokens 0"]),
    ("unknown-task", lambda p, d: [p, "--task", "nosuch"], ["unknown task 'nosuch'"]),
    ("summarization-task", lambda p, d: [p, "--task", "cnndm"], ["summarization"]),
    ("labels-unknown-token", lambda p, d: [p, "--labels", "w1,zebra"], ["unknown token"]),
    ("bad-host", lambda p, d: [p, "--host", "no.such.host.invalid"], ["--host"]),
]


@pytest.mark.parametrize("case", CLI, ids=[c[0] for c in CLI])
def test_cli_bad_flags(packed, tmp_path, capsys, monkeypatch, case) -> None:
    import uvicorn

    from bitdistill.cli import main

    def started(*a, **k):  # a guard: a case that wrongly passed its checks must not serve forever
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", started)
    _, argv, words = case
    args = argv(str(packed[0]), tmp_path)
    assert main(["serve", *args, *([] if "--port" in args else ["--port", "0"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitdistill serve: error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


def test_cli_port_in_use(packed, capsys) -> None:
    import socket

    from bitdistill.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(packed[0]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"127.0.0.1:{port}" in err and "--port" in err and len(err.splitlines()) == 1, err
