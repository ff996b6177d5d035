"""Marshalling: our config and requests into the ABI structs of the loaded runtime's layout.

Fields a family lacks are left out with a warning (never written past a struct); the sampling
fields, the same in ``RKLLMParam`` and 1.3's ``RKLLMSamplingParam``, are copied by the one list
:data:`~.abi.SAMPLING_FIELD_NAMES`. Every buffer a struct points to is appended to ``keep``,
which the caller holds for as long as the runtime may read it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import RuntimeConfig
from ..engine import (
    EmbedInput,
    MultimodalInput,
    PromptInput,
    Request,
    RequestInput,
    TokenInput,
)
from ..errors import ConfigError, UnsupportedFeatureError
from .abi import SAMPLING_FIELD_NAMES
from .callback import PAUSE
from .library import RuntimeLibrary

log = logging.getLogger(__name__)

WarnOnce = Callable[..., None]  # (key, message, *args)


def copy_sampling(target: Any, values: Any) -> None:
    """Set every runtime sampling field of the struct ``target`` from ``values``."""
    for name in SAMPLING_FIELD_NAMES:
        setattr(target, name, getattr(values, name))


class Structs:
    """Builds the structs of one runtime layout for one engine."""

    def __init__(self, runtime: RuntimeLibrary, config: RuntimeConfig,
                 hidden_size: int | None, warn_once: WarnOnce) -> None:
        self.ffi = runtime.ffi
        self.lib: Any = runtime.lib
        self.spec = runtime.spec
        self.family = runtime.family
        self.config = config
        self.hidden_size = hidden_size
        self.warn_once = warn_once

    # --- rkllm_init ------------------------------------------------------------------------

    def init_param(self, model_path: str, keep: list[Any]) -> Any:
        """``RKLLMParam`` from the runtime's defaults and every field the layout has."""
        ffi, spec, cfg = self.ffi, self.spec, self.config
        param = ffi.new("RKLLMParam*", self.lib.rkllm_createDefaultParam())
        path_c = ffi.new("char[]", os.fsencode(os.path.abspath(model_path)))
        keep.append(path_c)
        param.model_path = path_c
        param.max_context_len = cfg.max_context_len
        param.max_new_tokens = cfg.max_new_tokens
        copy_sampling(param, cfg)
        param.skip_special_token = cfg.skip_special_token
        param.is_async = cfg.is_async
        ignored = []
        if spec.n_keep:
            param.n_keep = cfg.n_keep
        elif cfg.n_keep:
            ignored.append("n_keep")
        if spec.ignore_eos_token:
            param.ignore_eos_token = cfg.ignore_eos_token
        elif cfg.ignore_eos_token:
            ignored.append("ignore_eos_token")
        if spec.img_fields_in_param:
            for name in ("img_start", "img_end", "img_content"):
                s = ffi.new("char[]", getattr(cfg, name).encode())
                keep.append(s)
                setattr(param, name, s)
        ext = param.extend_param
        ffi.memmove(ffi.addressof(ext), b"\0" * ffi.sizeof("RKLLMExtendParam"),
                    ffi.sizeof("RKLLMExtendParam"))
        ext.base_domain_id = cfg.base_domain_id
        if spec.extend_cpus:
            ext.embed_flash = int(cfg.embed_flash)
            ext.enabled_cpus_num = cfg.enabled_cpus_num
            ext.enabled_cpus_mask = cfg.enabled_cpus_mask
        else:
            ignored += [n for n in ("embed_flash", "enabled_cpus") if getattr(cfg, n)]
        if spec.extend_batch:
            ext.n_batch = cfg.n_batch
            ext.use_cross_attn = int(cfg.use_cross_attn)
        else:
            if cfg.n_batch != 1:
                ignored.append("n_batch")
            if cfg.use_cross_attn:
                ignored.append("use_cross_attn")
        if ignored:
            log.warning("RKLLM runtime family %s has no %s; ignored", self.family,
                        ", ".join(ignored))
        keep.append(param)
        return param

    def result_callback(self, on_result: Callable[[Any, Any, int], int],
                        keep: list[Any]) -> Any:
        """The C callback of the family (int or void), and what ``rkllm_init`` takes: the
        function pointer, or 1.3's ``RKLLMCallback*``."""
        ffi, spec = self.ffi, self.spec
        if spec.callback_returns_int:
            cb = ffi.callback("int(*)(RKLLMResult*, void*, LLMCallState)", on_result,
                              error=PAUSE)
        else:
            def on_result_void(result: Any, userdata: Any, state: int) -> None:
                on_result(result, userdata, state)
            cb = ffi.callback("void(*)(RKLLMResult*, void*, LLMCallState)", on_result_void)
        keep.append(cb)
        if not spec.callback_struct:
            return cb
        cbs = ffi.new("RKLLMCallback*")
        cbs.result_callback = cb
        keep.append(cbs)
        return cbs

    # --- rkllm_run -------------------------------------------------------------------------

    def input(self, item: RequestInput, request: Request, keep: list[Any]) -> Any:
        """``RKLLMInput`` for one task."""
        ffi, spec = self.ffi, self.spec
        rk = ffi.new("RKLLMInput*")
        keep.append(rk)
        if spec.role:
            role = ffi.new("char[]", request.role.encode())
            keep.append(role)
            rk.role = role
            rk.enable_thinking = bool(request.enable_thinking)
        else:
            if request.role != "user":
                self.warn_once("role", "role=%r needs RKLLM runtime 1.2.1+; ignored",
                               request.role)
            if request.enable_thinking:
                self.warn_once("thinking", "enable_thinking needs RKLLM runtime 1.2.1+; ignored")
        if isinstance(item, PromptInput):
            text = ffi.new("char[]", item.text.encode("utf-8"))
            keep.append(text)
            rk.input_type = 0
            rk.prompt_input = text
        elif isinstance(item, TokenInput):
            if not item.ids:
                raise ConfigError("token input is empty")
            ids = ffi.new("int32_t[]", list(item.ids))
            keep.append(ids)
            rk.input_type = 1
            rk.token_input.input_ids = ids
            rk.token_input.n_tokens = len(item.ids)
        elif isinstance(item, EmbedInput):
            arr = self.float_matrix(item.embeds, "embeds")
            keep.append(arr)
            rk.input_type = 2
            rk.embed_input.embed = ffi.cast("float*", ffi.from_buffer(arr))
            rk.embed_input.n_tokens = arr.shape[0]
        elif isinstance(item, MultimodalInput):
            self._multimodal(rk, item, keep)
        else:
            raise ConfigError(f"unsupported input {type(item).__name__}")
        return rk

    def float_matrix(self, data: Any, what: str) -> np.ndarray:
        """A C-contiguous float32 (n_tokens, hidden) copy of ``data``, checked."""
        arr = np.ascontiguousarray(data, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ConfigError(f"{what} must have shape (n_tokens, hidden), got {arr.shape}")
        hidden = self.hidden_size
        if hidden and arr.shape[1] != hidden:
            raise ConfigError(f"{what} rows have {arr.shape[1]} values; the model's hidden size"
                              f" is {hidden}")
        return arr

    def _multimodal(self, rk: Any, item: MultimodalInput, keep: list[Any]) -> None:
        ffi, spec, cfg = self.ffi, self.spec, self.config
        emb = np.ascontiguousarray(item.image_embeds, dtype=np.float32)
        n_image = item.n_image
        if emb.ndim == 3:
            n_image, per_image = emb.shape[0], emb.shape[1]
            emb = emb.reshape(-1, emb.shape[2])
        elif emb.ndim == 2 and n_image > 0 and emb.shape[0] % n_image == 0:
            per_image = emb.shape[0] // n_image
        else:
            raise ConfigError(f"image_embeds of shape {emb.shape} do not split into"
                              f" n_image={item.n_image} images")
        emb = self.float_matrix(emb, "image_embeds")
        prompt = ffi.new("char[]", item.prompt.encode("utf-8"))
        keep += [emb, prompt]
        rk.input_type = 3
        mm = rk.multimodal_input
        mm.prompt = prompt
        ptr = ffi.cast("float*", ffi.from_buffer(emb))
        if spec.multimodal == "image_video":
            img = mm.image
            img.image_embed = ptr
            img.n_image_tokens = per_image
            img.n_image = n_image
            for name in ("start", "end", "content"):
                s = ffi.new("char[]", getattr(cfg, f"img_{name}").encode())
                keep.append(s)
                setattr(img, f"image_{name}", s)
            img.image_width = item.image_width
            img.image_height = item.image_height
        else:
            mm.image_embed = ptr
            if spec.multimodal == "sized":
                mm.n_image_tokens = per_image
                mm.n_image = n_image
                mm.image_width = item.image_width
                mm.image_height = item.image_height
            else:
                if n_image != 1:
                    raise UnsupportedFeatureError(
                        f"several images per prompt need RKLLM runtime 1.2.1b1+ (family"
                        f" {self.family} takes one)")
                mm.n_image_tokens = per_image

    def infer(self, request: Request, keep: list[Any], loras: set[str]) -> Any:
        """``RKLLMInferParam`` for one task (1.3: with its own sampling parameters)."""
        ffi, spec = self.ffi, self.spec
        p = ffi.new("RKLLMInferParam*")
        keep.append(p)
        p.mode = int(request.mode)
        if request.lora_adapter:
            if request.lora_adapter not in loras:
                raise ConfigError(f"LoRA adapter {request.lora_adapter!r} is not loaded (loaded:"
                                  f" {sorted(loras) or 'none'}); call load_lora first")
            lp = ffi.new("RKLLMLoraParam*")
            name = ffi.new("char[]", request.lora_adapter.encode())
            lp.lora_adapter_name = name
            keep += [lp, name]
            p.lora_params = lp
        if request.prompt_cache_path:
            cp = ffi.new("RKLLMPromptCacheParam*")
            path = ffi.new("char[]", os.fsencode(request.prompt_cache_path))
            cp.save_prompt_cache = int(request.save_prompt_cache)
            cp.prompt_cache_path = path
            keep += [cp, path]
            p.prompt_cache_params = cp
        elif request.save_prompt_cache:
            raise ConfigError("save_prompt_cache=True needs prompt_cache_path")
        if spec.name != "1.1":
            p.keep_history = int(request.keep_history)
        elif request.keep_history:
            self.warn_once("keep_history", "RKLLM runtime family 1.1 has no keep_history:"
                           " every run starts from an empty context")
        if spec.sampling_per_run:
            sp = ffi.new("RKLLMSamplingParam*")
            copy_sampling(sp, request.sampling)
            keep.append(sp)
            p.sampling_params = sp
            p.max_new_tokens = request.sampling.max_new_tokens
        return p
