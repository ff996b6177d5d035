"""Error bodies and status codes, the API key, the bounded queue, disconnects."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from serve_scripted import ScriptedEngine, scripted_model

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.serve import ServeConfig
from rkllm_core.serve.runner import BackgroundServer

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"


def chat_body(text: str = "hi", **extra: object) -> dict:
    return {"model": "scripted", "messages": [{"role": "user", "content": text}], **extra}


def assert_error(response: httpx.Response, status: int, code: str | None = None,
                 param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_invalid_json_is_400(server: BackgroundServer) -> None:
    response = httpx.post(server.root_url + CHAT, content=b'{"model": "scripted", "messa',
                          headers={"content-type": "application/json"})
    error = assert_error(response, 400, "invalid_json")
    assert error["type"] == "invalid_request_error"
    assert_error(httpx.post(server.root_url + CHAT, json=[1, 2]), 400, "invalid_json")


def test_missing_and_wrong_fields_name_the_parameter(server: BackgroundServer) -> None:
    assert_error(httpx.post(server.root_url + CHAT, json={"model": "scripted"}), 400,
                 "missing_required_parameter", "messages")
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(temperature=-1)), 400,
                 "invalid_value", "temperature")
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(max_tokens=0)), 400,
                 param="max_tokens")
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(n=3)), 400, param="n")
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(logprobs=True)), 400,
                 param="logprobs")
    bad_role = {"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]}
    error = assert_error(httpx.post(server.root_url + CHAT, json=bad_role), 400)
    assert "wizard" in error["message"]


def test_unknown_model_is_404_with_the_served_name(server: BackgroundServer) -> None:
    api = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "model_not_found"
    assert "'scripted'" in caught.value.body["message"]
    assert_error(httpx.post(server.base_url + "/embeddings",
                            json={"model": "nope", "input": "x"}), 404, "model_not_found")


def test_context_overflow_is_400_before_any_stream_starts(model: RKLLMModel) -> None:
    engine = ScriptedEngine(context_length=200)
    small = scripted_model(engine)
    try:
        with BackgroundServer(small, ServeConfig(port=0, served_names=("scripted",))) as srv:
            for stream in (False, True):
                response = httpx.post(srv.root_url + CHAT, json=chat_body("x" * 500,
                                                                          stream=stream))
                error = assert_error(response, 400, "context_length_exceeded", "messages")
                assert "context window" in error["message"]
    finally:
        small.close()


def test_bad_json_schema_is_400(server: BackgroundServer) -> None:
    bad_schema = {"type": "json_schema",
                  "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    error = assert_error(httpx.post(server.root_url + CHAT,
                                    json=chat_body(response_format=bad_schema)),
                         400, "invalid_json_schema")
    assert "objekt" in error["message"]
    not_object = {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(response_format=not_object)),
                 400, "invalid_json_schema")
    assert_error(httpx.post(server.root_url + CHAT,
                            json=chat_body(response_format={"type": "yaml"})),
                 400, param="response_format")
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(tools=[bad_tool])), 400,
                 "invalid_json_schema", "tools[0].function.parameters")


def test_embedding_token_ids_are_refused_with_the_fix(server: BackgroundServer) -> None:
    error = assert_error(httpx.post(server.base_url + "/embeddings",
                                    json={"model": "scripted", "input": [[1, 2, 3]]}),
                         400, param="input")
    assert "check_embedding_ctx_length=False" in error["message"]
    assert_error(httpx.post(server.base_url + "/embeddings",
                            json={"model": "scripted", "input": "x", "dimensions": 3}),
                 400, param="dimensions")


def test_unknown_path_and_method_are_openai_shaped(server: BackgroundServer) -> None:
    assert_error(httpx.get(server.base_url + "/nothing"), 404)
    assert_error(httpx.get(server.root_url + CHAT), 405)


def test_api_key_required_everywhere_but_health(model: RKLLMModel) -> None:
    config = ServeConfig(port=0, api_key="s3cret", served_names=("scripted",))
    with BackgroundServer(model, config) as srv:
        assert httpx.get(srv.root_url + "/health").status_code == 200
        for method, path in [("GET", "/ready"), ("GET", "/v1/models"), ("POST", CHAT),
                             ("POST", "/v1/embeddings"), ("POST", "/v1/completions")]:
            response = httpx.request(method, srv.root_url + path, json=chat_body())
            assert_error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(srv.root_url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="nope", max_retries=0).models.list()
        api = openai.OpenAI(base_url=srv.base_url, api_key="s3cret", max_retries=0)
        reply = api.chat.completions.create(model="scripted",
                                            messages=[{"role": "user", "content": "ok"}])
        assert reply.choices[0].message.content == "You said: ok"


def test_binds_loopback_by_default() -> None:
    assert ServeConfig().host == "127.0.0.1"


def test_full_queue_answers_429_with_retry_after() -> None:
    engine = ScriptedEngine(token_delay=0.02)
    busy = scripted_model(engine)
    config = ServeConfig(port=0, max_queue=1, served_names=("scripted",))
    try:
        with BackgroundServer(busy, config) as srv:
            results: dict[int, str] = {}

            def run(i: int) -> None:
                reply = httpx.post(srv.root_url + CHAT, json=chat_body("count to 100"),
                                   timeout=60)
                results[i] = reply.json()["choices"][0]["message"]["content"]

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            _wait(lambda: srv.state.admission.admitted == 2)
            ready = httpx.get(srv.root_url + "/ready").json()
            assert ready["queue_depth"] == 1 and ready["running"] == 1
            assert ready["max_queue"] == 1 and ready["status"] == "ready"
            refused = httpx.post(srv.root_url + CHAT, json=chat_body())
            error = assert_error(refused, 429, "queue_full")
            assert int(refused.headers["retry-after"]) >= 1
            assert error["type"] == "rate_limit_error"
            api = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                api.embeddings.create(model="scripted", input="x")
            assert httpx.get(srv.root_url + "/ready").json()["rejected_total"] == 2
            for t in threads:
                t.join(60)
            expected = " ".join(str(i) for i in range(1, 101))
            assert results == {0: expected, 1: expected}  # the admitted ones were not hurt
            assert httpx.get(srv.root_url + "/ready").json()["queue_depth"] == 0
            after = httpx.post(srv.root_url + CHAT, json=chat_body("again"))
            assert after.json()["choices"][0]["message"]["content"] == "You said: again"
    finally:
        busy.close()


def _wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _open_request(root_url: str, body: dict) -> socket.socket:
    """Send a request on a raw socket, without reading the answer (to hang up mid-way)."""
    host, port = root_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_generation_within_one_token(stream: bool) -> None:
    engine = ScriptedEngine(token_delay=0.05)
    slow = scripted_model(engine)
    try:
        with BackgroundServer(slow, ServeConfig(port=0, served_names=("scripted",))) as srv:
            sock = _open_request(srv.root_url, chat_body("count to 1000", stream=stream))
            if stream:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            _wait(lambda: engine.tokens_sent >= 5)
            sock.close()  # the client hangs up mid-answer
            sent_at_close = engine.tokens_sent
            _wait(lambda: not engine.is_running())
            assert engine.aborted_runs == 1
            # the engine stops at its next token boundary: at most the token in flight
            assert engine.tokens_sent - sent_at_close <= 2
            _wait(lambda: srv.state.admission.admitted == 0)
            # the model is free: the next request is answered at once
            start = time.monotonic()
            reply = httpx.post(srv.root_url + CHAT, json=chat_body("next"))
            assert reply.json()["choices"][0]["message"]["content"] == "You said: next"
            assert time.monotonic() - start < 2.0
    finally:
        slow.close()


def test_queued_request_of_a_gone_client_never_runs() -> None:
    engine = ScriptedEngine(token_delay=0.01)
    slow = scripted_model(engine)
    try:
        with BackgroundServer(slow, ServeConfig(port=0, served_names=("scripted",))) as srv:
            first = threading.Thread(target=lambda: httpx.post(
                srv.root_url + CHAT, json=chat_body("count to 150"), timeout=60))
            first.start()
            _wait(lambda: engine.tokens_sent >= 1)
            sock = _open_request(srv.root_url, chat_body("count to 500", stream=True))
            _wait(lambda: srv.state.admission.admitted == 2)
            sock.close()  # gone while still queued
            first.join(30)
            _wait(lambda: srv.state.admission.admitted == 0)
            assert engine.finished_runs == ["count to 150"]
            assert engine.tokens_sent == 150  # the queued, abandoned request produced nothing
    finally:
        slow.close()


def test_draining_server_refuses_new_requests(model: RKLLMModel) -> None:
    with BackgroundServer(model, ServeConfig(port=0, served_names=("scripted",))) as srv:
        srv.state.admission.draining = True
        assert_error(httpx.post(srv.root_url + CHAT, json=chat_body()), 503, "shutting_down")
        ready = httpx.get(srv.root_url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.get(srv.root_url + "/health").status_code == 200


def test_ready_reports_loading_then_ready() -> None:
    gate = threading.Event()
    engine = ScriptedEngine()

    def load() -> RKLLMModel:
        gate.wait(10)
        return scripted_model(engine, RuntimeConfig())

    srv = BackgroundServer(load, ServeConfig(port=0, served_names=("scripted",)),
                           close_model=True).start()
    try:
        loading = httpx.get(srv.root_url + "/ready")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert httpx.get(srv.root_url + "/health").json() == {"status": "ok"}
        assert_error(httpx.post(srv.root_url + CHAT, json=chat_body()), 503, "model_loading")
        gate.set()
        _wait(lambda: httpx.get(srv.root_url + "/ready").status_code == 200)
        assert httpx.get(srv.root_url + "/ready").json()["loaded"] is True
    finally:
        srv.stop()
    assert engine.closed  # the server loaded it, so the server closed it


def test_tool_choice_naming_an_unbound_tool_is_400(server: BackgroundServer) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    error = assert_error(httpx.post(server.root_url + CHAT, json=chat_body(
        tools=[tool], tool_choice={"type": "function", "function": {"name": "launch"}})), 400)
    assert "launch" in error["message"]
    assert_error(httpx.post(server.root_url + CHAT, json=chat_body(tool_choice="required")),
                 400, param="tool_choice")


def test_request_timeout_counts_queue_time_and_is_504() -> None:
    engine = ScriptedEngine(token_delay=0.01)
    slow = scripted_model(engine)
    # 1 s against a 5 s answer; the short answer after it fits even on a loaded machine
    config = ServeConfig(port=0, request_timeout_s=1.0, served_names=("scripted",))
    try:
        with BackgroundServer(slow, config) as srv:
            error = assert_error(httpx.post(srv.root_url + CHAT, json=chat_body("count to 500")),
                                 504, "request_timeout")
            assert error["type"] == "timeout_error"
            _wait(lambda: not engine.is_running())
            assert engine.tokens_sent < 250  # stopped at the deadline, not run to the end
            ok = httpx.post(srv.root_url + CHAT, json=chat_body("count to 3"))
            assert ok.json()["choices"][0]["message"]["content"] == "1 2 3"
    finally:
        slow.close()


def test_engine_error_before_and_after_the_first_token(server: BackgroundServer) -> None:
    # before any token: a proper HTTP error, streamed or not
    for stream in (False, True):
        error = assert_error(httpx.post(server.root_url + CHAT,
                                        json=chat_body("fail after 0", stream=stream)),
                             500, "generation_error")
        assert "scripted failure" in error["message"] and error["type"] == "server_error"
    # mid-stream the status line is gone: the error arrives as an event, as OpenAI sends it
    api = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    pieces = []
    with pytest.raises(openai.APIError, match="scripted failure after 3 tokens"):
        for chunk in api.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "fail after 3"}],
            stream=True,
        ):
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "t0 t1 t2 "
    # and the server goes on serving
    ok = httpx.post(server.root_url + CHAT, json=chat_body("count to 2"))
    assert ok.json()["choices"][0]["message"]["content"] == "1 2"


def test_oversized_body_is_413(model: RKLLMModel) -> None:
    config = ServeConfig(port=0, max_body_bytes=2000, served_names=("scripted",))
    with BackgroundServer(model, config) as srv:
        big = chat_body("x" * 5000)
        assert_error(httpx.post(srv.root_url + CHAT, json=big), 413, "request_too_large")

        def chunked() -> Iterator[bytes]:  # no content-length: counted while read
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 500):
                yield payload[i : i + 500]

        assert_error(httpx.post(srv.root_url + CHAT, content=chunked()), 413,
                     "request_too_large")
        ok = httpx.post(srv.root_url + CHAT, json=chat_body("small"))
        assert ok.json()["choices"][0]["message"]["content"] == "You said: small"
