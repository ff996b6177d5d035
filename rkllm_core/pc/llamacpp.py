"""The PC engine's forward pass on llama.cpp's kernels (llama-cpp-python's low-level API).

Decoding a small model in float32 torch is bound by memory bandwidth: every step reads all the
dequantized weights (~0.5 GB for SmolLM2-135M, ~2 GB for Qwen2.5-Coder-0.5B). llama.cpp
multiplies on the GGUF file's own quantized blocks, reading 4–8 times fewer bytes. Only the
forward pass moves here: tokens (or input embeddings) in, logits out, keys and values kept in
llama.cpp's KV cache (sequence 0) and truncated when the engine drops guessed tokens or reuses
a shared prefix. Sampling, stop rules, history and everything else stay in the engine.

The stateless modes (logits of every position, last-layer hidden states) run on a second
context created on first use, so they never touch the conversation's cache. Hidden states are
llama.cpp's ``result_norm`` tensor: the last layer's output after the final norm, the same
convention as the torch engine (and the NPU runtime).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AbortedError, EngineUnavailableError, GenerationError, ModelFormatError
from .kernels import LLAMACPP_EXTRA

log = logging.getLogger(__name__)

_BATCH = 512  # tokens per llama_decode call (and per micro-batch)
_init_lock = threading.Lock()
_initialised = False
_log_callback: Any = None  # kept alive: llama.cpp holds a pointer to it


def default_threads() -> int:
    """Threads for llama.cpp when the caller names none: half the logical CPUs (the physical
    cores on SMT machines), as llama-cpp-python does. llama.cpp's threads meet at a barrier
    after every operation, so a thread that shares its core with another busy thread stalls
    them all: on a loaded 2-CPU machine SmolLM2 decoded ~1–3 tokens/s with 2 threads and
    65–95 with 1 (torch's thread pool degrades far less, so its default stays)."""
    return max(1, (os.cpu_count() or 2) // 2)


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, initialised once per process; EngineUnavailableError if the
    extra is not installed."""
    global _initialised, _log_callback
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineUnavailableError(
            f"kernels='llama.cpp' needs llama-cpp-python, which is not installed"
            f" ({exc}): {LLAMACPP_EXTRA} (it builds llama.cpp with cmake and a C++ compiler),"
            f" or use the default kernels='torch'"
        ) from exc
    with _init_lock:
        if not _initialised:
            _log_callback = llama_cpp.llama_log_callback(_forward_log)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


_LOG_LEVELS = {3: logging.INFO, 4: logging.WARNING}  # ggml's WARN and ERROR; the rest DEBUG


def _forward_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp narrates every load on stderr; keep it in logging (its errors stay visible,
    # its warnings are about the file's metadata, not about this engine's use of it)
    message = text.decode("utf-8", "replace").rstrip()
    if message:
        log.log(_LOG_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", message)


class _Context:
    """One llama.cpp context (its own KV cache) and a reusable token batch for it."""

    def __init__(
        self,
        lib: Any,
        model: Any,
        n_ctx: int,
        threads: int,
        batch_threads: int,
        *,
        embeddings: bool = False,
        abort: Any = None,
    ) -> None:
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(_BATCH, n_ctx)
        params.n_seq_max = 1
        # llama.cpp runs a one-token batch on n_threads, a longer one on n_threads_batch
        params.n_threads, params.n_threads_batch = threads, batch_threads
        params.embeddings = embeddings
        if embeddings:  # one hidden state per token, whatever pooling the file declares
            params.pooling_type = lib.LLAMA_POOLING_TYPE_NONE
        # Flash attention's CPU kernel takes another path for large batches: a 64-token
        # prefill then rounds differently from 24 + 40 tokens (up to ~1 logit on SmolLM2),
        # so a reused prefix or a checked guess could change greedy text. Without it every
        # split of a prompt gives the same logits, bit for bit, at the same decode speed.
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        # float32 keys and values, as in the torch engine's cache: with llama.cpp's default
        # float16 SmolLM2's greedy tokens followed the torch engine's for 158 of 8 × 32
        # (first difference), with float32 for 232, at the same speed
        params.type_k = params.type_v = lib.GGML_TYPE_F32
        params.no_perf = True
        self.lib = lib
        self.ctx = lib.llama_init_from_model(model, params)
        if not self.ctx:
            raise GenerationError(f"llama.cpp could not create a context of {n_ctx} positions")
        if abort is not None:  # checked between graph nodes: a long prefill stops early
            lib.llama_set_abort_callback(self.ctx, abort, None)
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_batch = int(params.n_batch)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._embd_batch: Any = None
        self._init_batch(self.batch)
        self.tokens = np.ctypeslib.as_array(self.batch.token, shape=(self.n_batch,))

    def _init_batch(self, batch: Any) -> None:
        for i in range(self.n_batch):  # every row belongs to sequence 0
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0

    def embd_batch(self, width: int) -> Any:
        """A batch of input embeddings rows of ``width`` floats (allocated on first use)."""
        if self._embd_batch is None:
            self._embd_batch = self.lib.llama_batch_init(self.n_batch, width, 1)
            self._init_batch(self._embd_batch)
        return self._embd_batch

    def decode(self, batch: Any, n: int, start: int, outputs: np.ndarray) -> None:
        """Run ``n`` rows of ``batch`` at positions ``start…``; ``outputs`` flags the rows
        whose logits (or embeddings) are kept."""
        pos = np.ctypeslib.as_array(batch.pos, shape=(self.n_batch,))
        flags = np.ctypeslib.as_array(batch.logits, shape=(self.n_batch,))
        pos[:n] = np.arange(start, start + n, dtype=np.int32)
        flags[:n] = outputs
        batch.n_tokens = n
        code = self.lib.llama_decode(self.ctx, batch)
        if code != 0:
            self.lib.llama_memory_seq_rm(self.memory, 0, start, -1)  # nothing half-written
            if code == 2:
                raise AbortedError("the request was aborted during llama.cpp's forward pass")
            raise GenerationError(
                f"llama_decode failed with code {code} at position {start} ({n} tokens)"
                + (": the context is full" if code == 1 else "")
            )

    def rows(self, getter: Any, indices: Sequence[int], width: int) -> np.ndarray:
        """Copies of the output rows of the batch rows ``indices`` (``[len, width]``)."""
        out = np.empty((len(indices), width), dtype=np.float32)
        for row, index in enumerate(indices):
            ptr = getter(self.ctx, index)
            if not ptr:
                raise GenerationError(f"llama.cpp returned no output for batch row {index}")
            out[row] = np.ctypeslib.as_array(ptr, shape=(width,))
        return out

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, False)

    def free(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            if self._embd_batch is not None:
                self.lib.llama_batch_free(self._embd_batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None


class LlamaCppCache:
    """The positions of sequence 0 in a llama.cpp context's KV cache."""

    def __init__(self, context: _Context) -> None:
        self._context = context
        self.length = 0
        context.clear()

    def truncate(self, length: int) -> None:
        """Forget the positions from ``length`` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate {self.length} positions to {length}")
        if length < self.length:
            lib = self._context.lib
            if not lib.llama_memory_seq_rm(self._context.memory, 0, length, -1):
                raise GenerationError(f"llama.cpp could not drop the positions from {length} on")
        self.length = length

    def clear(self) -> None:
        """Forget every position."""
        self._context.clear()
        self.length = 0


class LlamaCppDecoder:
    """Forwards tokens through a GGUF model with llama.cpp, one context of ``n_ctx`` positions.

    One-token steps run on ``threads``, longer batches on ``batch_threads`` (default:
    ``threads``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int,
        threads: int,
        batch_threads: int | None = None,
        should_abort: Callable[[], bool] | None = None,
    ) -> None:
        lib = import_llama_cpp()
        # held during every llama_decode: close() waits for a forward pass in flight
        self._busy = threading.Lock()
        self._abort_cb = None
        if should_abort is not None:  # kept alive on the decoder: llama.cpp holds a pointer
            self._abort_cb = lib.ggml_abort_callback(lambda _data: bool(should_abort()))
        self._lib = lib
        self._n_ctx = n_ctx
        self._threads = threads
        self._batch_threads = batch_threads or threads
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0  # the CPU kernels: the engine's device is the CPU
        model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelFormatError(
                f"llama.cpp could not load {path} (an architecture or quantization this"
                f" llama-cpp-python does not know?); run it with kernels='torch'"
            )
        self._model = model
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))
        self.n_embd = int(lib.llama_model_n_embd(model))
        self.context_length = int(lib.llama_model_n_ctx_train(model))
        self._contexts: list[_Context] = []
        self._main: _Context | None = None
        self._stateless: _Context | None = None
        try:
            self._main = self._new_context(embeddings=False)
        except Exception:
            lib.llama_model_free(model)
            raise
        # contexts and model are freed with the decoder even if close() is never called
        self._finalizer = weakref.finalize(self, _free, lib, model, self._contexts)

    def _new_context(self, *, embeddings: bool) -> _Context:
        context = _Context(self._lib, self._model, self._n_ctx, self._threads,
                           self._batch_threads, embeddings=embeddings,
                           abort=self._abort_cb)  # fmt: skip
        self._contexts.append(context)
        return context

    @property
    def threads(self) -> tuple[int, int]:
        """The threads llama.cpp runs one-token steps and longer batches on (as it reports)."""
        if self._main is None:
            raise GenerationError("the llama.cpp decoder is closed")
        ctx = self._main.ctx
        return int(self._lib.llama_n_threads(ctx)), int(self._lib.llama_n_threads_batch(ctx))

    def new_cache(self, capacity: int) -> LlamaCppCache:
        """The main context's cache (emptied); ``capacity`` must fit its ``n_ctx``."""
        if self._main is None:
            raise GenerationError("the llama.cpp decoder is closed")
        if capacity > self._n_ctx:
            raise ValueError(f"the llama.cpp context holds {self._n_ctx} positions, not {capacity}")
        return LlamaCppCache(self._main)

    def forward(
        self,
        cache: LlamaCppCache,
        ids: Sequence[int] | None = None,
        embeds: torch.Tensor | None = None,
        *,
        all_rows: bool = False,
    ) -> torch.Tensor:
        """Append ``ids`` (or ``[n, hidden]`` ``embeds``) to ``cache``; the last logits row
        (``[vocab]``), or with ``all_rows`` the logits of every new position (``[n, vocab]``).
        Raises AbortedError when ``should_abort`` turned true during the pass (the positions
        of the interrupted call are dropped)."""
        with self._busy:
            start = cache.length
            try:
                return self._forward(cache, ids, embeds, all_rows)
            except BaseException:
                # a long input is forwarded in chunks: drop the ones that went through too,
                # so the cache holds what the engine believes it holds
                if cache.length > start:
                    cache.truncate(start)
                raise

    def _forward(
        self,
        cache: LlamaCppCache,
        ids: Sequence[int] | None,
        embeds: torch.Tensor | None,
        all_rows: bool,
    ) -> torch.Tensor:
        context = self._main
        if context is None:
            raise GenerationError("the llama.cpp decoder is closed")
        if embeds is not None:
            rows = embeds.detach().to(torch.float32).cpu().numpy()
            n_new = int(rows.shape[0])
        else:
            tokens = np.asarray(list(ids or ()), dtype=np.int32)
            n_new = int(tokens.shape[0])
        if cache.length + n_new > self._n_ctx:
            raise ValueError(f"the KV cache holds at most {self._n_ctx} positions")
        kept: list[np.ndarray] = []
        for first in range(0, n_new, context.n_batch):
            n = min(context.n_batch, n_new - first)
            last_chunk = first + n == n_new
            outputs = np.zeros(n, dtype=np.int8)
            if all_rows:
                outputs[:] = 1
            elif last_chunk:
                outputs[-1] = 1
            if embeds is not None:
                batch = context.embd_batch(self.n_embd)
                target = np.ctypeslib.as_array(batch.embd, shape=(context.n_batch * self.n_embd,))
                target[: n * self.n_embd] = rows[first : first + n].reshape(-1)
            else:
                batch = context.batch
                context.tokens[:n] = tokens[first : first + n]
            context.decode(batch, n, cache.length, outputs)
            cache.length += n
            wanted = [int(i) for i in np.flatnonzero(outputs)]
            if wanted:
                kept.append(context.rows(self._lib.llama_get_logits_ith, wanted, self.n_vocab))
        logits = torch.from_numpy(np.concatenate(kept))
        return logits if all_rows else logits[-1]

    def stateless_forward(self, sequences: list[list[int]], hidden: bool) -> list[np.ndarray]:
        """Logits (``[n, vocab]``) or hidden states after the final norm (``[n, hidden]``) of
        each sequence, on a context of its own (the conversation's cache is untouched)."""
        with self._busy:
            return self._stateless_forward(sequences, hidden)

    def _stateless_forward(self, sequences: list[list[int]], hidden: bool) -> list[np.ndarray]:
        if self._main is None:
            raise GenerationError("the llama.cpp decoder is closed")
        if self._stateless is None:
            self._stateless = self._new_context(embeddings=True)
        context = self._stateless
        self._lib.llama_set_embeddings(context.ctx, hidden)
        getter = self._lib.llama_get_embeddings_ith if hidden else self._lib.llama_get_logits_ith
        width = self.n_embd if hidden else self.n_vocab
        results = []
        for seq in sequences:
            context.clear()
            parts = []
            for first in range(0, len(seq), context.n_batch):
                chunk = seq[first : first + context.n_batch]
                context.tokens[: len(chunk)] = chunk
                context.decode(context.batch, len(chunk), first, np.ones(len(chunk), np.int8))
                parts.append(context.rows(getter, range(len(chunk)), width))
            results.append(np.concatenate(parts))
        context.clear()
        return results

    def close(self) -> None:
        """Free the contexts and the model (after a forward pass in flight); idempotent."""
        with self._busy:
            self._main = self._stateless = None
            self._finalizer()


def _free(lib: Any, model: Any, contexts: list[_Context]) -> None:
    for context in contexts:
        context.free()
    contexts.clear()
    lib.llama_model_free(model)
