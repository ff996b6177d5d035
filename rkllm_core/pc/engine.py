"""PCEngine: the Engine protocol on torch + transformers, following the runtime's semantics."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ResolvedSampling, RuntimeConfig
from ..embeddings import declared_pooling
from ..engine import (
    ChatTemplateParts,
    EmbedInput,
    EngineInfo,
    ErrorEvent,
    FinishEvent,
    FinishReason,
    HiddenStateEvent,
    InferMode,
    LogitsEvent,
    MultimodalInput,
    PerfStats,
    PromptInput,
    Request,
    Sink,
    TokenBatchInput,
    TokenEvent,
    TokenInput,
)
from ..errors import AbortedError, ConfigError, ContextLengthError, GenerationError
from .decoder import build_decoder
from .detokenize import IncrementalDecoder
from .kernels import Decoder, PCKernels, StatelessForward, choose_kernels
from .loading import LoadedModel, describe_gguf, load_pretrained
from .lookahead import PromptLookup
from .sampling import Sampler

log = logging.getLogger(__name__)


class PCEngine:
    """Runs a Hugging Face / GGUF / toolkit-export model on the CPU (or a torch device).

    Keeps one KV cache like the runtime: ``keep_history`` runs append to it, other runs start
    fresh. Hidden-state and logits modes are stateless (they neither read nor change it).

    Llama and Qwen2 models generate through :mod:`.decoder` (fused projections, a preallocated
    cache; the same logits as transformers' forward), other architectures through
    transformers; ``compact_decoder=False`` forces transformers' forward for every model.
    With the compact decoder, greedy decoding checks up to ``lookahead`` guessed tokens per
    forward (:mod:`.lookahead`), and a fresh prompt reuses the cached keys/values of the
    tokens it shares with the previous prompt (``reuse_prefix``): the same tokens, less work.

    ``kernels="llama.cpp"`` (GGUF files, the ``[llamacpp]`` extra; or ``RKLLM_PC_KERNELS``)
    runs the forward pass on llama.cpp's quantized kernels instead, behind the same semantics
    (see :mod:`.kernels`); ``lookahead`` then defaults to 0 (4 with torch). There
    ``num_threads`` (default: half the CPUs) runs one-token decode steps and ``batch_threads``
    (default: ``num_threads``) multi-token passes: prompts, logits, hidden states. On an idle
    machine ``batch_threads=os.cpu_count()`` prefills faster; on a busy one llama.cpp's threads
    wait for each other at every operation (SmolLM2's 256-token prefill on the loaded 2-CPU
    test machine: ~105 tokens/s on one thread, ~12 on two). torch runs every pass on its one
    process-wide pool and ignores ``batch_threads``.
    """

    def __init__(
        self,
        model: str | Path | LoadedModel,
        config: RuntimeConfig,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        num_threads: int | None = None,
        compact_decoder: bool = True,
        lookahead: int | None = None,
        reuse_prefix: bool = True,
        kernels: PCKernels | None = None,
        batch_threads: int | None = None,
    ) -> None:
        if lookahead is not None and lookahead < 0:
            raise ConfigError(f"lookahead must be >= 0 (0 turns guessing off), not {lookahead}")
        bad_count = isinstance(batch_threads, bool) or not isinstance(batch_threads, int)
        if batch_threads is not None and (bad_count or batch_threads < 1):
            raise ConfigError(f"batch_threads must be a whole number >= 1, not {batch_threads!r}")
        self.kernels: PCKernels = choose_kernels(kernels, model)
        # RuntimeConfig.enabled_cpus says how many cores the runtime may use; on the PC that
        # becomes torch's thread count (pinning would affect the whole process), or
        # llama.cpp's: torch's pool, process-wide, is left alone when torch does not compute
        threads = num_threads or config.enabled_cpus_num
        if threads and self.kernels == "torch":
            torch.set_num_threads(threads)
        # a LoadedModel is a model already in memory (the toolkit's built model, for chat_model)
        in_memory = isinstance(model, LoadedModel)
        self._device = torch.device(device)
        self._abort = threading.Event()
        self._running = threading.Event()
        self._model: Any = None
        self._decoder: Decoder | None = None
        self._stateless: StatelessForward
        if self.kernels == "llama.cpp":
            if dtype != "float32" or device != "cpu" or not compact_decoder:
                raise ConfigError(
                    "kernels='llama.cpp' computes on the CPU in the GGUF file's own types:"
                    " dtype, device and compact_decoder=False apply to kernels='torch' only"
                )
            from .llamacpp import LlamaCppDecoder, default_threads, import_llama_cpp

            import_llama_cpp()  # a missing extra fails before the slow reads below
            gguf = Path(model)  # type: ignore[arg-type]  # choose_kernels checked it
            described = describe_gguf(gguf)
            decoder = LlamaCppDecoder(
                gguf,
                n_ctx=config.max_context_len,
                threads=threads or default_threads(),
                batch_threads=batch_threads or threads or default_threads(),
                # only a request's own forward passes stop (not clear_kv_cache's replay)
                should_abort=lambda: self._abort.is_set() and self._running.is_set(),
            )
            self._decoder, self._stateless = decoder, decoder.stateless_forward
            tokenizer, cfg, generation_cfg = (
                described.tokenizer, described.config, described.generation_config
            )
            source_format, quantization = "gguf", described.quantization
        else:
            loaded = model if in_memory else load_pretrained(model, dtype=dtype)
            self._model = loaded.model.to(device)
            # a model passed in memory stays its caller's: its weights are not rearranged
            if compact_decoder:
                self._decoder = build_decoder(self._model, fuse=not in_memory)
            self._stateless = self._transformers_forward
            tokenizer, cfg = loaded.tokenizer, self._model.config
            generation_cfg = self._model.generation_config
            source_format, quantization = loaded.source_format, loaded.quantization
            # transformers 5 renamed past_key_values to cache; accept both generations
            params = inspect.signature(self._model.forward).parameters
            self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        if lookahead is None:
            # llama.cpp's quantized kernels cost per row (5 rows ~5.5× one row on SmolLM2),
            # and at some lengths round a multi-row batch differently from single steps:
            # guessing would slow decoding and let greedy text depend on the guesses
            lookahead = 4 if self.kernels == "torch" else 0
        self._lookahead = lookahead
        self._reuse_prefix = reuse_prefix
        self._reusable: list[int] = []  # ids of cached positions kept after a run ended
        self.tokenizer: Any = tokenizer
        self._config = config
        self._closed = False
        self._cache: Any = None
        self._cache_ids: list[int] = []  # tokens whose keys/values are in the cache
        self._pending: list[int] = []  # kept in history, not yet forwarded (last sampled token)
        self._template_override: ChatTemplateParts | None = None
        self._tools: tuple[str, str, str] | None = None
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self._eos_ids = self._collect_eos_ids(generation_cfg, cfg)
        self._bos_id = self.tokenizer.bos_token_id
        self._adds_bos = self._tokenizer_adds_bos()
        name = f"<in-memory {source_format} model>" if in_memory else str(model)
        path = Path(name)
        self.info = EngineInfo(
            backend="pc",
            model_path=name,
            model_name=path.stem if path.suffix else path.name,
            family="pc",
            architecture=getattr(cfg, "model_type", None),
            context_length=getattr(text_cfg, "max_position_embeddings", None),
            hidden_size=getattr(text_cfg, "hidden_size", None),
            vocab_size=getattr(text_cfg, "vocab_size", None),
            num_layers=getattr(text_cfg, "num_hidden_layers", None),
            platform="pc",
            quantization=quantization,
            tokenizer=type(self.tokenizer).__name__,
            chat_template=getattr(self.tokenizer, "chat_template", None),
            bos_token=self.tokenizer.bos_token,
            eos_token=self.tokenizer.eos_token,
            embedding_pooling=declared_pooling(path) if path.is_dir() else None,
            supports_logits=True,
            extra={
                "source_format": source_format,
                "device": device,
                "dtype": dtype if self.kernels == "torch" else (quantization or "gguf"),
                "kernels": self.kernels,
                "decoder": self._decoder_name(),
                **self._thread_counts(),
            },
        )
        if config.max_context_len > (self.info.context_length or config.max_context_len):
            log.warning(
                "max_context_len %d exceeds the model's trained context %s",
                config.max_context_len,
                self.info.context_length,
            )

    # --- helpers ---------------------------------------------------------------------------

    def _thread_counts(self) -> dict[str, int]:
        # llama.cpp's own counts (decode steps, multi-token batches); torch has one pool
        # for the whole process, which anyone may resize, so it is not reported
        if self.kernels == "llama.cpp":
            decode, batch = self._decoder.threads  # type: ignore[union-attr]
            return {"threads": decode, "batch_threads": batch}
        return {}

    def _decoder_name(self) -> str:
        if self.kernels == "llama.cpp":
            return "llama.cpp"
        return "compact" if self._decoder is not None else "transformers"

    def _collect_eos_ids(self, *sources: Any) -> set[int]:
        ids: set[int] = set()
        for source in sources:
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def _tokenizer_adds_bos(self) -> bool:
        if self._bos_id is None:
            return False
        with_special = self.tokenizer.encode("a", add_special_tokens=True)
        return bool(with_special) and with_special[0] == self._bos_id

    def _encode_prompt(self, text: str, fresh: bool) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        # the runtime prepends BOS at the start of a context for models that expect one
        if fresh and self._adds_bos and (not ids or ids[0] != self._bos_id):
            ids.insert(0, self._bos_id)
        return ids

    def _new_cache(self) -> Any:
        if self._decoder is not None:
            return self._decoder.new_cache(self._config.max_context_len)
        from transformers import DynamicCache

        return DynamicCache()

    def _forward(self, ids: Sequence[int] | None, embeds: torch.Tensor | None = None) -> Any:
        """Append ``ids`` (or ``embeds``) to the KV cache; return the last position's logits."""
        if self._cache is None:
            self._cache = self._new_cache()
        if self._decoder is not None:
            return self._decoder.forward(self._cache, ids, embeds)
        kwargs: dict[str, Any] = {self._cache_kwarg: self._cache, "use_cache": True}
        if embeds is not None:
            kwargs["inputs_embeds"] = embeds.to(self._device).unsqueeze(0)
        else:
            kwargs["input_ids"] = torch.tensor([list(ids or ())], device=self._device)
        out = self._model(**kwargs, logits_to_keep=1)  # the cache is updated in place
        return out.logits[0, -1]

    def _cache_is_decoders(self) -> bool:
        """The cache is the decoder's own (truncatable, kept between requests), not
        transformers' DynamicCache."""
        return self._cache is not None and self._decoder is not None

    def _reset_cache(self) -> None:
        if self._cache_is_decoders():
            self._cache.clear()  # keep the buffers for the next request
        else:
            self._cache = None
        self._cache_ids = []
        self._pending = []
        self._reusable = []

    def _release_history(self) -> None:
        """Forget the conversation. A static cache keeps its positions: the next prompt that
        starts with the same tokens (a system prompt, tool definitions) skips their prefill."""
        if not (self._reuse_prefix and self._cache_is_decoders()):
            self._reset_cache()
            return
        if self._cache_ids:
            self._reusable = self._cache_ids  # the ids of the cache's positions, in order
        self._cache_ids = []
        self._pending = []

    def _take_common_prefix(self, ids: Sequence[int]) -> int:
        """Keep the cached positions a fresh prompt shares with the previous one (all but its
        last token, whose logits are needed); how many were kept."""
        held, self._reusable = self._reusable, []
        if not self._cache_is_decoders():
            return 0
        shared, bound = 0, min(len(held), len(ids) - 1)
        while shared < bound and held[shared] == ids[shared]:
            shared += 1
        self._cache.truncate(shared)
        self._cache_ids = list(ids[:shared])
        return shared

    def _shift_window(self, needed: int) -> None:
        """Make room for ``needed`` tokens: keep the first n_keep, drop half of the rest."""
        limit = self._config.max_context_len
        history = self._cache_ids + self._pending
        n_keep = min(self._config.n_keep, len(history))
        while len(history) + needed > limit and len(history) > n_keep:
            n_discard = max(1, (len(history) - n_keep) // 2)
            history = history[:n_keep] + history[n_keep + n_discard :]
        log.debug("context shift: %d tokens kept", len(history))
        self._reset_cache()
        if history:
            self._forward(history)
            self._cache_ids = history

    # --- Engine protocol -------------------------------------------------------------------

    def run(self, request: Request, sink: Sink) -> None:
        """Run one request to the end; always finishes with FinishEvent or ErrorEvent."""
        if self._closed:
            sink.emit(ErrorEvent(GenerationError("the engine is closed")))
            return
        self._abort.clear()
        self._running.set()
        try:
            with torch.inference_mode():
                if request.mode == InferMode.GENERATE:
                    self._generate(request, sink)
                else:
                    self._prefill_only(request, sink)
        except AbortedError:  # the llama.cpp kernels stop inside a long forward pass
            if not request.keep_history:
                self._reset_cache()
            sink.emit(FinishEvent("abort"))
        except Exception as exc:  # carried to the caller, never lost
            if not request.keep_history:
                self._reset_cache()
            sink.emit(ErrorEvent(exc))
        finally:
            self._running.clear()

    def _request_ids(self, request: Request, fresh: bool) -> tuple[list[int], torch.Tensor | None]:
        item = request.input
        if isinstance(item, PromptInput):
            return self._encode_prompt(item.text, fresh), None
        if isinstance(item, TokenInput):
            return list(item.ids), None
        if isinstance(item, EmbedInput):
            embeds = torch.as_tensor(np.asarray(item.embeds, dtype=np.float32))
            if embeds.ndim != 2 or embeds.shape[1] != self.info.hidden_size:
                raise ConfigError(
                    f"embed input must have shape (n_tokens, {self.info.hidden_size}),"
                    f" got {tuple(embeds.shape)}"
                )
            return [], embeds
        if isinstance(item, MultimodalInput):
            raise ConfigError(
                "multimodal input needs a vision-language model; the PC engine runs text models"
            )
        raise ConfigError(f"{type(item).__name__} is only valid for hidden-state/logits modes")

    def _generate(self, request: Request, sink: Sink) -> None:
        params = request.sampling
        limit = self._config.max_context_len
        if not request.keep_history:
            self._release_history()
        fresh = not self._cache_ids and not self._pending
        ids, embeds = self._request_ids(request, fresh)
        n_new = len(ids) if embeds is None else int(embeds.shape[0])
        if n_new == 0:
            raise ConfigError("the prompt is empty: nothing to generate from")
        room = limit - self._config.n_keep if not fresh else limit
        if n_new + 1 > room:
            raise ContextLengthError(n_new, room - 1)
        if len(self._cache_ids) + len(self._pending) + n_new + 1 > limit:
            self._shift_window(n_new + 1)

        start = time.perf_counter()
        reused = self._take_common_prefix(ids) if fresh else 0
        ids = ids[reused:]
        pending, self._pending = self._pending, []
        if embeds is not None:
            if pending:
                self._forward(pending)
                self._cache_ids.extend(pending)
            logits = self._forward(None, embeds)
            # embedding rows have no ids; keep the count of positions with a placeholder
            self._cache_ids.extend([-1] * n_new)
        else:
            try:
                logits = self._forward(pending + ids)
            except AbortedError:
                self._pending = pending  # the history stays as it was
                raise
            self._cache_ids.extend(pending + ids)
        prefill_ms = (time.perf_counter() - start) * 1000.0
        if request.save_prompt_cache and request.prompt_cache_path:
            np.savez(request.prompt_cache_path, ids=np.asarray(self._cache_ids, dtype=np.int64))

        sampler = Sampler(params, int(logits.shape[-1]))
        decoder = IncrementalDecoder(self.tokenizer, self._config.skip_special_token)
        generated: list[int] = []
        decode_start = time.perf_counter()
        # greedy picks are deterministic: guessed continuations can be checked in one pass
        lookup = None
        if self._decoder is not None and params.greedy and self._lookahead > 0:
            lookup = PromptLookup(self._cache_ids, max_draft=self._lookahead)
        guesses: list[tuple[int, torch.Tensor]] = []  # forwarded, not yet confirmed
        try:
            reason = self._decode_loop(
                params, sampler, decoder, sink, generated, logits, lookup, guesses
            )
        finally:
            self._drop_guesses(guesses)
        tail = decoder.flush()
        if tail and reason != "stop":
            sink.emit(TokenEvent(tail, -1))
        decode_ms = (time.perf_counter() - decode_start) * 1000.0
        if not request.keep_history:
            self._release_history()
        sink.emit(
            FinishEvent(
                reason=reason,
                perf=PerfStats(
                    prefill_ms, n_new - reused, decode_ms, len(generated), _rss_mb()
                ),
                prompt_tokens=n_new,
                completion_tokens=len(generated),
            )
        )

    def _decode_loop(
        self,
        params: ResolvedSampling,
        sampler: Sampler,
        decoder: IncrementalDecoder,
        sink: Sink,
        generated: list[int],
        logits: torch.Tensor,
        lookup: PromptLookup | None,
        guesses: list[tuple[int, torch.Tensor]],
    ) -> FinishReason:
        """Sample, emit and forward token by token until a stop; the finish reason."""
        while True:
            token = sampler(logits, self._cache_ids[-params.repeat_last_n :] + generated)
            generated.append(token)
            is_eos = token in self._eos_ids and not self._config.ignore_eos_token
            if is_eos:
                # the runtime does not surface the EOS token's text
                self._pending = [token]
                return "stop"
            keep_going = sink.emit(TokenEvent(decoder.push(token), token))
            if not keep_going:
                self._pending = [token]
                return "stop"
            if self._abort.is_set():
                self._pending = [token]
                return "abort"
            if len(generated) >= params.max_new_tokens:
                self._pending = [token]
                return "length"
            logits = self._next_logits(token, lookup, guesses)

    def _next_logits(
        self, token: int, lookup: PromptLookup | None, guesses: list[tuple[int, torch.Tensor]]
    ) -> torch.Tensor:
        """Logits after ``token``: a confirmed guess's, else a forward of ``token`` (with new
        guesses after it when ``lookup`` has some)."""
        if guesses and guesses[0][0] == token:
            self._cache_ids.append(token)
            if lookup is not None:
                lookup.extend([token])
            return guesses.pop(0)[1]
        self._drop_guesses(guesses)
        limit = self._config.max_context_len
        if len(self._cache_ids) + 1 > limit:
            self._shift_window(1)
        drafts: list[int] = []
        if lookup is not None:
            lookup.extend([token])
            drafts = lookup.propose(limit - len(self._cache_ids) - 1)
        if not drafts or self._decoder is None:
            logits = self._forward([token])
            self._cache_ids.append(token)
            return logits
        rows = self._decoder.forward(self._cache, [token, *drafts], all_rows=True)
        self._cache_ids.append(token)
        guesses.extend(zip(drafts, rows[1:], strict=True))
        return rows[0]

    def _drop_guesses(self, guesses: list[tuple[int, torch.Tensor]]) -> None:
        """Forget forwarded guesses that were not confirmed (their cache positions too)."""
        if guesses and self._cache_is_decoders():
            self._cache.truncate(self._cache.length - len(guesses))
        guesses.clear()

    def _prefill_only(self, request: Request, sink: Sink) -> None:
        """Hidden-state or logits mode: one forward over each sequence, no cache kept."""
        item = request.input
        if isinstance(item, TokenBatchInput):
            sequences = [list(seq) for seq in item.sequences]
        else:
            ids, embeds = self._request_ids(request, fresh=True)
            if embeds is not None:
                raise ConfigError("hidden-state/logits modes take text or token input")
            sequences = [ids]
        limit = self._config.max_context_len
        for seq in sequences:
            if not seq:
                raise ConfigError("cannot compute hidden states of an empty sequence")
            if len(seq) > limit:
                raise ContextLengthError(len(seq), limit)
        start = time.perf_counter()
        want_hidden = request.mode == InferMode.LAST_HIDDEN_LAYER
        outputs = self._stateless(sequences, want_hidden)
        total = sum(len(s) for s in sequences)
        for out in outputs:
            if self._abort.is_set():
                sink.emit(FinishEvent("abort", prompt_tokens=total))
                return
            event = HiddenStateEvent(out) if want_hidden else LogitsEvent(out)
            if not sink.emit(event):
                break
        elapsed = (time.perf_counter() - start) * 1000.0
        sink.emit(
            FinishEvent("stop", PerfStats(elapsed, total, 0.0, 0, _rss_mb()), prompt_tokens=total)
        )

    def _transformers_forward(
        self, sequences: list[list[int]], hidden: bool
    ) -> list[np.ndarray]:
        longest = max(len(s) for s in sequences)
        ids = torch.zeros((len(sequences), longest), dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        if hidden:
            base = self._model.get_decoder() if hasattr(self._model, "get_decoder") else None
            if base is None:
                base = self._model.base_model
            # the decoder's last_hidden_state is taken after the final norm, as on the NPU
            states = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            states = self._model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        states = states.float().cpu().numpy()
        return [states[row, : len(seq)].copy() for row, seq in enumerate(sequences)]

    def abort(self) -> None:
        """Stop the running request before its next token."""
        if self._running.is_set():
            self._abort.set()

    def is_running(self) -> bool:
        """True while a request runs."""
        return self._running.is_set()

    def clear_kv_cache(
        self,
        keep_system_prompt: bool = False,
        start_pos: Sequence[int] | None = None,
        end_pos: Sequence[int] | None = None,
    ) -> None:
        """Forget the conversation held in the KV cache."""
        if start_pos is not None or end_pos is not None:
            history = self._cache_ids + self._pending
            start = start_pos[0] if start_pos else 0
            end = end_pos[0] if end_pos else len(history)
            if not 0 <= start <= end <= len(history):
                raise ConfigError(f"range {start}..{end} is outside the cache (0..{len(history)})")
            kept = history[:start] + history[end:]
            self._reset_cache()
            if kept:
                with torch.inference_mode():
                    self._forward(kept)
                self._cache_ids = kept
            return
        self._reset_cache()

    def kv_cache_size(self) -> list[int]:
        """Tokens in the cache (a single batch slot on the PC)."""
        return [len(self._cache_ids) + len(self._pending)]

    def set_chat_template(self, system: str, prefix: str, postfix: str) -> None:
        """Replace the model's template with the runtime's simple system/prefix/postfix form."""
        self._template_override = ChatTemplateParts(system, prefix, postfix)
        self.info.template_parts = self._template_override
        self.info.chat_template = None

    def set_function_tools(self, system: str, tools_json: str, tool_response_str: str) -> None:
        """Remember tools; the model layer renders them through the chat template."""
        self._tools = (system, tools_json, tool_response_str)
        self.info.extra["function_tools"] = self._tools

    def load_lora(self, path: str, name: str, scale: float = 1.0) -> None:
        """LoRA adapters need peft, which the PC engine does not depend on."""
        raise ConfigError(
            "LoRA adapters are not supported by the PC engine yet; merge the adapter into the"
            " base model (peft's merge_and_unload) and load the merged directory"
        )

    def load_prompt_cache(self, path: str) -> None:
        """Restore a KV cache saved with save_prompt_cache (token ids, re-prefilled)."""
        data = np.load(path)
        ids = [int(x) for x in data["ids"]]
        if len(ids) > self._config.max_context_len:
            raise ContextLengthError(len(ids), self._config.max_context_len, f"prompt cache {path}")
        self._reset_cache()
        with torch.inference_mode():
            self._forward(ids)
        self._cache_ids = ids

    def release_prompt_cache(self) -> None:
        """Drop the cache restored by load_prompt_cache."""
        self._reset_cache()

    def close(self) -> None:
        """Release the model; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._abort.set()
        self._reset_cache()
        self._cache = None
        if self._decoder is not None:
            self._decoder.close()
        self._decoder = None
        self._model = None


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0
