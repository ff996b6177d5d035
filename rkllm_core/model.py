"""RKLLMModel: the one model API over both engines."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .chat import ChatRenderer, Message, normalize_messages
from .config import EmbeddingConfig, RuntimeConfig, SamplingParams
from .embeddings import (
    EmbeddingSequence,
    build_sequence,
    default_embedding_config,
    effective_pooling,
    l2_normalize,
    pool,
)
from .engine import (
    Engine,
    EngineInfo,
    ErrorEvent,
    FinishEvent,
    HiddenStateEvent,
    InferMode,
    LogitsEvent,
    PromptInput,
    Request,
    RequestInput,
    TokenBatchInput,
    TokenInput,
    require_text,
)
from .errors import ConfigError, EngineUnavailableError, GenerationError, ModelClosedError
from .queueing import Job, Worker, async_channel, thread_channel
from .results import GenerationResult, Usage
from .streams import (
    AsyncTokenStream,
    CollectHandler,
    GenerationHandler,
    TokenStream,
    Turn,
    as_generation_error,
)
from .tools import parse_tool_calls

log = logging.getLogger(__name__)

Backend = Literal["auto", "npu", "pc"]
Prompt = str | Sequence[Message] | Sequence[int]

_SAMPLING_FIELDS = set(SamplingParams.model_fields)


# --- the model --------------------------------------------------------------------------------


class RKLLMModel:
    """A loaded model on the NPU (``.rkllm`` files) or the PC engine (everything else).

    One request runs at a time; concurrent callers (threads, asyncio tasks) queue in order
    and each gets its own output. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        config: RuntimeConfig | None = None,
        *,
        backend: Backend = "auto",
        embedding: EmbeddingConfig | None = None,
        **engine_options: Any,
    ) -> None:
        self.config = config or RuntimeConfig()
        if not isinstance(self.config, RuntimeConfig):
            raise ConfigError("config must be a RuntimeConfig")
        path = _resolve_model(model)
        self.backend: Literal["npu", "pc"] = _choose_backend(path, backend)
        self._engine: Engine = _make_engine(self.backend, path, self.config, engine_options)
        self.info: EngineInfo = self._engine.info
        self.name = self.info.model_name
        self.embedding_config = embedding or default_embedding_config(
            self.info.architecture, self.name
        )
        self._worker = Worker(self._engine, self.name)
        self._closed = False
        self._close_lock = threading.Lock()
        self._history: list[dict] = []  # conversation held in the KV cache (keep_history)
        self._cached_text: str | None = None  # its rendered text, to send only the new part
        self._finalizer = weakref.finalize(self, _shutdown, self._worker, self._engine)

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop queued and running requests and release the model; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __enter__(self) -> RKLLMModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError(f"model {self.name!r} is closed; create a new RKLLMModel")

    # --- chat rendering and tokens -----------------------------------------------------

    @property
    def renderer(self) -> ChatRenderer:
        """The chat renderer built from the model's own template."""
        return ChatRenderer(
            self.info.chat_template,
            self.info.template_parts,
            self.info.bos_token,
            self.info.eos_token,
        )

    def render_chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
    ) -> str:
        """The prompt text the model sees for ``messages`` (its own chat template)."""
        return self.renderer.render(
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
        )

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, or None when the engine has none."""
        return self._engine.tokenizer

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` with the model's tokenizer."""
        tok = self._engine.tokenizer
        if tok is None:
            raise ConfigError(
                "this model has no tokenizer available; pass tokenizer=<HF tokenizer dir>"
            )
        require_text(text, "the text")
        return list(tok.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids."""
        tok = self._engine.tokenizer
        if tok is None:
            raise ConfigError("this model has no tokenizer available")
        return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def count_tokens(self, prompt: str | Sequence[Message]) -> int:
        """Tokens of a text, or of a conversation rendered with the chat template."""
        if isinstance(prompt, str):
            return len(self.tokenize(prompt))
        return len(self.tokenize(self.render_chat(prompt)))

    # --- generation --------------------------------------------------------------------

    def _sampling(self, sampling: SamplingParams | None, kwargs: dict[str, Any]) -> Any:
        unknown = set(kwargs) - _SAMPLING_FIELDS
        if unknown:
            raise ConfigError(
                f"unknown sampling argument(s) {sorted(unknown)}; valid: {sorted(_SAMPLING_FIELDS)}"
            )
        base = sampling or SamplingParams()
        if kwargs:
            base = base.model_copy(update=SamplingParams(**kwargs).model_dump(exclude_unset=True))
        return base.resolve(self.config)

    def _prepare(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[Mapping[str, Any]] | None,
        keep_history: bool,
        add_generation_prompt: bool,
        enable_thinking: bool | None,
    ) -> tuple[RequestInput, Turn]:
        if isinstance(prompt, str):
            if keep_history:
                self._history, self._cached_text = [], None
            return PromptInput(prompt), Turn(prompt, None, keep_history, bool(tools))
        items = list(prompt)
        if not items:
            raise ConfigError("the prompt is empty")
        if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            return TokenInput(tuple(int(x) for x in items)), Turn(None, None, keep_history, False)
        messages = normalize_messages(items)
        if self.info.extra.get("raw_prompt") is False:
            # the runtime applies its own template (set_chat_template): it takes the turn's
            # text only, and keeps earlier turns itself when keep_history is on
            last = messages[-1]
            role = "tool" if last["role"] == "tool" else "user"
            return PromptInput(last["content"]), Turn(None, None, keep_history, bool(tools), role)
        if keep_history and self.info.extra.get("supports_keep_history") is False:
            # the runtime cannot keep a conversation (family 1.1): send it whole every turn
            keep_history = False
        if not keep_history:
            text = self.render_chat(
                messages, tools=tools, add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
            )
            return PromptInput(text), Turn(text, messages, False, bool(tools))
        # multi-turn: the KV cache holds the conversation so far; send only what is new
        history = self._history
        new = messages[len(history):] if messages[: len(history)] == history else messages
        conversation = history + new
        full = self.render_chat(
            conversation, tools=tools, add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
        )
        cached = self._cached_text
        if cached and full.startswith(cached) and self._engine.kv_cache_size()[0] > 0:
            text = full[len(cached):]
        else:
            if self._engine.kv_cache_size()[0] > 0:
                self._clear_engine_cache()
            text = full
        return PromptInput(text), Turn(full, conversation, True, bool(tools))

    def _finish_turn(
        self,
        ctx: Turn,
        text: str,
        token_ids: tuple[int, ...],
        event: FinishEvent,
        stopped_by_string: bool = False,
    ) -> GenerationResult:
        content, calls, invalid = (text, [], [])
        if ctx.parse_tools:
            content, calls, invalid = parse_tool_calls(text)
        if ctx.keep_history and ctx.messages is not None and ctx.prompt_text is not None:
            assistant: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                assistant["tool_calls"] = [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls
                ]
            self._history = [*ctx.messages, assistant]
            if stopped_by_string or event.reason == "abort":
                # the cache holds tokens the text does not show: re-send the whole
                # conversation next turn rather than guess what the cache holds
                self._cached_text = None
            else:
                ended_by_eos = event.reason == "stop"
                eos = (self.info.eos_token or "") if ended_by_eos else ""
                self._cached_text = ctx.prompt_text + text + eos
        prompt_tokens = event.prompt_tokens or event.perf.prefill_tokens
        completion = event.completion_tokens or event.perf.decode_tokens or len(token_ids)
        return GenerationResult(
            text=text,
            token_ids=token_ids,
            finish_reason=event.reason,
            usage=Usage(prompt_tokens, completion),
            perf=event.perf,
            model=self.name,
            tool_calls=tuple(calls),
            invalid_tool_calls=tuple(invalid),
            content=content,
        )

    def _turn_failed(self, ctx: Turn) -> None:
        if ctx.keep_history:
            self._history, self._cached_text = [], None

    def _submit_generation(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None,
        channel_factory: Any,
        *,
        tools: Sequence[Mapping[str, Any]] | None,
        keep_history: bool,
        add_generation_prompt: bool,
        enable_thinking: bool | None,
        role: str,
        lora_adapter: str | None,
        kwargs: dict[str, Any],
    ) -> tuple[Job, GenerationHandler, Turn, Any]:
        self._check_open()
        params = self._sampling(sampling, kwargs)
        item, ctx = self._prepare(
            prompt, tools=tools, keep_history=keep_history,
            add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking,
        )
        request = Request(
            input=item, sampling=params, mode=InferMode.GENERATE, keep_history=ctx.keep_history,
            role=ctx.role or role, enable_thinking=bool(enable_thinking),
            lora_adapter=lora_adapter,
        )
        channel, deliver = channel_factory()
        handler = GenerationHandler(deliver, params.stop)
        job = Job(request, handler)
        self._worker.submit(job)
        return job, handler, ctx, channel

    def stream(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        keep_history: bool = False,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        role: str = "user",
        lora_adapter: str | None = None,
        **sampling_kwargs: Any,
    ) -> TokenStream:
        """Stream the answer to a text prompt, chat messages or token ids.

        Chat messages (``[{"role": "user", "content": …}]``) are rendered with the model's
        own chat template; a string is sent as is. ``sampling_kwargs`` are
        :class:`SamplingParams` fields (temperature, top_k, stop, max_new_tokens, seed …).
        With ``keep_history=True`` the conversation stays in the KV cache for the next call.
        """
        job, handler, ctx, channel = self._submit_generation(
            prompt, sampling, thread_channel, tools=tools, keep_history=keep_history,
            add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking,
            role=role, lora_adapter=lora_adapter, kwargs=sampling_kwargs,
        )
        return TokenStream(self, job, handler, ctx, channel)

    def generate(self, prompt: Prompt, sampling: SamplingParams | None = None,
                 **kwargs: Any) -> GenerationResult:
        """:meth:`stream`, collected: text, token ids, usage, perf and parsed tool calls."""
        return self.stream(prompt, sampling, **kwargs).result

    def astream(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        keep_history: bool = False,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        role: str = "user",
        lora_adapter: str | None = None,
        **sampling_kwargs: Any,
    ) -> AsyncTokenStream:
        """Like :meth:`stream`, as an async iterator; must be called inside a running loop."""
        loop = asyncio.get_running_loop()
        job, handler, ctx, channel = self._submit_generation(
            prompt, sampling, lambda: async_channel(loop), tools=tools,
            keep_history=keep_history, add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking, role=role, lora_adapter=lora_adapter,
            kwargs=sampling_kwargs,
        )
        return AsyncTokenStream(self, job, handler, ctx, channel)

    async def agenerate(self, prompt: Prompt, sampling: SamplingParams | None = None,
                        **kwargs: Any) -> GenerationResult:
        """Async :meth:`generate`."""
        return await self.astream(prompt, sampling, **kwargs).aresult()

    def abort(self) -> None:
        """Abort the request running now (whoever submitted it). Streams have their own abort."""
        self._worker.abort_current()

    def clear_kv_cache(self, keep_system_prompt: bool = False) -> None:
        """Forget the multi-turn conversation (waits for running requests to finish)."""
        self._check_open()
        self._clear_engine_cache(keep_system_prompt)
        self._history, self._cached_text = [], None

    def _clear_engine_cache(self, keep_system_prompt: bool = False) -> None:
        self._worker.run_call(lambda: self._engine.clear_kv_cache(keep_system_prompt))

    def kv_cache_size(self) -> list[int]:
        """Tokens held in the KV cache per batch slot."""
        return self._engine.kv_cache_size()

    def _call_on_worker(self, fn: Any) -> Any:
        """Run an engine call in queue order, so it never overlaps a request."""
        self._check_open()
        return self._worker.run_call(fn)

    # --- hidden states, logits, embeddings ------------------------------------------------

    def _run_collect(self, item: RequestInput, mode: InferMode) -> list[np.ndarray]:
        self._check_open()
        request = Request(input=item, sampling=self._sampling(None, {}), mode=mode)
        channel, deliver = thread_channel()
        job = Job(request, CollectHandler(deliver))
        self._worker.submit(job)
        arrays: list[np.ndarray] = []
        try:
            while True:
                event = channel.get()
                if isinstance(event, HiddenStateEvent):
                    arrays.append(event.hidden)
                elif isinstance(event, LogitsEvent):
                    arrays.append(event.logits)
                elif isinstance(event, ErrorEvent):
                    raise as_generation_error(event.error)
                elif isinstance(event, FinishEvent):
                    if event.reason == "abort":
                        raise GenerationError("the request was aborted")
                    return arrays
        except BaseException:
            self._worker.cancel(job)
            raise

    def _input_of(self, prompt: str | Sequence[int]) -> RequestInput:
        if isinstance(prompt, str):
            return PromptInput(prompt)
        return TokenInput(tuple(int(t) for t in prompt))

    def logits(self, prompt: str | Sequence[int]) -> np.ndarray:
        """Logits of every position, shape (tokens, vocab)."""
        return self._run_collect(self._input_of(prompt), InferMode.LOGITS)[0]

    def hidden_states(self, prompt: str | Sequence[int]) -> np.ndarray:
        """Last hidden layer (after the final norm), shape (tokens, hidden)."""
        return self._run_collect(self._input_of(prompt), InferMode.LAST_HIDDEN_LAYER)[0]

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        is_query: bool = False,
        config: EmbeddingConfig | None = None,
        **overrides: Any,
    ) -> np.ndarray:
        """Embeddings of ``texts``, shape (n, hidden), float32.

        ``overrides`` are :class:`EmbeddingConfig` fields (strategy, pooling, normalize,
        query_instruction, batch_size …). ``is_query`` prefixes the query instruction.
        """
        cfg = config or self.embedding_config
        if overrides:
            unknown = set(overrides) - set(EmbeddingConfig.model_fields)
            if unknown:
                raise ConfigError(f"unknown embedding option(s) {sorted(unknown)}")
            cfg = EmbeddingConfig(**{**cfg.model_dump(), **overrides})
        items = [texts] if isinstance(texts, str) else list(texts)
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise ConfigError(f"text {index} is {type(text).__name__}, not str")
            require_text(text, f"text {index}")
        hidden = self.info.hidden_size or 0
        if not items:
            return np.zeros((0, hidden), dtype=np.float32)
        prefix = cfg.query_instruction if is_query else ""
        limit = min(cfg.max_tokens or self.config.max_context_len, self.config.max_context_len)
        if self._engine.tokenizer is None:
            return self._embed_without_tokenizer(items, prefix, cfg)
        seqs = [build_sequence(prefix + t, cfg, self.tokenize, limit) for t in items]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))  # less padding
        vectors: list[np.ndarray | None] = [None] * len(seqs)
        pooling = effective_pooling(cfg)
        for batch_idx in chunked_indices(order, cfg.batch_size):
            batch: list[EmbeddingSequence] = [seqs[i] for i in batch_idx]
            states = self._run_collect(
                TokenBatchInput(tuple(s.ids for s in batch)), InferMode.LAST_HIDDEN_LAYER
            )
            for i, seq, state in zip(batch_idx, batch, states, strict=True):
                vectors[i] = pool(state, seq, pooling)
        out = np.stack([v for v in vectors if v is not None]).astype(np.float32)
        return l2_normalize(out) if cfg.normalize else out

    def _embed_without_tokenizer(
        self, items: list[str], prefix: str, cfg: EmbeddingConfig
    ) -> np.ndarray:
        rows = []
        for text in items:
            body = prefix + text
            if cfg.strategy == "prompteol":
                body = cfg.prompteol_template.format(text=body)
            state = self.hidden_states(body)
            rows.append(state[-1] if cfg.strategy == "prompteol" else
                        pool(state, EmbeddingSequence((), 0, len(state)), cfg.pooling))
        out = np.stack(rows).astype(np.float32)
        return l2_normalize(out) if cfg.normalize else out

    async def aembed(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Async :meth:`embed` (runs off the event loop)."""
        return await asyncio.to_thread(self.embed, texts, **kwargs)

    # --- engine features passed through ---------------------------------------------------

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        """Replace the chat template with the runtime's system/prefix/postfix form."""
        self._call_on_worker(lambda: self._engine.set_chat_template(system, prefix, postfix))

    def set_function_tools(self, system: str, tools_json: str, tool_response_str: str) -> None:
        """Give the runtime OpenAI-style tools for its own template (NPU runtime 1.2.1+).

        Only used when the runtime renders prompts itself (after :meth:`set_chat_template`);
        otherwise pass ``tools=`` to :meth:`stream`, which renders them with the model's
        template.
        """
        self._call_on_worker(
            lambda: self._engine.set_function_tools(system, tools_json, tool_response_str)
        )

    def load_prompt_cache(self, path: str) -> None:
        """Restore a prompt cache saved by an earlier run."""
        self._call_on_worker(lambda: self._engine.load_prompt_cache(path))

    def release_prompt_cache(self) -> None:
        """Drop a restored prompt cache."""
        self._call_on_worker(self._engine.release_prompt_cache)

    def load_lora(self, path: str, name: str, scale: float = 1.0) -> None:
        """Load a LoRA adapter; select it per call with ``lora_adapter=name``."""
        self._call_on_worker(lambda: self._engine.load_lora(path, name, scale))

    def __repr__(self) -> str:
        return f"RKLLMModel({self.info.model_path!r}, backend={self.backend!r})"


def chunked_indices(order: list[int], size: int) -> list[list[int]]:
    """Split an index list into batches of at most ``size``."""
    return [order[i : i + size] for i in range(0, len(order), size)]


# --- construction helpers -------------------------------------------------------------------


def _resolve_model(model: str | os.PathLike[str]) -> Path:
    from .demo_models import KNOWN_MODELS, fetch_model

    text = os.fspath(model)
    path = Path(text).expanduser()
    if not path.exists() and text.lower() in KNOWN_MODELS:
        return fetch_model(text.lower())
    return path


def _choose_backend(path: Path, backend: Backend) -> Literal["npu", "pc"]:
    if backend not in ("auto", "npu", "pc"):
        raise ConfigError(f"backend must be 'auto', 'npu' or 'pc', not {backend!r}")
    is_rkllm = path.suffix.lower() == ".rkllm"
    if backend == "auto":
        return "npu" if is_rkllm else "pc"
    if backend == "npu" and not is_rkllm and path.exists():
        raise ConfigError(
            f"the NPU engine runs .rkllm files; {path.name} is not one. Convert it with"
            f" `rkllm convert` on a PC (Rockchip's toolkit), or use backend='pc'"
        )
    return backend


def _make_engine(backend: str, path: Path, config: RuntimeConfig, options: dict) -> Engine:
    if backend == "npu":
        from .npu.engine import NPUEngine

        _check_options(NPUEngine, "npu", options)
        return NPUEngine(str(path), config, **options)
    try:
        from .pc.engine import PCEngine
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the PC engine needs torch and transformers ({exc.name} is missing):"
            f" pip install 'rkllm-py[pc]'"
        ) from exc
    _check_options(PCEngine, "pc", options)
    return PCEngine(path, config, **options)


def _check_options(engine: type, backend: str, options: dict) -> None:
    """Unknown engine options are a ConfigError listing the valid ones, not a TypeError."""
    params = inspect.signature(engine.__init__).parameters.values()
    valid = sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for the {backend} engine; valid: {valid}"
            f" (sampling and runtime settings go in RuntimeConfig / SamplingParams)"
        )


def _shutdown(worker: Worker, engine: Engine) -> None:
    try:
        worker.close()
    finally:
        engine.close()


_SHARED: dict[tuple, RKLLMModel] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(
    model: str | os.PathLike[str],
    config: RuntimeConfig | None = None,
    *,
    backend: Backend = "auto",
    **engine_options: Any,
) -> RKLLMModel:
    """One loaded model per (file, backend, config) for the whole process.

    The LangChain and LlamaIndex classes use this, so a chat model and an embedding model
    that point at the same file share one copy in memory.
    """
    cfg = config or RuntimeConfig()
    path = _resolve_model(model)
    key = (
        str(path.resolve()) if path.exists() else str(model),
        backend,
        cfg.model_dump_json(),
        tuple(sorted((k, repr(v)) for k, v in engine_options.items())),
    )
    with _SHARED_LOCK:
        existing = _SHARED.get(key)
        if existing is not None and not existing.closed:
            return existing
        loaded = RKLLMModel(path, cfg, backend=backend, **engine_options)
        _SHARED[key] = loaded
        return loaded


__all__ = ["RKLLMModel", "shared_model"]
