"""`bitdistill serve` against independent references: the official `openai` client talks to a real uvicorn
server on a free loopback port, and every answer is compared with what the in-process runtime produces for
the same prompt, sampling settings and seed (prompts encoded by transformers' own tokenizer and chat
template, not by the server's code). Bad input is tested in test_serve_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from transformers import AutoTokenizer

from bitdistill.runtime.engine import load, load_tokenizer
from bitdistill.runtime.sampling import SamplingParams
from bitdistill.runtime.scoring import score_label_words
from bitdistill.serve import ClassifyDefaults, Limits, create_app
from tiny_server import CTX, Server, build_packed

EOS = 3
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    return build_packed(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(packed):
    app = create_app(packed, threads=1, api_key=KEY, limits=Limits(max_tokens=CTX),
                     classify=ClassifyDefaults([" w7", " w8"], "{text} w9"))  # fmt: skip
    s = Server(app)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(packed):
    """The in-process reference: the runtime's engine and transformers' tokenizer for the same directory."""
    return load(packed, threads=1), AutoTokenizer.from_pretrained(packed)


GREEDY = SamplingParams()


def reference(ref, ids: list[int], n: int, params: SamplingParams = GREEDY) -> tuple[str, int, str]:
    """(text, completion tokens, finish reason) that Engine.generate gives for these prompt ids."""
    engine, tok = ref
    out, _ = engine.generate(ids, n, params, stop_ids=[EOS])
    finish = "stop" if out and out[-1] == EOS else "length"
    return tok.decode([t for t in out if t != EOS], skip_special_tokens=True), len(out), finish


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or
               line.startswith(name + "{"))  # fmt: skip


PROMPT = "w1 w2 w3 w4"


def test_models_and_health(client, server) -> None:
    assert [m.id for m in client.models.list()] == ["packed"]
    health = httpx.get(server.url + "/health").json()  # open without the key: it is for probes
    assert health["status"] == "ok" and health["model"] == "packed"


def test_completion_greedy_matches_the_engine(client, ref) -> None:
    _, tok = ref
    ids = tok(PROMPT)["input_ids"]
    text, n, finish = reference(ref, ids, 24)
    r = client.completions.create(model="packed", prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.choices[0].text == text and r.choices[0].finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        len(ids),
        n,
        len(ids) + n,
    )


@pytest.mark.parametrize(
    "temperature,top_p,top_k,seed", [(0.9, 1.0, 0, 7), (1.3, 0.8, 0, 11), (0.7, 1.0, 5, 3)]
)
def test_sampled_completion_matches_the_engine_with_the_same_seed(
    client, ref, temperature, top_p, top_k, seed
) -> None:
    _, tok = ref
    ids = tok(PROMPT)["input_ids"]
    text, n, _ = reference(ref, ids, 30, SamplingParams(temperature, top_k, top_p, seed))
    r = client.completions.create(model="packed", prompt=PROMPT, max_tokens=30, temperature=temperature,
                                  top_p=top_p, seed=seed, extra_body={"top_k": top_k})  # fmt: skip
    assert r.choices[0].text == text and r.usage.completion_tokens == n
    again = client.completions.create(model="packed", prompt=PROMPT, max_tokens=30, temperature=temperature,
                                      top_p=top_p, seed=seed + 1, extra_body={"top_k": top_k})  # fmt: skip
    assert again.choices[0].text != text  # the seed is what made them equal


def test_chat_uses_the_tokenizers_template(client, ref) -> None:
    _, tok = ref
    messages = [{"role": "system", "content": "w10 w11"}, {"role": "user", "content": "w5 w6 w7"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    text, n, finish = reference(ref, ids, 16)
    r = client.chat.completions.create(model="packed", messages=messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text and r.choices[0].finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), n)
    # the newer budget name and neutral values of parameters frameworks send by default are accepted
    again = client.chat.completions.create(model="packed", messages=messages, max_completion_tokens=16,
                                           temperature=0, presence_penalty=0, frequency_penalty=0, n=1)  # fmt: skip
    assert again.choices[0].message.content == text


def test_streaming_completion_and_chat(client, ref) -> None:
    _, tok = ref
    ids = tok(PROMPT)["input_ids"]
    text, n, finish = reference(ref, ids, 20)
    chunks = list(client.completions.create(model="packed", prompt=PROMPT, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert len([c for c in chunks if c.choices]) > 3  # pieces arrive one by one, not as one block
    assert chunks[-1].usage.completion_tokens == n and chunks[-1].usage.prompt_tokens == len(ids)

    messages = [{"role": "user", "content": "w5 w6 w7"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    text, _, finish = reference(ref, ids, 12)
    chunks = list(client.chat.completions.create(model="packed", messages=messages, max_tokens=12,
                                                 temperature=0, stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish


def test_a_list_of_prompts_answers_each_as_if_sent_alone(client, ref) -> None:
    """OpenAI's list forms of `prompt` (strings, token ids, lists of token ids): choice i is what prompt i
    alone gives with the same settings and seed; usage sums them; a stream tags each piece with its index."""
    _, tok = ref
    prompts = [PROMPT, "w9 w8", "w50 w51 w52"]
    ids = [tok(p)["input_ids"] for p in prompts]
    params = SamplingParams(0.9, 0, 1.0, 5)
    want = [reference(ref, i, 12, params) for i in ids]
    kw = {"model": "packed", "max_tokens": 12, "temperature": 0.9, "seed": 5}
    for form in (prompts, ids):
        r = client.completions.create(prompt=form, **kw)
        assert [(c.index, c.text, c.finish_reason) for c in r.choices] == [(i, t, f) for i, (t, _, f) in
                                                                            enumerate(want)]  # fmt: skip
        assert r.usage.prompt_tokens == sum(map(len, ids)) and r.usage.completion_tokens == sum(n for _, n, _ in want)
    one = client.completions.create(prompt=ids[1], **kw)  # a flat list of ids is one prompt
    assert [c.text for c in one.choices] == [want[1][0]]
    chunks = list(client.completions.create(prompt=prompts, stream=True, stream_options={"include_usage": True},
                                            **kw))  # fmt: skip
    for i, (text, _, finish) in enumerate(want):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert "".join(c.text for c in mine) == text and mine[-1].finish_reason == finish
    assert chunks[-1].usage.completion_tokens == sum(n for _, n, _ in want)


def test_raw_stream_is_openai_sse_ending_with_done(server) -> None:
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True}) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_stop_strings_cut_the_text_streamed_or_not(client, ref) -> None:
    _, tok = ref
    ids = tok(PROMPT)["input_ids"]
    full, _, _ = reference(ref, ids, 40)
    words = full.split()
    stop = " ".join(words[5:7])  # two words in the middle, spanning several tokens
    expect = full[: full.index(stop)]
    r = client.completions.create(
        model="packed", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "zz"]
    )
    assert r.choices[0].text == expect and r.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model="packed", prompt=PROMPT, max_tokens=40, temperature=0, stop=stop,
                                       stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == expect


def test_classify_matches_in_process_scoring(server, packed) -> None:
    engine, tok = load(packed, threads=1), load_tokenizer(packed)
    texts = ["w1 w2 w3", "w40 w41", "w9 w9 w9 w100"]
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v1/classify", headers=h,
                   json={"input": texts, "labels": ["w20", "w21", "w22"], "template": "w5 {text} w6"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == ["w20", "w21", "w22"]
    for i, t in enumerate(texts):
        want = score_label_words(engine, tok, f"w5 {t} w6", [" w20", " w21", " w22"])
        got = body["data"][i]
        assert np.allclose(got["scores"], want, rtol=0, atol=1e-9)
        assert got["label_index"] == int(want.argmax()) and got["label"] == body["labels"][int(want.argmax())]
    # without labels/template the server's defaults apply (here " w7"/" w8" and "{text} w9")
    r = httpx.post(server.url + "/v1/classify", headers=h, json={"input": "w3 w4"}).json()
    want = score_label_words(engine, tok, "w3 w4 w9", [" w7", " w8"])
    assert r["labels"] == ["w7", "w8"] and np.allclose(r["data"][0]["scores"], want, rtol=0, atol=1e-9)


def test_queued_classify_requests_share_one_engine_call(server, packed) -> None:
    """Six classify requests that queue behind a generation are scored in one engine call (the histogram of
    texts per call gains one observation of all their texts), and each still gets exactly its own scores."""
    engine, tok = load(packed, threads=1), load_tokenizer(packed)
    h = {"Authorization": f"Bearer {KEY}"}
    inputs = [["w1 w2"], ["w3", "w4 w5"], ["w6"], ["w7 w8 w9", "w10", "w11"], ["w12"], ["w13 w14"]]
    calls = metric(server, "bitdistill_classify_batch_inputs_count")
    texts = metric(server, "bitdistill_classify_batch_inputs_sum")
    answers: dict[int, dict] = {}
    with httpx.stream("POST", server.url + "/v1/completions", headers=h,
                      json={"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}) as r:  # fmt: skip
        lines = r.iter_lines()
        next(lines)  # the engine is busy with this generation now
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, httpx.post(
            server.url + "/v1/classify", headers=h, json={"input": inputs[i]}, timeout=60).json()))
            for i in range(len(inputs))]  # fmt: skip
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/health").json()["queue_length"] < len(inputs):
            assert time.monotonic() < deadline, "the classify requests never queued"
            time.sleep(0.01)
    for t in threads:  # leaving the stream cancelled the generation: the queued run goes next
        t.join(60)
    assert metric(server, "bitdistill_classify_batch_inputs_count") == calls + 1
    assert metric(server, "bitdistill_classify_batch_inputs_sum") == texts + sum(map(len, inputs))
    for i, texts_i in enumerate(inputs):
        got = [d["scores"] for d in answers[i]["data"]]
        want = [score_label_words(engine, tok, f"{t} w9", [" w7", " w8"]) for t in texts_i]
        assert np.allclose(got, want, rtol=0, atol=1e-9), i


def test_api_key_is_required_on_v1(server) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.completions.create(model="packed", prompt=PROMPT, max_tokens=2)
    assert err.value.status_code == 401 and "incorrect API key" in err.value.message


def test_metrics_count_requests_and_tokens(client, server) -> None:
    before = metric(server, "bitdistill_generated_tokens_total")
    r = client.completions.create(model="packed", prompt=PROMPT, max_tokens=9, temperature=0)
    assert metric(server, "bitdistill_generated_tokens_total") - before == r.usage.completion_tokens
    text = httpx.get(server.url + "/metrics").text
    assert 'bitdistill_requests_total{route="/v1/completions",status="200"}' in text
    for name in (
        "bitdistill_queue_length",
        "bitdistill_tokens_per_second",
        "bitdistill_request_seconds_bucket",
    ):
        assert name in text


def test_a_client_that_disconnects_stops_its_generation(client, server, ref) -> None:
    """A 4000-token generation (about a second here) whose reader leaves after the first chunk: the engine
    must stop long before 4000 tokens; the same request read to the end generates all of them."""
    _, tok = ref
    full, n, finish = reference(ref, tok(PROMPT)["input_ids"], 4000)
    assert (n, finish) == (4000, "length")  # no EOS on the way: only a cancellation can end it early
    before = metric(server, "bitdistill_generated_tokens_total")
    cancelled = metric(server, "bitdistill_cancelled_total")
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}) as r:  # fmt: skip
        next(r.iter_lines())
    # leaving the block closed the connection; the next request runs only once the engine is free again: then the count is final
    client.completions.create(model="packed", prompt=PROMPT, max_tokens=1, temperature=0)
    generated = metric(server, "bitdistill_generated_tokens_total") - before - 1
    assert generated < 2000, generated
    assert metric(server, "bitdistill_cancelled_total") == cancelled + 1


def test_a_queued_request_whose_client_left_is_skipped(client, server) -> None:
    """A non-streaming request that waits behind a long generation and whose client gives up is never run."""
    before = metric(server, "bitdistill_generated_tokens_total")
    cancelled = metric(server, "bitdistill_cancelled_total")
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": PROMPT, "max_tokens": 4000, "temperature": 0}
    with httpx.stream(
        "POST", server.url + "/v1/completions", headers=h, json={**body, "stream": True}
    ) as running:
        lines = running.iter_lines()
        next(lines)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its request waits in the queue
            httpx.post(server.url + "/v1/completions", headers=h, json=body, timeout=0.2)
    client.completions.create(model="packed", prompt=PROMPT, max_tokens=1, temperature=0)
    assert metric(server, "bitdistill_cancelled_total") == cancelled + 2  # the stream and the skipped one
    assert metric(server, "bitdistill_generated_tokens_total") - before - 1 < 4000


def test_a_full_queue_answers_503_with_retry_after(packed) -> None:
    s = Server(create_app(packed, threads=1, limits=Limits(queue_size=1, max_tokens=CTX)))
    try:
        body = {"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}
        with (
            httpx.Client(base_url=s.url, timeout=60) as c,
            c.stream("POST", "/v1/completions", json=body) as running,
        ):
            lines = running.iter_lines()  # kept: a dropped iterator closes its connection (httpcore)
            next(lines)  # the engine is busy with this one now
            with c.stream("POST", "/v1/completions", json=body) as waiting:  # takes the one queue slot
                assert waiting.status_code == 200
                over = httpx.post(s.url + "/v1/completions", json=body)
                assert over.status_code == 503, over.text
                assert int(over.headers["Retry-After"]) >= 1
                assert over.json()["error"]["code"] == "queue_full"
        assert metric(s, "bitdistill_rejected_total") == 1
    finally:
        s.close()


def test_the_server_never_imports_torch(packed) -> None:
    """The runtime is numpy + ctypes: a server that loaded torch would carry hundreds of MiB for nothing."""
    code = (
        "import sys; from bitdistill.serve import create_app; "
        f"app = create_app({str(packed)!r}, threads=1); "
        "app.state.model.chat_ids([{'role': 'user', 'content': 'w1'}]); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_killed_mid_stream_the_server_restarts_from_the_directory_alone(packed) -> None:
    """SIGKILL during a stream leaves nothing to repair: the same command serves again at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bitdistill.cli", "serve", str(packed), "--port", str(port), "--threads", "1",
           "--max-tokens", str(CTX), "--log-level", "warning"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                time.sleep(0.1)
        proc.kill()
        raise AssertionError(proc.stderr.read().decode())

    proc = start()
    try:
        with pytest.raises(httpx.TransportError):
            with httpx.stream("POST", url + "/v1/completions", timeout=60,
                              json={"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}) as r:  # fmt: skip
                lines = r.iter_lines()
                next(lines)
                proc.send_signal(signal.SIGKILL)
                for _ in lines:
                    pass
        proc.wait(10)
        assert not list(packed.glob("*.lock")) and not list(packed.glob(".tmp*"))
        proc = start()
        r = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.kill()
        proc.wait(10)


def test_serve_kv_dtype_reaches_the_engine(packed, capsys) -> None:
    """create_app(kv_dtype=...) (serve --kv-dtype) loads the engine with that KV cache; a bad value is refused
    by argparse before anything loads (exit 2)."""
    from bitdistill.cli import main

    assert create_app(packed, threads=1, kv_dtype="fp16").state.model.engine.kv16 == 1
    assert create_app(packed, threads=1).state.model.engine.kv16 == 0
    with pytest.raises(SystemExit) as bad:
        main(["serve", str(packed), "--kv-dtype", "int4"])
    assert bad.value.code == 2 and "int4" in capsys.readouterr().err
