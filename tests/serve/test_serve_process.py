"""Server processes: SIGTERM draining, and three servers behind LiteLLM's Router."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_scripted import ServerProcess


def _stream_text(root_url: str, text: str, first_chunk: threading.Event,
                 out: dict) -> None:
    pieces: list[str] = []
    try:
        with httpx.stream("POST", root_url + "/v1/chat/completions", timeout=60, json={
            "model": "scripted", "stream": True,
            "messages": [{"role": "user", "content": text}],
        }) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    import json

                    choice = json.loads(line[6:])["choices"][0]
                    pieces.append(choice["delta"].get("content") or "")
                    if choice["finish_reason"]:
                        out["finish"] = choice["finish_reason"]
                    if pieces[-1]:
                        first_chunk.set()
                elif line == "data: [DONE]":
                    out["done"] = True
    except httpx.HTTPError as exc:
        out["error"] = exc
    out["text"] = "".join(pieces)
    first_chunk.set()


def test_sigterm_finishes_in_flight_then_closes_the_model(
    server_process: type[ServerProcess], tmp_path: Path,
) -> None:
    server = server_process("--token-delay", "0.02", "--grace", "20", log=tmp_path / "a.log")
    first, out = threading.Event(), {}
    client = threading.Thread(target=_stream_text,
                              args=(server.root_url, "count to 60", first, out))
    client.start()
    assert first.wait(20)
    server.proc.send_signal(signal.SIGTERM)
    # it stops listening at once, while the running answer goes on
    deadline = time.monotonic() + 5
    while True:
        try:
            httpx.get(server.root_url + "/health", timeout=1)
        except httpx.ConnectError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)
    client.join(30)
    assert out.get("finish") == "stop" and out.get("done")
    assert out["text"] == " ".join(str(i) for i in range(1, 61))
    assert server.proc.wait(20) == 0
    assert server.closed_model()


def test_sigterm_aborts_what_outlives_the_grace_period(
    server_process: type[ServerProcess], tmp_path: Path,
) -> None:
    server = server_process("--token-delay", "0.02", "--grace", "0.5", log=tmp_path / "b.log")
    first, out = threading.Event(), {}
    client = threading.Thread(target=_stream_text,
                              args=(server.root_url, "count to 2000", first, out))
    client.start()
    assert first.wait(20)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert time.monotonic() - start < 10.0  # 0.5 s of grace, then abort, close and exit
    client.join(30)
    assert "done" not in out  # the answer was cut, not passed off as complete
    assert len(out["text"].split()) < 2000
    assert server.closed_model()
    assert server.finished() == []  # the engine recorded an abort, not a finished answer


def test_litellm_router_survives_a_killed_server(
    server_process: type[ServerProcess], tmp_path: Path,
) -> None:
    litellm = pytest.importorskip("litellm")
    servers = [server_process("--token-delay", "0.01", log=tmp_path / f"s{i}.log")
               for i in range(3)]
    router = litellm.Router(
        model_list=[{"model_name": "rkllm", "litellm_params": {
            "model": "openai/scripted", "api_base": s.base_url, "api_key": "unused",
            "timeout": 30, "max_retries": 0}} for s in servers],
        num_retries=3, retry_after=0, allowed_fails=0, cooldown_time=60,
        routing_strategy="least-busy",
    )
    prompts = [f"request {i} please repeat these words back to me now" for i in range(30)]
    victim = servers[1]
    done: list[int] = []

    async def one(i: int, gate: asyncio.Semaphore) -> tuple[int, str, str]:
        async with gate:
            reply = await router.acompletion(
                model="rkllm", messages=[{"role": "user", "content": prompts[i]}])
            done.append(i)
            return i, reply.choices[0].message.content, reply._hidden_params.get("api_base")

    async def killer() -> None:
        # kill the victim while it is generating (not between requests)
        while len(done) < 8 or not _generating(victim):
            if len(done) == len(prompts):
                return  # never caught generating: the assertions below say so
            await asyncio.sleep(0.002)
        victim.proc.kill()

    async def main() -> list[tuple[int, str, str]]:
        gate = asyncio.Semaphore(6)
        results = await asyncio.gather(killer(), *[one(i, gate) for i in range(30)])
        return results[1:]

    results = asyncio.run(main())
    assert victim.proc.wait(10) != 0
    answers = {i: text for i, text, _ in results}
    assert len(results) == 30 and sorted(answers) == list(range(30))
    for i, text in answers.items():
        assert text == f"You said: {prompts[i]}"  # complete, and its own answer
    survivors = [s for s in servers if s is not victim]
    finished_by_survivors = [x for s in survivors for x in s.finished()]
    # every answer the client got was produced once by a live server, or by the victim
    # before it died; none is counted twice among the survivors
    assert len(finished_by_survivors) == len(set(finished_by_survivors))
    victims_answers = set(victim.finished())
    assert set(finished_by_survivors) | victims_answers == set(prompts)
    # the victim really died mid-answer, and that request was answered elsewhere
    cut = set(_started(victim)) - victims_answers
    assert cut and cut <= set(finished_by_survivors)
    served_by = {base for _, _, base in results}
    assert len(served_by) >= 2


def _started(server: ServerProcess) -> list[str]:
    if server.log is None or not server.log.exists():
        return []
    return [x[7:] for x in server.log.read_text().splitlines() if x.startswith("#start ")]


def _generating(server: ServerProcess) -> bool:
    return len(_started(server)) > len(server.finished())
