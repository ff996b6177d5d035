"""A scripted engine for the server tests: deterministic answers at a fixed speed.

It stands in for a model where the model's own speed would dominate (queueing, aborts,
shutdown, routing), and goes through the real :class:`rkllm_core.RKLLMModel` (its worker queue,
streams, stop strings and tool-call parsing); only the engine below it is replaced.

Answers, from the end of the prompt (the core's prefill, when it wrote one):
- a forced tool call started (``<tool_call>{"name": "`` or ``… "arguments": {"city":``) →
  the rest of a ``get_weather`` call for Paris;
- a JSON answer started (``{"`` or ``{"<key>":``) → the rest of an object;

and from the last user turn of the prompt:
- ``count to N`` → ``1 2 … N`` (one token per number);
- ``fail after N`` → N tokens, then the engine reports an error;
- a question about the weather with tools offered → a ``<tool_call>`` for ``get_weather``;
- anything else → ``You said: <the text>`` (one token per word).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rkllm_core import RKLLMModel, RuntimeConfig
from rkllm_core.engine import (
    EngineInfo,
    ErrorEvent,
    FinishEvent,
    HiddenStateEvent,
    InferMode,
    PerfStats,
    PromptInput,
    Request,
    Sink,
    TokenBatchInput,
    TokenEvent,
    TokenInput,
)
from rkllm_core.errors import ContextLengthError, GenerationError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)


class CharTokenizer:
    """One token per character (ids are code points)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


def user_text(prompt: str) -> str:
    """The last user turn of a rendered prompt (the whole text for a raw prompt)."""
    turns = _USER_TURN.findall(prompt)
    return turns[-1].strip() if turns else prompt.strip()


def _pieces(text: str, size: int = 5) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def answer_tokens(prompt: str) -> list[str]:
    """The scripted answer to ``prompt``, as tokens."""
    text = user_text(prompt)
    tail = prompt[-80:]
    if tail.endswith('{"name": "'):
        return _pieces('get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    if tail.endswith('"arguments": {"city":'):
        return _pieces(' "Paris"}}\n</tool_call>')
    if tail.endswith('"arguments": {}}'):
        return _pieces("\n</tool_call>")
    key = re.search(r'\{"(\w+)":$', tail)
    if key:
        return _pieces(' "' + text.replace('"', "'") + '"} and some chatter after it')
    if tail.endswith('{"'):
        return _pieces('answer": "' + text.replace('"', "'") + '"} and some chatter after it')
    count = re.search(r"count to (\d+)", text)
    if count:
        n = int(count.group(1))
        return ["1", *[f" {i}" for i in range(2, n + 1)]]
    if "<tools>" in prompt and "weather" in text.lower():
        # split inside the tag and the JSON, as a real tokenizer would
        return _pieces(WEATHER_CALL)
    words = f"You said: {text}".split(" ")
    return [words[0], *[f" {w}" for w in words[1:]]]


class ScriptedEngine:
    """An :class:`rkllm_core.Engine` with scripted answers and ``token_delay`` s per token."""

    def __init__(self, token_delay: float = 0.0, hidden_size: int = 16,
                 context_length: int = 2048, name: str = "scripted",
                 log_path: Path | None = None) -> None:
        self.info = EngineInfo(
            backend="pc", model_path=name, model_name=name, architecture="llama",
            context_length=context_length, hidden_size=hidden_size, vocab_size=0x110000,
            chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>",
        )
        self.tokenizer = CharTokenizer()
        self.token_delay = token_delay
        self.context_length = context_length
        self.log_path = log_path
        self.tokens_sent = 0
        self.aborted_runs = 0
        self.finished_runs: list[str] = []
        self.closed = False
        self._abort = threading.Event()
        self._running = threading.Event()
        rng = np.random.default_rng(0)
        self._table = rng.standard_normal((4096, hidden_size)).astype(np.float32)

    # --- Engine protocol -------------------------------------------------------------

    def run(self, request: Request, sink: Sink) -> None:
        self._abort.clear()
        self._running.set()
        try:
            if request.mode == InferMode.GENERATE:
                self._generate(request, sink)
            else:
                self._hidden(request, sink)
        except Exception as exc:
            sink.emit(ErrorEvent(exc))
        finally:
            self._running.clear()

    def _generate(self, request: Request, sink: Sink) -> None:
        item = request.input
        if isinstance(item, PromptInput):
            prompt = item.text
        elif isinstance(item, TokenInput):
            prompt = self.tokenizer.decode(item.ids)
        else:
            raise TypeError(f"unsupported input {type(item).__name__}")
        n_prompt = len(prompt)
        if n_prompt >= self.context_length:
            raise ContextLengthError(n_prompt, self.context_length)
        start = time.perf_counter()
        self._log(f"#start {user_text(prompt)}")
        sent, reason = 0, "stop"
        fail = re.search(r"fail after (\d+)", user_text(prompt))
        tokens = [f"t{i} " for i in range(int(fail.group(1)))] if fail else answer_tokens(prompt)
        for token in tokens:
            if sent >= request.sampling.max_new_tokens:
                reason = "length"
                break
            if self._abort.is_set():
                reason = "abort"
                break
            if self.token_delay:
                time.sleep(self.token_delay)
            sent += 1
            self.tokens_sent += 1
            if not sink.emit(TokenEvent(token, zlib.crc32(token.encode()) % 50000)):
                reason = "abort" if self._abort.is_set() else "stop"
                break
        if fail and reason == "stop":
            raise GenerationError(f"scripted failure after {sent} tokens")
        if reason == "abort":
            self.aborted_runs += 1
        else:
            self._record(user_text(prompt))
        elapsed = (time.perf_counter() - start) * 1000
        perf = PerfStats(prefill_tokens=n_prompt, decode_ms=elapsed, decode_tokens=sent)
        sink.emit(FinishEvent(reason, perf, prompt_tokens=n_prompt, completion_tokens=sent))

    def _record(self, text: str) -> None:
        self.finished_runs.append(text)
        self._log(text)

    def _log(self, line: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(line.replace("\n", " ") + "\n")

    def _hidden(self, request: Request, sink: Sink) -> None:
        item = request.input
        if isinstance(item, TokenBatchInput):
            sequences = item.sequences
        elif isinstance(item, TokenInput):
            sequences = (item.ids,)
        elif isinstance(item, PromptInput):
            sequences = (tuple(self.tokenizer.encode(item.text)),)
        else:
            raise TypeError(f"unsupported input {type(item).__name__}")
        for ids in sequences:
            rows = self._table[np.asarray(ids, dtype=np.int64) % len(self._table)]
            # each position sees the text so far, as a causal model's hidden state does
            hidden = np.cumsum(rows, axis=0) / np.arange(1, len(ids) + 1)[:, None]
            sink.emit(HiddenStateEvent(hidden.astype(np.float32)))
        sink.emit(FinishEvent("stop"))

    def abort(self) -> None:
        self._abort.set()

    def is_running(self) -> bool:
        return self._running.is_set()

    def clear_kv_cache(self, keep_system_prompt: bool = False, start_pos: object = None,
                       end_pos: object = None) -> None:
        pass

    def kv_cache_size(self) -> list[int]:
        return [0]

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        raise NotImplementedError

    def set_function_tools(self, system: str, tools_json: str, tool_response_str: str) -> None:
        raise NotImplementedError

    def load_lora(self, path: str, name: str, scale: float = 1.0) -> None:
        raise NotImplementedError

    def load_prompt_cache(self, path: str) -> None:
        raise NotImplementedError

    def release_prompt_cache(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._log("#closed")


def scripted_model(engine: ScriptedEngine, config: RuntimeConfig | None = None) -> RKLLMModel:
    """A real RKLLMModel whose engine is ``engine``."""
    return RKLLMModel.from_engine(engine, config or RuntimeConfig())


class ServerProcess:
    """A server in its own process: ``serve_scripted_server.py ARGS``, or any ``command``
    that prints ``listening on http://…`` (``rkllm serve … --port 0``)."""

    def __init__(self, *args: str, log: Path | None = None, command: list[str] | None = None,
                 ready_timeout: float = 30.0) -> None:
        if command is None:
            command = [sys.executable, str(HERE / "serve_scripted_server.py"), "--port", "0",
                       *args]
            if log is not None:
                command += ["--log", str(log)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
        self.log = log
        # a file, not a pipe: nobody reads stderr while the server runs, and a full pipe
        # would block the server
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"listening on (http://\S+)", line)
        if not found:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.stderr()}")
        self.root_url = found.group(1)
        self.base_url = self.root_url + "/v1"
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.root_url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready: {self.stderr()}")

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read()

    def rejected(self) -> int:
        """429s the server has answered (``/ready``)."""
        import httpx

        return int(httpx.get(self.root_url + "/ready", timeout=5).json()["rejected_total"])

    def finished(self) -> list[str]:
        """Answers the engine finished (its log), without the markers."""
        if self.log is None or not self.log.exists():
            return []
        return [x for x in self.log.read_text().splitlines() if not x.startswith("#")]

    def closed_model(self) -> bool:
        """Whether the engine was closed (the log's marker)."""
        return self.log is not None and "#closed" in self.log.read_text().splitlines()

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM (a drained shutdown), then kill past ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.stop()

    def stop(self) -> None:
        """Kill the process if it still runs; release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
        self._stderr.close()
