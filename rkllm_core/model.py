"""RKLLMModel: the one model API over both engines."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .cache import cache_dir
from .chat import ChatRenderer, Message, normalize_messages
from .config import EmbeddingConfig, RuntimeConfig, SamplingParams
from .conversation import Conversation, Turn
from .embeddings import Embedder, default_embedding_config
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
from .reply import ReplyAssembler, ReplyPlan, choose_tool, plan_reply, with_system_note
from .results import GenerationResult, Usage
from .retrieval.rerank import Ranked, query_likelihood, rank, scoring_sequences
from .streams import (
    AsyncTokenStream,
    CollectHandler,
    GenerationHandler,
    TokenStream,
    as_generation_error,
)

log = logging.getLogger(__name__)

Backend = Literal["auto", "npu", "pc"]
Prompt = str | Sequence[Message] | Sequence[int]


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
        config = config or RuntimeConfig()
        if not isinstance(config, RuntimeConfig):
            raise ConfigError("config must be a RuntimeConfig")
        path = _resolve_model(model)
        backend_name = _choose_backend(path, backend)
        self._attach(_make_engine(backend_name, path, config, engine_options), config, embedding)

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        config: RuntimeConfig | None = None,
        *,
        embedding: EmbeddingConfig | None = None,
    ) -> RKLLMModel:
        """A model over an engine built elsewhere (any object implementing :class:`Engine`).

        For engines outside this package, and for tests with a scripted engine.
        """
        model = cls.__new__(cls)
        model._attach(engine, config or RuntimeConfig(), embedding)
        return model

    def _attach(
        self, engine: Engine, config: RuntimeConfig, embedding: EmbeddingConfig | None
    ) -> None:
        self.config = config
        self._engine: Engine = engine
        self.info: EngineInfo = engine.info
        self.backend: Literal["npu", "pc"] = self.info.backend
        self.name = self.info.model_name
        self.embedding_config = embedding or default_embedding_config(self.info)
        self._worker = Worker(self._engine, self.name)
        has_tokenizer = engine.tokenizer is not None
        self._embedder = Embedder(
            self.tokenize if has_tokenizer else None,
            lambda seqs: self._run_collect(
                TokenBatchInput(tuple(seqs)), InferMode.LAST_HIDDEN_LAYER
            ),
            self.hidden_states,
            config.max_context_len,
            self._eos_ids() if has_tokenizer else (),
            adapter_dirs=(cache_dir() / "adapters",),
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self._conversation = Conversation()  # held in the KV cache (keep_history)
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
        return SamplingParams.merge(sampling, kwargs).resolve(self.config)

    def _prepare(
        self,
        prompt: Prompt,
        plan: ReplyPlan,
        *,
        keep_history: bool,
        add_generation_prompt: bool,
        enable_thinking: bool | None,
    ) -> tuple[RequestInput, Turn]:
        if isinstance(prompt, str):
            if keep_history:
                self._conversation.reset()
            return PromptInput(prompt + plan.prefill), Turn(prompt, None, keep_history)
        items = list(prompt)
        if not items:
            raise ConfigError("the prompt is empty")
        if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            if plan.mode != "plain":
                raise ConfigError(
                    "tools, tool_choice and response_format need a text or chat-message"
                    " prompt, not token ids"
                )
            return TokenInput(tuple(int(x) for x in items)), Turn(None, None, keep_history)
        messages = with_system_note(normalize_messages(items), plan.system_note)
        if not self.info.raw_prompt:
            # the runtime applies its own template (set_chat_template): it takes the turn's
            # text only, and keeps earlier turns itself when keep_history is on
            if plan.prefill:
                raise ConfigError(
                    "a forced tool_choice or response_format writes the start of the answer,"
                    " which a runtime-rendered template (set_chat_template) does not allow"
                )
            last = messages[-1]
            role = "tool" if last["role"] == "tool" else "user"
            return PromptInput(last["content"]), Turn(None, None, keep_history, role)
        if keep_history and not self.info.supports_keep_history:
            # the runtime cannot keep a conversation (family 1.1): send it whole every turn
            keep_history = False

        def render(conversation: list[dict]) -> str:
            return self.render_chat(
                conversation, tools=plan.render_tools or None,
                add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking,
            )

        if not keep_history:
            text = render(messages) + plan.prefill
            return PromptInput(text), Turn(text, messages, False)
        # multi-turn: the KV cache holds the conversation so far; send only what is new
        text, turn = self._conversation.prepare(
            messages, render, lambda: self._engine.kv_cache_size()[0],
            self._clear_engine_cache, plan.prefill,
        )
        return PromptInput(text), turn

    def _complete(
        self, turn: Turn, handler: GenerationHandler, event: FinishEvent
    ) -> tuple[GenerationResult, str]:
        generated = handler.text
        reply = handler.assembler.finish(generated, event.reason)
        self._conversation.record(
            turn, reply, generated, event.reason,
            # a forced call / JSON object cut short by us: the cache holds more than the text
            handler.stopped_by_string or handler.assembler.complete,
            self.info.eos_token or "",
        )
        prompt_tokens = event.prompt_tokens or event.perf.prefill_tokens
        token_ids = tuple(handler.token_ids)
        completion = event.completion_tokens or event.perf.decode_tokens or len(token_ids)
        result = GenerationResult(
            text=reply.text,
            token_ids=token_ids,
            finish_reason=reply.finish_reason,
            usage=Usage(prompt_tokens, completion),
            perf=event.perf,
            model=self.name,
            tool_calls=reply.tool_calls,
            invalid_tool_calls=reply.invalid_tool_calls,
            content=reply.content,
        )
        return result, reply.extra_content

    def _submit_generation(
        self, prompt: Prompt, sampling: SamplingParams | None, channel_factory: Any,
        options: dict[str, Any], kwargs: dict[str, Any],
    ) -> tuple[Any, Any, Any, Any]:
        self._check_open()
        timeout = options.pop("timeout")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        params = self._sampling(sampling, kwargs)
        plan = plan_reply(options.pop("tools"), options.pop("tool_choice"),
                          options.pop("response_format"))
        role, lora_adapter = options.pop("role"), options.pop("lora_adapter")
        enable_thinking = options["enable_thinking"]
        item, turn = self._prepare(prompt, plan, **options)
        if (plan.mode == "forced" and plan.forced_name is None and len(plan.tool_names) > 1
                and self.info.supports_logits and not turn.keep_history
                and isinstance(item, PromptInput)):
            # "any" tool: let the model's own logits pick among the bound names, then
            # force that one, so a forced call can never name a tool that was not bound
            name = choose_tool(item.text, plan.tool_names, self.tokenize, self.logits)
            plan = plan_reply(plan.render_tools, name)
            item, turn = self._prepare(prompt, plan, **options)
        request = Request(
            input=item, sampling=params, mode=InferMode.GENERATE, keep_history=turn.keep_history,
            role=turn.role or role, enable_thinking=bool(enable_thinking),
            lora_adapter=lora_adapter,
        )
        channel, deliver = channel_factory()
        handler = GenerationHandler(deliver, params.stop, ReplyAssembler(plan))
        job = Job(request, handler, timeout=timeout)
        self._worker.submit(job)
        worker, conversation = self._worker, self._conversation
        return (
            channel,
            lambda: worker.cancel(job),
            lambda event: self._complete(turn, handler, event),
            lambda: conversation.failed(turn),
        )

    def stream(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        keep_history: bool = False,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        role: str = "user",
        lora_adapter: str | None = None,
        **sampling_kwargs: Any,
    ) -> TokenStream:
        """Stream the reply to a text prompt, chat messages or token ids.

        Chat messages (``[{"role": "user", "content": …}]``) are rendered with the model's
        own chat template; a string is sent as is. ``sampling_kwargs`` are
        :class:`SamplingParams` fields (temperature, top_k, stop, max_new_tokens or
        max_tokens, seed …). With ``keep_history=True`` the conversation stays in the KV
        cache for the next call.

        The reply (decided here for every framework, see :mod:`rkllm_core.reply`):

        - ``tools``: OpenAI-style tool dicts (``{"type": "function", "function": {"name",
          "description", "parameters"}}``), rendered by the chat template (or described in the
          system turn when it has no tools support). Calls come back parsed in
          ``result.tool_calls``; their markup is never streamed as content.
        - ``tool_choice``: ``None``/``'auto'``, ``'none'``, ``'any'``/``'required'``/``True``
          or a tool name / ``{'type': 'function', 'function': {'name': …}}``. A forced call is
          started for the model (prefill) and generation stops when the call is whole; a call
          of a tool that was not bound is an invalid call, never a valid one.
        - ``response_format``: ``{'type': 'json_object'}`` or ``{'type': 'json_schema',
          'schema': {…}}`` (or OpenAI's ``'json_schema': {'schema': …}``): the answer is
          started as a JSON object and ends when the object closes.
        - ``timeout``: seconds from this call, queue time included. A request whose deadline
          passes while it waits never runs; a running one is aborted at the deadline. Either
          way the stream raises :class:`~rkllm_core.errors.RequestTimeoutError`.

        The chunks are the reply's content as it may be shown; :attr:`TokenStream.result` is
        the :class:`GenerationResult` (text, content, tool calls, finish reason, usage, perf).
        """
        channel, cancel, complete, fail = self._submit_generation(
            prompt, sampling, thread_channel, _options(locals()), sampling_kwargs
        )
        return TokenStream(channel, cancel, complete, fail)

    def generate(self, prompt: Prompt, sampling: SamplingParams | None = None,
                 **kwargs: Any) -> GenerationResult:
        """:meth:`stream`, collected: the same arguments, the :class:`GenerationResult`."""
        return self.stream(prompt, sampling, **kwargs).result

    def astream(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        keep_history: bool = False,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        role: str = "user",
        lora_adapter: str | None = None,
        **sampling_kwargs: Any,
    ) -> AsyncTokenStream:
        """:meth:`stream` as an async iterator; must be called inside a running loop."""
        loop = asyncio.get_running_loop()
        channel, cancel, complete, fail = self._submit_generation(
            prompt, sampling, lambda: async_channel(loop), _options(locals()), sampling_kwargs
        )
        return AsyncTokenStream(channel, cancel, complete, fail)

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
        self._conversation.reset()

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
        progress: Callable[[int], object] | None = None,
        **overrides: Any,
    ) -> np.ndarray:
        """Embeddings of ``texts``, shape (n, dim), float32: dim is the hidden size, or the
        output size of the model's embedding adapter when one applies.

        ``overrides`` are :class:`EmbeddingConfig` fields (strategy, pooling, normalize,
        query_instruction, batch_size …). ``is_query`` prefixes the query instruction.
        """
        cfg = (config or self.embedding_config).with_overrides(overrides)
        items = [texts] if isinstance(texts, str) else list(texts)
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise ConfigError(f"text {index} is {type(text).__name__}, not str")
            require_text(text, f"text {index}")
        if not items:
            return np.zeros((0, self.embedding_dimension(cfg) or 0), dtype=np.float32)
        return self._embedder.embed(items, cfg, is_query, progress)

    def embedding_dimension(
        self, config: EmbeddingConfig | None = None, **overrides: Any
    ) -> int | None:
        """Length of the vectors :meth:`embed` returns under this configuration: the output
        size of the model's embedding adapter when one applies, else the hidden size."""
        cfg = (config or self.embedding_config).with_overrides(overrides)
        adapter = self._embedder.adapter_for(cfg)
        return int(adapter.matrix.shape[1]) if adapter is not None else self.info.hidden_size

    @property
    def embedder(self) -> Embedder:
        """The model's :class:`~rkllm_core.embeddings.Embedder` (features and fingerprint for
        fitting an embedding adapter: benchmarks/fit_embedding_adapter.py)."""
        return self._embedder

    def _eos_ids(self) -> list[int]:
        eos = self.info.eos_token
        return self.tokenize(eos) if eos else []

    def batch_logits(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Logits of every position of each token sequence, one run for the batch."""
        batch = TokenBatchInput(tuple(tuple(int(t) for t in seq) for seq in sequences))
        return self._run_collect(batch, InferMode.LOGITS)

    def rerank(
        self, query: str, passages: Sequence[str], *, top_n: int | None = None,
        batch_size: int = 4,
    ) -> list[Ranked]:
        """Passages ranked by relevance to ``query``, best first (the first ``top_n``).

        The score is the mean log-probability of the query's tokens given the passage
        (:mod:`rkllm_core.retrieval.rerank`); it uses the logits mode, so it runs on the NPU.
        Cost: one forward over each passage plus the query.
        """
        require_text(query, "query")
        if not passages:
            return []
        pairs = scoring_sequences(
            query, list(passages), self.tokenize, self.config.max_context_len
        )
        return rank(query_likelihood(pairs, self.batch_logits, batch_size), top_n)

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


_OPTION_NAMES = ("tools", "tool_choice", "response_format", "timeout", "keep_history",
                 "add_generation_prompt", "enable_thinking", "role", "lora_adapter")


def _options(call_locals: dict[str, Any]) -> dict[str, Any]:
    """The request options of a stream/astream call (everything but prompt and sampling)."""
    return {name: call_locals[name] for name in _OPTION_NAMES}


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


__all__ = ["RKLLMModel"]
