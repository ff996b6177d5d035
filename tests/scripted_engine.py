"""A pure-Python engine (no torch, no C library) that answers with scripted token pieces.

It implements the core's ``Engine`` protocol, so a real :class:`rkllm_core.RKLLMModel` runs
over it: the queue, the reply planning and assembly, stop strings and deadlines are the real
ones, and only the model's words are fixed. The LangChain and LlamaIndex suites share it
through the ``scripted_model`` fixture, so both frameworks read the same model outputs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from rkllm_core import EngineInfo, PerfStats, RKLLMModel, RuntimeConfig
from rkllm_core.engine import FinishEvent, PromptInput, Request, Sink, TokenEvent

# Renders the conversation and tools as JSON, so a test can read exactly what the model saw.
TOOLS_TEMPLATE = (
    "{{ {'messages': messages, 'tools': tools or []} | tojson }}\n"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# A ChatML template without tools support (like SmolLM2's): tools go to the system turn.
PLAIN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ScriptedEngine:
    """Answers every request with the next scripted answer (the last one repeats).

    ``prefill_s`` simulates a slow prefill (interruptible by ``abort``, as the NPU's is);
    ``token_s`` is the time per token.
    """

    def __init__(
        self,
        answers: Sequence[Sequence[str]] = (("Hello", " world", "."),),
        *,
        chat_template: str | None = TOOLS_TEMPLATE,
        name: str = "scripted",
        prefill_s: float = 0.0,
        token_s: float = 0.0,
    ) -> None:
        self.info = EngineInfo(
            backend="pc",
            model_path=name,
            model_name=name,
            chat_template=chat_template,
            eos_token="<|im_end|>",
            context_length=4096,
        )
        self.tokenizer = None
        self.answers = [list(a) for a in answers]
        self.requests: list[Request] = []
        self.started: list[float] = []
        self.prefill_s = prefill_s
        self.token_s = token_s
        self._abort = threading.Event()
        self._running = threading.Event()
        self.closed = False

    def script(self, *answers: Sequence[str]) -> None:
        """Replace the answers (each a list of token pieces)."""
        self.answers = [list(a) for a in answers]

    @property
    def prompts(self) -> list[Any]:
        """The prompt text of every request so far."""
        return [r.input.text if isinstance(r.input, PromptInput) else r.input
                for r in self.requests]

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when aborted meanwhile."""
        return self._abort.wait(seconds) if seconds > 0 else self._abort.is_set()

    def run(self, request: Request, sink: Sink) -> None:
        self._abort.clear()
        self._running.set()
        self.requests.append(request)
        self.started.append(time.monotonic())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        prompt_tokens = len(str(self.prompts[-1]).split())
        try:
            if self._wait(self.prefill_s):
                sink.emit(FinishEvent("abort", prompt_tokens=prompt_tokens))
                return
            limit = request.sampling.max_new_tokens
            reason = "stop"
            count = 0
            for index, piece in enumerate(answer):
                if count >= limit:
                    reason = "length"
                    break
                count += 1
                if not sink.emit(TokenEvent(piece, index)):
                    break
                if self._wait(self.token_s):
                    reason = "abort"
                    break
            sink.emit(FinishEvent(
                reason,  # type: ignore[arg-type]
                PerfStats(1.0, prompt_tokens, 1.0, count, 0.0),
                prompt_tokens=prompt_tokens,
                completion_tokens=count,
            ))
        finally:
            self._running.clear()

    def abort(self) -> None:
        if self._running.is_set():
            self._abort.set()

    def is_running(self) -> bool:
        return self._running.is_set()

    def clear_kv_cache(self, keep_system_prompt: bool = False, start_pos: Any = None,
                       end_pos: Any = None) -> None:
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
        self.closed = True


def scripted_model(*answers: Sequence[str], **options: Any) -> tuple[RKLLMModel, ScriptedEngine]:
    """A real RKLLMModel over a :class:`ScriptedEngine` (greedy defaults)."""
    engine = ScriptedEngine(answers or (("Hello", " world", "."),), **options)
    return RKLLMModel.from_engine(engine, RuntimeConfig()), engine
