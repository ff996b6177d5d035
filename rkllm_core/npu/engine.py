"""NPUEngine: Rockchip's ``librkllmrt.so`` behind the :class:`rkllm_core.engine.Engine` seam.

One instance owns one runtime handle. ``run`` has the ABI structs of the detected layout filled
(:mod:`.structs`), calls ``rkllm_run`` (or ``rkllm_run_async``, waits for FINISH and for the
runtime's task to end when ``is_async``) and turns the runtime's callbacks into events
(:mod:`.callback`); the handle's lifetime is :mod:`.handle`'s. This module holds the policy:
what each family can do, what is refused, warned about or emulated.

Behaviour that differs by runtime family (what the runtime cannot do is never faked silently):

* **Prompts.** The model layer renders chat templates itself, so on 1.2.0+ the engine puts the
  runtime in raw-prompt mode at init (``rkllm_set_chat_template(h, "", "", "")``) until the
  user calls :meth:`NPUEngine.set_chat_template`. Family 1.1 has no such call and always wraps
  text prompts in the model's built-in template: there the engine sends prompts as token ids
  (token input bypasses the template) when a tokenizer is available, and warns otherwise.
  ``info.raw_prompt`` says whether prompts reach the model unchanged.
* **Sampling.** 1.3 takes every sampling field and ``max_new_tokens`` per run
  (``RKLLMSamplingParam``). Older families take sampling only at ``rkllm_init``: per-call
  values that differ from the :class:`RuntimeConfig` are ignored with one warning per engine
  (re-initialising would reload the model); a smaller per-call ``max_new_tokens`` is enforced
  here by stopping the run (reason ``"length"``), a larger one is capped with a warning.
  ``seed`` has no runtime counterpart and is ignored.
* **Stopping.** On 1.2.1+ a stop (sink returned False, limit, callback error) pauses through
  the callback's return value (1), within the same token. 1.1/1.2.0 callbacks return void:
  ``rkllm_abort`` is called from a helper thread (not from inside the runtime's own callback,
  which may deadlock) and the tokens delivered meanwhile are dropped. :meth:`NPUEngine.abort`
  calls ``rkllm_abort`` directly. A run that gets no FINISH after a stop is ended by the engine
  after a grace period.
* **History.** 1.1 has no ``keep_history`` (every run starts empty; ``info.supports_keep_history``
  is False) and no ``rkllm_clear_kv_cache`` (clearing is a no-op).
  1.2.0 clears the whole cache only; 1.2.1+ also clears per-batch ranges.
* **Features by family.** logits mode from 1.2.0; role / enable_thinking, perf stats, function
  tools, kv cache size, cross attention from 1.2.1; per-run sampling and the 1.3 callback
  struct from 1.3. A feature the family lacks raises :class:`UnsupportedFeatureError`; an init
  field it lacks (``n_keep`` on 1.1, ``n_batch`` before 1.2.1 …) is ignored with a warning.
* **Usage.** ``prompt_tokens`` / ``completion_tokens`` come from the runtime's perf stats on
  1.2.1+, otherwise from counting (token input length, the tokenizer for text, callbacks).
* **Batches.** :class:`TokenBatchInput` runs one task per sequence (``keep_history=0``);
  ``n_batch`` is passed to the runtime unchanged.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ResolvedSampling, RuntimeConfig
from ..engine import (
    ChatTemplateParts,
    EmbedInput,
    EngineInfo,
    ErrorEvent,
    FinishEvent,
    FinishReason,
    InferMode,
    PerfStats,
    PromptInput,
    Request,
    RequestInput,
    Sink,
    TokenBatchInput,
    TokenEvent,
    TokenInput,
)
from ..errors import (
    ConfigError,
    ContextLengthError,
    GenerationError,
    ModelClosedError,
    ModelNotFoundError,
    RuntimeLibraryError,
    UnsupportedFeatureError,
)
from ..formats.rkllm import RKLLMMetadata
from .abi import SAMPLING_FIELD_NAMES
from .callback import Dispatcher, Run
from .checks import Check, board_platform, check_model_file, model_checks, system_checks
from .handle import IDLE_WAIT_S, LIVE_HANDLES, Handle
from .library import find_library, identify, open_runtime
from .structs import Structs
from .tokenizer import NPUTokenizer, from_huggingface, from_metadata

log = logging.getLogger(__name__)

# After a stop was requested, how long to wait for the runtime's FINISH before reporting the
# end ourselves (a paused or aborted task may never call back again).
_STOP_GRACE_S = 2.0


class NPUEngine:
    """A ``.rkllm`` model on the NPU through ``librkllmrt.so``.

    Args:
        model_path: the ``.rkllm`` file.
        config: every ``RKLLMParam`` field (fields the family lacks are ignored, logged).
        library: path of ``librkllmrt.so`` (else ``$RKLLM_LIBRARY``, ``$LD_LIBRARY_PATH``,
            the system library directories).
        family: force the ABI family (``"1.2.1"``) or release (``"1.2.2"``) instead of
            detecting it; also ``$RKLLM_RUNTIME_FAMILY``.
        tokenizer: a Hugging Face tokenizer directory or ``tokenizer.json``; default: the
            tokenizer stored in the model file, if any.
    """

    def __init__(
        self,
        model_path: str,
        config: RuntimeConfig,
        *,
        library: str | None = None,
        family: str | None = None,
        tokenizer: str | None = None,
    ) -> None:
        if not isinstance(config, RuntimeConfig):
            raise ConfigError("config must be a RuntimeConfig")
        self.config = config
        self._closed = False
        self._ids = itertools.count(1)
        self._warned: set[str] = set()
        self._loras: set[str] = set()
        self._raw_prompt = False
        self._current_max = config.max_new_tokens
        self._cross_attn: tuple[Any, ...] | None = None

        lib_path = find_library(library)
        identity = identify(lib_path, family)
        self.meta: RKLLMMetadata = check_model_file(model_path)
        self.checks: list[Check] = model_checks(
            self.meta, config, identity.sdk_version, board=board_platform()
        )
        self.checks += system_checks(identity.sdk_version)
        self.runtime = open_runtime(identity)
        self.family = self.runtime.family
        self.spec = self.runtime.spec
        self._ffi = self.runtime.ffi
        self._lib: Any = self.runtime.lib

        # Before rkllm_init: a bad tokenizer= must not cost a model load.
        self.tokenizer: NPUTokenizer | None = self._load_tokenizer(tokenizer)

        self._structs = Structs(self.runtime, config, self.meta.hidden_size, self._warn_once)
        self._handle = Handle(self.runtime)
        self._dispatcher = Dispatcher(self.runtime, self._handle)
        self._init_handle(model_path)
        LIVE_HANDLES.add(self._handle)
        self._finalizer = weakref.finalize(self, self._handle.destroy)

        if self.spec.chat_template:
            # The model layer renders chat templates itself: make the runtime add nothing.
            try:
                self._call("rkllm_set_chat_template", self._handle.ptr, b"", b"", b"")
            except BaseException:
                self._finalizer()  # nothing half-done: the handle goes with the failure
                raise
            self._raw_prompt = True
        if not self.spec.chat_template and self.tokenizer is None:
            log.warning(
                "RKLLM runtime family 1.1 always wraps text prompts in the model's built-in chat"
                " template and has no call to turn it off; prompts rendered by rkllm-py get a"
                " template twice. Pass tokenizer=<HF tokenizer dir> so prompts are sent as"
                " tokens, or upgrade the runtime to 1.2+"
            )
        self.info = self._make_info(model_path)

    # --- construction ----------------------------------------------------------------------

    def _init_handle(self, model_path: str) -> None:
        keep = self._handle.keepalive
        param = self._structs.init_param(model_path, keep)
        callback = self._structs.result_callback(self._dispatcher.on_result, keep)
        handle_p = self._ffi.new("LLMHandle*")
        rc = self._lib.rkllm_init(handle_p, param, callback)
        if rc != 0:
            raise RuntimeLibraryError(
                f"rkllm_init failed (returned {rc}) for {model_path} with RKLLM runtime"
                f" {self.runtime.identity.sdk_version} (family {self.family}); the runtime"
                f" printed its reason on stderr (lines starting 'E rkllm:'). Common causes: not"
                f" enough memory for max_context_len={self.config.max_context_len}, a model"
                f" converted for another platform, an NPU driver older than 0.9.8"
            )
        self._param = param
        self._handle.attach(handle_p[0])

    def _load_tokenizer(self, tokenizer: str | None) -> NPUTokenizer | None:
        if tokenizer:
            return from_huggingface(tokenizer)
        return from_metadata(self.meta)

    def _make_info(self, model_path: str) -> EngineInfo:
        m = self.meta
        ident = self.runtime.identity
        return EngineInfo(
            backend="npu",
            model_path=str(model_path),
            model_name=Path(model_path).stem,
            family=self.family,
            architecture=m.architecture,
            context_length=self.config.max_context_len,
            hidden_size=m.hidden_size,
            vocab_size=m.vocab_size,
            num_layers=m.num_layers,
            platform=m.platform,
            quantization=None,  # the .rkllm file_type codes are not documented
            tokenizer=self.tokenizer.source if self.tokenizer else None,
            chat_template=m.chat_template,
            template_parts=m.template_parts,
            bos_token=m.token_text("tokenizer.ggml.bos_token_id"),
            eos_token=m.token_text("tokenizer.ggml.eos_token_id"),
            raw_prompt=self._raw_prompt or self.tokenizer is not None,
            supports_keep_history=self.family != "1.1",
            per_run_sampling=self.spec.sampling_per_run,
            supports_logits=bool(self.spec.logits),
            runtime_version=ident.sdk_version,
            extra={
                "runtime_library": str(ident.path),
                "family_reason": ident.reason,
                "toolkit_version": m.toolkit_version,
                "model_max_context": m.max_context,
                "file_type": m.get("general.file_type"),
                "checks": [(c.name, c.status, c.detail) for c in self.checks],
            },
        )

    # --- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ModelClosedError("the NPU engine is closed")

    def _call(self, name: str, *args: Any) -> int:
        """Call a runtime function; a non-zero return becomes RuntimeLibraryError."""
        self._check_open()
        rc = int(getattr(self._lib, name)(*args))
        if rc != 0:
            raise RuntimeLibraryError(f"{name} returned {rc}; see the runtime's stderr output")
        return rc

    def _need(self, feature: str, ok: bool, since: str) -> None:
        if not ok:
            raise UnsupportedFeatureError(
                f"{feature} needs RKLLM runtime {since} or newer; the loaded runtime is"
                f" {self.runtime.identity.sdk_version} (family {self.family})"
            )

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # --- running ---------------------------------------------------------------------------

    def run(self, request: Request, sink: Sink) -> None:
        """Run ``request`` to its end; emits tokens / states, then one Finish or Error event."""
        try:
            self._check_open()
            if isinstance(request.input, TokenBatchInput):
                self._run_batch(request, sink)
            else:
                self._run_single(request, request.input, sink)
        except (KeyboardInterrupt, SystemExit) as exc:
            _emit_quietly(sink, ErrorEvent(exc))
            raise
        except Exception as exc:
            if not _emit_quietly(sink, ErrorEvent(exc)):
                raise

    def _run_batch(self, request: Request, sink: Sink) -> None:
        if request.mode == InferMode.GENERATE:
            raise ConfigError("TokenBatchInput is for hidden-state or logits modes only")
        total = PerfStats()
        prompt_tokens = 0
        for seq in request.input.sequences:  # type: ignore[union-attr]
            # One task per sequence: every family supports it, and n_batch > 1 batching is
            # a generation feature whose input layout the public headers do not describe.
            run, end = self._execute(request, TokenInput(tuple(seq)), sink)
            if isinstance(end, ErrorEvent):
                sink.emit(end)
                return
            prompt_tokens += end.prompt_tokens
            total = _add_perf(total, end.perf)
            if end.reason == "abort" or run.stop_kind == "sink":
                sink.emit(FinishEvent(end.reason, total, prompt_tokens, 0))
                return
        sink.emit(FinishEvent("stop", total, prompt_tokens, 0))

    def _run_single(self, request: Request, item: RequestInput, sink: Sink) -> None:
        _, end = self._execute(request, item, sink)
        sink.emit(end)

    def _execute(
        self, request: Request, item: RequestInput, sink: Sink
    ) -> tuple[Run, FinishEvent | ErrorEvent]:
        spec = self.spec
        if request.mode == InferMode.LOGITS:
            self._need("logits mode", spec.logits, "1.2.0")
        if isinstance(item, PromptInput) and not spec.chat_template and self.tokenizer:
            item = TokenInput(tuple(self.tokenizer.encode(item.text)))
        prompt_count = self._prompt_tokens(item)
        if prompt_count is not None and prompt_count > self.config.max_context_len:
            raise ContextLengthError(prompt_count, self.config.max_context_len)
        limit = self._limit(request.sampling)
        run = Run(next(self._ids), sink, request.mode, limit)
        rk_input = self._structs.input(item, request, run.keep)
        infer = self._structs.infer(request, run.keep, self._loras)
        userdata = self._ffi.cast("void*", run.id)
        handle = self._handle
        use_async = self.config.is_async
        handle.idle.clear()
        self._dispatcher.current = run
        try:
            if use_async:
                rc = self._start_async(rk_input, infer, userdata)
                if rc == 0:
                    self._wait(run)
                    # FINISH was called from inside the runtime's task, which is still
                    # unwinding: the next task must not start before it has ended.
                    handle.wait_runtime_idle()
                    handle.last_end = time.monotonic()
            else:
                rc = int(self._lib.rkllm_run(handle.ptr, rk_input, infer, userdata))
        finally:
            if run.abort_thread is not None:
                run.abort_thread.join()
            self._dispatcher.current = None
            handle.idle.set()
        return run, self._end_event(run, rc, prompt_count, "rkllm_run_async" if use_async
                                    else "rkllm_run")

    def _start_async(self, rk_input: Any, infer: Any, userdata: Any) -> int:
        """``rkllm_run_async`` once the runtime is idle. Where the runtime cannot say so, a
        start refused just after the previous task is retried for a bounded time."""
        handle = self._handle
        handle.wait_runtime_idle()
        pause = 0.001
        while True:
            rc = int(self._lib.rkllm_run_async(handle.ptr, rk_input, infer, userdata))
            if rc == 0 or handle.runtime_busy() is not None:
                return rc  # started, or refused by a runtime that says it is idle
            if time.monotonic() - handle.last_end > IDLE_WAIT_S:
                return rc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _wait(self, run: Run) -> None:
        while not run.done.wait(0.05):
            if run.stop_kind is not None and time.monotonic() - run.stop_time > _STOP_GRACE_S:
                log.debug("no FINISH %.1f s after stopping run %d", _STOP_GRACE_S, run.id)
                return

    def _end_event(
        self, run: Run, rc: int, prompt_count: int | None, fn: str
    ) -> FinishEvent | ErrorEvent:
        if run.error is not None:
            if isinstance(run.error, (KeyboardInterrupt, SystemExit)):
                raise run.error
            return ErrorEvent(run.error)
        if run.runtime_error:
            return ErrorEvent(GenerationError(
                "the RKLLM runtime reported an error during the run (RKLLM_RUN_ERROR); its"
                " reason is on stderr (lines starting 'E rkllm:'), often a prompt longer than"
                f" max_context_len={self.config.max_context_len}"
            ))
        if rc != 0 and run.stop_kind is None:
            return ErrorEvent(GenerationError(f"{fn} returned {rc}; see the runtime's stderr"))
        # Flush a character left incomplete at the end (shown as U+FFFD, never dropped).
        tail = run.decoder.decode(run.pending, final=True)
        run.pending = b""
        if tail and run.stop_kind is None:
            run.sink.emit(TokenEvent(tail, -1))
        if run.mode != InferMode.GENERATE and run.payloads == 0 and run.stop_kind is None:
            what = "hidden states" if run.mode == InferMode.LAST_HIDDEN_LAYER else "logits"
            return ErrorEvent(GenerationError(f"the runtime finished without returning {what}"))
        perf = run.perf or PerfStats()
        prompt_tokens = perf.prefill_tokens if run.perf and perf.prefill_tokens else \
            (prompt_count or 0)
        completion = perf.decode_tokens if run.perf and perf.decode_tokens else run.completion
        reason: FinishReason
        if run.stop_kind == "abort":
            reason = "abort"
        elif run.stop_kind == "limit":
            reason = "length"
        elif run.stop_kind == "sink":
            reason = "stop"
        elif run.mode == InferMode.GENERATE and run.completion >= self._max_tokens(run):
            reason = "length"
        else:
            reason = "stop"
        return FinishEvent(reason, perf, prompt_tokens, completion if run.mode ==
                           InferMode.GENERATE else 0)

    def _max_tokens(self, run: Run) -> int:
        return run.limit if run.limit is not None else self._current_max

    def _limit(self, s: ResolvedSampling) -> int | None:
        """Per-run sampling on families without RKLLMSamplingParam (see module notes)."""
        self._current_max = s.max_new_tokens
        if self.spec.sampling_per_run:
            return None
        cfg = self.config
        differs = [n for n in SAMPLING_FIELD_NAMES if getattr(s, n) != getattr(cfg, n)]
        if differs:
            self._warn_once(
                "sampling", "RKLLM runtime family %s takes sampling parameters only at init;"
                " per-call %s ignored (set them in RuntimeConfig, or use runtime 1.3)",
                self.family, ", ".join(differs),
            )
        if s.max_new_tokens < cfg.max_new_tokens:
            return s.max_new_tokens  # enforced here by stopping the run
        if s.max_new_tokens > cfg.max_new_tokens:
            self._warn_once(
                "max_new_tokens", "RKLLM runtime family %s caps generation at the init value"
                " max_new_tokens=%d; a larger per-call value cannot be honoured",
                self.family, cfg.max_new_tokens,
            )
            self._current_max = cfg.max_new_tokens
        return None

    def _prompt_tokens(self, item: RequestInput) -> int | None:
        if isinstance(item, TokenInput):
            return len(item.ids)
        if isinstance(item, EmbedInput):
            return int(np.asarray(item.embeds).shape[0])
        if isinstance(item, PromptInput) and self.tokenizer is not None:
            return len(self.tokenizer.encode(item.text))
        return None

    def abort(self) -> None:
        """Stop the running request within one token (any thread); no-op when idle."""
        run = self._dispatcher.current
        if run is None or self._closed:
            return
        if run.stop_kind is None:
            run.stop_kind = "abort"
            run.stop_time = time.monotonic()
        self._handle.abort()

    def is_running(self) -> bool:
        """True while a run is in progress (tracked here: the runtime's own is_running has
        inverted meanings across releases)."""
        return not self._handle.idle.is_set()

    # --- runtime features ------------------------------------------------------------------

    def clear_kv_cache(
        self,
        keep_system_prompt: bool = False,
        start_pos: Sequence[int] | None = None,
        end_pos: Sequence[int] | None = None,
    ) -> None:
        """Drop the conversation held in the KV cache (ranges per batch slot on 1.2.1+)."""
        self._check_open()
        ranges = start_pos is not None or end_pos is not None
        if self.spec.clear_kv_cache == "none":
            if ranges:
                self._need("clearing KV-cache ranges", False, "1.2.1")
            log.debug("family 1.1 keeps no history between runs; nothing to clear")
            return
        if self.spec.clear_kv_cache == "simple":
            if ranges:
                self._need("clearing KV-cache ranges", False, "1.2.1")
            self._call("rkllm_clear_kv_cache", self._handle.ptr, int(keep_system_prompt))
            return
        if ranges:
            if start_pos is None or end_pos is None:
                raise ConfigError("start_pos and end_pos must be given together")
            n = self.config.n_batch
            if len(start_pos) != n or len(end_pos) != n:
                raise ConfigError(f"start_pos and end_pos need one entry per batch slot"
                                  f" (n_batch={n})")
            sp = self._ffi.new("int[]", [int(x) for x in start_pos])
            ep = self._ffi.new("int[]", [int(x) for x in end_pos])
            self._call("rkllm_clear_kv_cache", self._handle.ptr, int(keep_system_prompt), sp, ep)
        else:
            self._call("rkllm_clear_kv_cache", self._handle.ptr, int(keep_system_prompt),
                       self._ffi.NULL, self._ffi.NULL)

    def kv_cache_size(self) -> list[int]:
        """Tokens held in the KV cache, one entry per batch slot (runtime 1.2.1+)."""
        self._check_open()
        self._need("kv_cache_size", self.spec.kv_cache_size, "1.2.1")
        sizes = self._ffi.new("int[]", max(1, self.config.n_batch))
        self._call("rkllm_get_kv_cache_size", self._handle.ptr, sizes)
        return list(sizes)

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        """Let the runtime wrap prompts as ``system + prefix + text + postfix`` ("" x3 = raw)."""
        self._need("set_chat_template", self.spec.chat_template, "1.2.0")
        self._call("rkllm_set_chat_template", self._handle.ptr, system.encode(), prefix.encode(),
                   postfix.encode())
        self._raw_prompt = not (system or prefix or postfix)
        self.info.raw_prompt = self._raw_prompt or (
            not self.spec.chat_template and self.tokenizer is not None)
        self.info.runtime_template = ChatTemplateParts(system, prefix, postfix)

    def set_function_tools(self, system: str, tools_json: str, tool_response_str: str) -> None:
        """Give the runtime's template OpenAI-style tools (runtime 1.2.1+)."""
        self._need("function tools", self.spec.function_tools, "1.2.1")
        try:
            tools = json.loads(tools_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"tools_json is not valid JSON: {exc}") from exc
        if not isinstance(tools, list):
            raise ConfigError("tools_json must be a JSON list of tool definitions")
        self._call("rkllm_set_function_tools", self._handle.ptr, system.encode(),
                   tools_json.encode(), tool_response_str.encode())

    def load_lora(self, path: str, name: str, scale: float = 1.0) -> None:
        """Load a LoRA adapter (converted with the toolkit); select it per run by ``name``."""
        self._check_open()
        if not Path(path).is_file():
            raise ModelNotFoundError(f"LoRA adapter file {path} does not exist")
        if not name:
            raise ConfigError("a LoRA adapter needs a name")
        ffi = self._ffi
        adapter = ffi.new("RKLLMLoraAdapter*")
        p, n = ffi.new("char[]", os.fsencode(path)), ffi.new("char[]", name.encode())
        adapter.lora_adapter_path = p
        adapter.lora_adapter_name = n
        adapter.scale = float(scale)
        self._handle.keepalive += [adapter, p, n]  # the runtime may keep the name pointer
        self._call("rkllm_load_lora", self._handle.ptr, adapter)
        self._loras.add(name)

    def load_prompt_cache(self, path: str) -> None:
        """Load a prompt cache saved by an earlier run (``save_prompt_cache``)."""
        if not Path(path).is_file():
            raise ModelNotFoundError(f"prompt cache file {path} does not exist")
        self._call("rkllm_load_prompt_cache", self._handle.ptr, os.fsencode(path))

    def release_prompt_cache(self) -> None:
        """Drop the loaded prompt cache."""
        self._call("rkllm_release_prompt_cache", self._handle.ptr)

    def set_cross_attn_params(
        self, k_cache: np.ndarray, v_cache: np.ndarray, mask: np.ndarray, positions: np.ndarray
    ) -> None:
        """Encoder K/V caches for cross attention (runtime 1.2.1+, ``use_cross_attn=True``)."""
        self._need("cross attention", self.spec.cross_attn, "1.2.1")
        ffi = self._ffi
        k = np.ascontiguousarray(k_cache, dtype=np.float32)
        v = np.ascontiguousarray(v_cache, dtype=np.float32)
        m = np.ascontiguousarray(mask, dtype=np.float32).ravel()
        pos = np.ascontiguousarray(positions, dtype=np.int32).ravel()
        if len(m) != len(pos):
            raise ConfigError("mask and positions need one entry per encoder token")
        p = ffi.new("RKLLMCrossAttnParam*")
        p.encoder_k_cache = ffi.cast("float*", ffi.from_buffer(k))
        p.encoder_v_cache = ffi.cast("float*", ffi.from_buffer(v))
        p.encoder_mask = ffi.cast("float*", ffi.from_buffer(m))
        p.encoder_pos = ffi.cast("int32_t*", ffi.from_buffer(pos))
        p.num_tokens = len(pos)
        # Kept until the next call: the runtime reads these during later runs.
        self._cross_attn = (p, k, v, m, pos)
        self._call("rkllm_set_cross_attn_params", self._handle.ptr, p)

    def close(self) -> None:
        """Abort a running request and destroy the runtime handle; idempotent."""
        if self._closed:
            return
        self.abort()  # a running request ends with reason "abort" before the handle goes
        self._closed = True
        self._finalizer()

    def __enter__(self) -> NPUEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"NPUEngine({self.info.model_path!r}, runtime"
                f" {self.runtime.identity.sdk_version}, family {self.family})")


def _emit_quietly(sink: Sink, event: ErrorEvent) -> bool:
    """Emit a terminal error; False if the sink itself is broken (the caller then raises)."""
    try:
        sink.emit(event)
        return True
    except Exception:
        log.exception("the sink failed while reporting an error")
        return False


def _add_perf(a: PerfStats, b: PerfStats) -> PerfStats:
    return PerfStats(a.prefill_ms + b.prefill_ms, a.prefill_tokens + b.prefill_tokens,
                     a.decode_ms + b.decode_ms, a.decode_tokens + b.decode_tokens,
                     max(a.memory_mb, b.memory_mb))
