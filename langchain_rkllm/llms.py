"""RKLLM: a LangChain completion LLM (the prompt is sent as is, no chat template)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from rkllm_core import GenerationResult

from ._common import RKLLMParams, check_no_unknown


class RKLLM(RKLLMParams, LLM):
    """Text completion with RKLLM (NPU) or the PC engine.

    Same fields, lazy shared loading, stop handling (stop strings that span tokens are
    caught and never shown), streaming and non-blocking async as :class:`ChatRKLLM`.

    Example:
        .. code-block:: python

            from langchain_rkllm import RKLLM

            llm = RKLLM(model="smollm2", max_tokens=32, temperature=0)
            print(llm.invoke("The three primary colours are"))
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(), extra="forbid")

    @property
    def _llm_type(self) -> str:
        return "rkllm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, **self._default_sampling()}

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer."""
        return self._get_model().tokenize(text)

    def _open(self, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[Any, dict, str]:
        kwargs = dict(kwargs)
        name = kwargs.pop("model", None) or self.model
        options = self._call_options(stop, kwargs)
        check_no_unknown(kwargs, type(self).__name__)
        return self._get_model(name), options, name

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        model, options, name = self._open(stop, kwargs)
        stream = model.stream(prompt, **options)
        try:
            for piece in stream:
                chunk = GenerationChunk(text=piece.text)
                if run_manager:
                    run_manager.on_llm_new_token(piece.text, chunk=chunk)
                yield chunk
            result = stream.result
        finally:
            stream.close()
        yield GenerationChunk(text="", generation_info=_info(result, name))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        model, options, name = self._open(stop, kwargs)
        stream = model.astream(prompt, **options)
        try:
            async for piece in stream:
                chunk = GenerationChunk(text=piece.text)
                if run_manager:
                    await run_manager.on_llm_new_token(piece.text, chunk=chunk)
                yield chunk
            result = await stream.aresult()
        finally:
            await stream.aclose()
        yield GenerationChunk(text="", generation_info=_info(result, name))

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(c.text for c in self._stream(prompt, stop, run_manager, **kwargs))

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # Built on _stream (not _call) so every Generation carries usage and timings.
        generations = []
        for prompt in prompts:
            merged: GenerationChunk | None = None
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                merged = chunk if merged is None else merged + chunk
            assert merged is not None
            generations.append([Generation(text=merged.text,
                                           generation_info=merged.generation_info)])
        return LLMResult(generations=generations, llm_output=_llm_output(generations, self.model))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            merged: GenerationChunk | None = None
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                merged = chunk if merged is None else merged + chunk
            assert merged is not None
            generations.append([Generation(text=merged.text,
                                           generation_info=merged.generation_info)])
        return LLMResult(generations=generations, llm_output=_llm_output(generations, self.model))


def _info(result: GenerationResult, name: str) -> dict[str, Any]:
    meta = result.metadata()
    return {"model_name": name, **{k: v for k, v in meta.items() if k != "perf"}, **meta["perf"]}


def _llm_output(generations: list[list[Generation]], name: str) -> dict[str, Any]:
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for (generation,) in generations:
        for key, value in (generation.generation_info or {}).get("usage", {}).items():
            totals[key] += value
    return {"token_usage": totals, "model_name": name}
