"""``RKLLM``: Rockchip's rkllm-toolkit conversion API, simulated on the PC.

A conversion script written for Rockchip's toolkit runs unchanged with
``from rkllm_core.toolkit import RKLLM`` in place of ``from rkllm.api import RKLLM``: the same
methods, parameters and return codes (0 success, -1 failure; the reason is logged). With
``RKLLM(strict=True)`` failures raise typed exceptions from :mod:`rkllm_core.errors` instead.

``export_rkllm`` writes our portable ``.rkllm-pc`` directory (see :mod:`.export`); a ``.rkllm``
path is handed to Rockchip's own toolkit when it is installed, and refused otherwise.
``export_gptq`` (rkllm-py only) writes a Hugging Face GPTQ checkpoint (see :mod:`.gptq_export`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import (
    BuildConfigError,
    ConfigError,
    EngineUnavailableError,
    ExportError,
    ModelNotFoundError,
    RKLLMError,
)
from .calibration import GENERATION_BUDGET_S, SOURCES, Calibration, builtin_digest
from .dataset import dataset_digest, load_dataset
from .quant.calibrators import ALGORITHMS
from .quant.formats import (
    ACT_MODES,
    GGUF_TYPE_TO_DTYPE,
    check_max_context,
    check_platform,
    parse_dtype,
    parse_platform,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DTYPES_TORCH = ("float32", "float16", "bfloat16")
CUSTOM_CONFIG_KEYS = {
    "BLOCKNAME", "TOKEN_EMBD", "ATTN_NORM", "ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_QKV", "ATTN_OUT",
    "FFN_NORM", "FFN_UP", "FFN_GATE", "FFN_DOWN", "ACT_TYPE", "OUTPUT_NORM", "OUTPUT",
    "ATTN_Q_NORM", "ATTN_K_NORM", "FFN_GATE_UP", "ROPE_TYPE", "MODEL_TYPE",
}  # fmt: skip
ACT_TYPES = ("silu", "gelu", "relu", "fatrelu", "squarerelu", "swiglu")
#: Calibration samples are cut to this many tokens, and at most this many samples are used:
#: more data costs time linearly and gains little for ranges and Hessians.
CALIB_MAX_TOKENS = 512
CALIB_MAX_SAMPLES = 128
#: manifest entries a build with ``extra_qparams`` takes from the export it reuses: they say how
#: the reused numbers were found
REUSED_MANIFEST_KEYS = (
    "quantized_algorithm",
    "calibration_algorithm",
    "optimization_level",
    "optimizations",
    "hybrid_rate",
    "hybrid_layers",
    "calibration",
)


def _rockchip_call(fn: Callable[..., T]) -> Callable[..., int | T]:
    """Turn exceptions into Rockchip's -1 (logged), or re-raise in strict mode."""

    @functools.wraps(fn)
    def wrapper(self: RKLLM, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except RKLLMError as exc:
            log.error("%s failed: %s", fn.__name__, exc)
            if self.strict:
                raise
            return -1
        except Exception as exc:
            log.exception("%s failed: %s", fn.__name__, exc)
            if self.strict:
                raise
            return -1

    return wrapper


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_digest(path: Path) -> dict[str, Any]:
    """sha256 of a GGUF file, or of a model directory's weight files (each, and combined)."""
    if path.is_file():
        return {"sha256": _sha256_file(path)}
    files = sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
    )
    per_file = {p.name: _sha256_file(p) for p in files}
    combined = hashlib.sha256(json.dumps(per_file, sort_keys=True).encode()).hexdigest()
    return {"sha256": combined, "files": per_file}


class RKLLM:
    """Load a model, build (quantize) it, simulate it on the PC and export it.

    Args:
        strict: raise typed :mod:`rkllm_core.errors` exceptions instead of returning -1.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._model: Any = None  # the float source model
        self._tokenizer: Any = None
        self._source: dict[str, Any] = {}
        self._built: Any = None  # the quantized (or fp16) model after build()
        self._manifest: dict[str, Any] = {}
        self._device = "cpu"
        # default calibrations of the loaded model, by (source, tokens, budget, whole text): several
        # builds after one load (a script trying dtypes) tokenize or generate their text once
        self._default_cals: dict[tuple[str, int, float, bool], Calibration] = {}

    # ------------------------------------------------------------------ loading

    @_rockchip_call
    def load_huggingface(
        self,
        model: str | os.PathLike[str],
        model_lora: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        custom_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        load_weight: bool = True,
    ) -> int:
        """Load a Hugging Face model directory (optionally merging a LoRA); 0 or -1."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = Path(model).expanduser()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{str(model)!r} is not a Hugging Face model directory (no config.json);"
                f" pass the directory holding config.json and the weights, or use load_gguf()"
            )
        torch_dtype = self._check_device_dtype(device, dtype)
        custom = self._check_custom_config(custom_config)
        cfg_json = json.loads((path / "config.json").read_text(encoding="utf-8"))
        # models whose code is not part of transformers (ChatGLM3, InternLM2 …) ship it in
        # their directory; Rockchip's toolkit runs it too
        remote = "auto_map" in cfg_json
        if remote:
            log.warning("%s uses its own modelling code (auto_map): running it", path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        if load_weight:
            lm = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=remote
            )
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
            lm = AutoModelForCausalLM.from_config(config, trust_remote_code=remote)
            lm = lm.to(torch_dtype)
        if model_lora is not None:
            from .lora import merge_lora

            merge_lora(lm, model_lora)
        self._set_model(lm.to(device).eval(), tokenizer, device)
        self._source = {
            "kind": "huggingface",
            "path": str(path.absolute()),
            "model_type": getattr(lm.config, "model_type", None),
            "lora": str(Path(model_lora).absolute()) if model_lora else None,
            "load_weight": bool(load_weight),
            "custom_config": custom,
            **(_source_digest(path) if load_weight else {}),
        }
        log.info("loaded %s (%s, %s)", path, self._source["model_type"], dtype)
        return 0

    @_rockchip_call
    def load_gguf(self, model: str | os.PathLike[str]) -> int:
        """Load a GGUF file (any tensor type the gguf library dequantizes); 0 or -1.

        Rockchip's toolkit accepts q4_0 and f16 only; the source type is recorded, and q4_0
        corresponds to ``w4a16_g32``.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {str(model)!r} does not exist")
        gguf_type = _gguf_tensor_type(path)
        if gguf_type not in ("Q4_0", "F16"):
            log.info(
                "%s holds %s tensors; Rockchip's toolkit accepts only q4_0 and fp16 GGUF,"
                " rkllm-py dequantizes it to float32",
                path.name,
                gguf_type,
            )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        lm = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        # the weights are fully dequantized: drop the "gguf-quantized" marks transformers leaves,
        # which would block dtype casts and leak into the exported config
        for attr in ("hf_quantizer", "quantization_method"):
            if getattr(lm, attr, None) is not None:
                setattr(lm, attr, None)
        if "is_quantized" in vars(lm):
            lm.is_quantized = False
        if hasattr(lm.config, "quantization_config"):
            delattr(lm.config, "quantization_config")
        self._set_model(lm.eval(), tokenizer, "cpu")
        self._source = {
            "kind": "gguf",
            "path": str(path.absolute()),
            "model_type": getattr(lm.config, "model_type", None),
            "gguf_tensor_type": gguf_type,
            "gguf_equivalent_dtype": GGUF_TYPE_TO_DTYPE.get(gguf_type or ""),
            **_source_digest(path),
        }
        return 0

    def _set_model(self, model: Any, tokenizer: Any, device: str) -> None:
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self._built, self._manifest = None, {}
        self._default_cals = {}

    @staticmethod
    def _check_device_dtype(device: str, dtype: str) -> Any:
        import torch

        if device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailableError(
                "device='cuda' but torch sees no CUDA GPU here: use device='cpu'"
            )
        if dtype not in DTYPES_TORCH:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES_TORCH)}, not {dtype!r}")
        return getattr(torch, dtype)

    @staticmethod
    def _check_custom_config(custom: Any) -> dict[str, Any] | None:
        if custom is None:
            return None
        if isinstance(custom, (str, os.PathLike)):
            p = Path(custom).expanduser()
            if not p.is_file():
                raise ConfigError(f"custom_config file {str(custom)!r} does not exist")
            custom = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(custom, Mapping):
            raise ConfigError("custom_config must be a JSON object of module names")
        unknown = sorted(set(custom) - CUSTOM_CONFIG_KEYS)
        if unknown:
            raise ConfigError(
                f"custom_config has unknown keys {unknown}: known keys are"
                f" {', '.join(sorted(CUSTOM_CONFIG_KEYS))}"
            )
        act = custom.get("ACT_TYPE")
        if act is not None and str(act).lower() not in ACT_TYPES:
            raise ConfigError(f"custom_config ACT_TYPE {act!r} is not one of {ACT_TYPES}")
        # the model itself runs through transformers; the mapping is recorded for the export
        return dict(custom)

    # ------------------------------------------------------------------ build

    @_rockchip_call
    def build(
        self,
        do_quantization: bool = True,
        optimization_level: int = 1,
        quantized_dtype: str = "w8a8",
        quantized_algorithm: str = "normal",
        target_platform: str = "rk3588",
        num_npu_core: int = 3,
        extra_qparams: str | os.PathLike[str] | None = None,
        dataset: str | os.PathLike[str] | list[dict[str, str]] | None = None,
        hybrid_rate: float = 0,
        max_context: int = 4096,
        *,
        activation_mode: str = "static",
        calibration_source: str = "builtin",
        calibration_budget_s: float = GENERATION_BUDGET_S,
    ) -> int:
        """Quantize the loaded model for ``target_platform``; 0 or -1.

        Every argument is validated before any work starts. ``activation_mode`` (rkllm-py
        only) picks how ``a8`` dtypes scale activations: ``static`` (calibrated, the default),
        ``dynamic`` (per call) or ``per_token`` (a bound, see :mod:`.quant.qlinear`). The built
        model replaces any earlier build; the loaded float
        model is kept, so several builds can follow one load.

        Without a ``dataset``, a build that needs calibration uses ``calibration_source``
        (rkllm-py only; see :mod:`.calibration`): ``builtin`` (the package's own calibration
        text, the default), ``generated`` (text the model writes itself, within
        ``calibration_budget_s`` seconds) or ``builtin+generated``. GPTQ wants a few tokens
        per input of the widest layer (weight-only builds take the whole built-in text even
        past that); static activation ranges alone take fewer.
        """
        import torch

        from .quant.pipeline import BuildPlan, alternative_group, quantize_model, target_linears

        if self._model is None:
            raise ConfigError("no model loaded: call load_huggingface() or load_gguf() first")
        if not isinstance(do_quantization, bool):
            raise BuildConfigError(
                f"do_quantization must be True or False, not {do_quantization!r}"
            )
        if optimization_level not in (0, 1) or isinstance(optimization_level, bool):
            raise BuildConfigError(
                f"optimization_level must be 0 (none) or 1 (accuracy optimisation: GPTQ, and"
                f" SmoothQuant for a8 dtypes), not {optimization_level!r}"
            )
        dtype = parse_dtype(quantized_dtype)
        platform = parse_platform(target_platform)
        check_platform(dtype, platform, num_npu_core)
        check_max_context(max_context)
        algorithm, gptq = self._check_algorithm(quantized_algorithm, dtype, optimization_level)
        if activation_mode not in ACT_MODES:
            raise BuildConfigError(
                f"activation_mode must be one of {', '.join(ACT_MODES)}, not {activation_mode!r}"
            )
        if calibration_source not in SOURCES:
            raise BuildConfigError(
                f"calibration_source must be one of {', '.join(SOURCES)},"
                f" not {calibration_source!r}"
            )
        if (
            isinstance(calibration_budget_s, bool)
            or not isinstance(calibration_budget_s, (int, float))
            or not calibration_budget_s > 0
        ):
            raise BuildConfigError(
                f"calibration_budget_s must be a number of seconds > 0, not"
                f" {calibration_budget_s!r}"
            )
        if (
            isinstance(hybrid_rate, bool)
            or not isinstance(hybrid_rate, (int, float))
            or not 0 <= hybrid_rate < 1
        ):
            raise BuildConfigError(f"hybrid_rate must be a number in [0, 1), not {hybrid_rate!r}")
        reused = None
        qparams = Path(extra_qparams).expanduser().absolute() if extra_qparams else None
        if qparams is not None:
            reused = self._check_qparams(
                qparams, do_quantization, dtype, activation_mode, hybrid_rate
            )
        samples = load_dataset(dataset)
        if reused is not None and samples:
            log.info("extra_qparams: the parameters are reused, the dataset is not needed")
        targets = target_linears(self._model)
        if do_quantization:
            if not targets:
                raise BuildConfigError("the model has no Linear layers to quantize")
            from .quant.formats import check_group_size

            for name, lin in targets.items():
                check_group_size(dtype, name, lin.in_features, lin.out_features)
            if hybrid_rate > 0 and all(
                alternative_group(dtype, platform, lin) is None for lin in targets.values()
            ):
                raise BuildConfigError(
                    f"hybrid_rate={hybrid_rate} mixes {dtype.name} with"
                    f" {'its ungrouped form' if dtype.group_size else 'a grouped variant'},"
                    f" but {platform.name.upper()} runs no such dtype for this model's layers"
                    f" (it accepts {', '.join(platform.dtypes)}): use hybrid_rate=0"
                )

        plan = BuildPlan(
            dtype=dtype,
            algorithm=algorithm,
            platform=platform,
            optimization_level=optimization_level,
            act_mode=activation_mode if dtype.quantizes_activations else None,
            hybrid_rate=float(hybrid_rate),
            gptq=gptq,
        )
        needs_data = (
            do_quantization
            and reused is None
            and (plan.act_mode == "static" or gptq or hybrid_rate > 0)
        )
        default_cal: Calibration | None = None
        if needs_data and not samples:
            from .calibration import default_calibration, tokens_wanted

            wanted = tokens_wanted(targets, gptq)
            whole = plan.whole_builtin_calibration
            key = (calibration_source, wanted, float(calibration_budget_s), whole)
            default_cal = self._default_cals.get(key)
            if default_cal is None:
                default_cal = self._default_cals[key] = default_calibration(
                    self._model,
                    self._tokenizer,
                    wanted,
                    source=calibration_source,
                    budget_s=float(calibration_budget_s),
                    whole_builtin=whole,
                )
            log.info("no dataset: calibrating on %s", default_cal.describe())

        report = None
        if qparams is not None:
            # the export's model already is the built model
            model = self._load_qparams(qparams, plan.act_mode)
        else:
            model = copy.deepcopy(self._model).float().eval()
            with torch.no_grad():
                if do_quantization:
                    if default_cal is not None:
                        batches = [
                            torch.tensor([seq], dtype=torch.long, device=self._device)
                            for seq in default_cal.sequences
                        ]
                    elif needs_data:
                        batches = self._calibration_batches(samples)
                    else:
                        batches = []
                    _, report = quantize_model(model, plan, batches)
                else:
                    from .quant.pipeline import round_float_params_to_fp16

                    round_float_params_to_fp16(model)
        self._built = model
        self._manifest = {
            "quantized_dtype": dtype.name if do_quantization else "float16",
            "group_size": dtype.group_size if do_quantization else None,
            "weight_bits": dtype.weight_bits if do_quantization else 16,
            "activation_bits": (dtype.act_bits or 16) if do_quantization else 16,
            "activation_mode": plan.act_mode if do_quantization else None,
            "do_quantization": do_quantization,
            "quantized_algorithm": quantized_algorithm,
            "calibration_algorithm": algorithm,
            "optimization_level": optimization_level,
            "optimizations": (["gptq"] if gptq else []) + (["smoothquant"] if plan.smooth else []),
            "target_platform": platform.name.upper(),
            "num_npu_core": num_npu_core,
            "hybrid_rate": float(hybrid_rate),
            "hybrid_layers": report.hybrid_layers if report else [],
            "max_context": max_context,
            "source": dict(self._source),
            "calibration": {
                "samples": report.calibration_samples if report else 0,
                "tokens": report.calibration_tokens if report else 0,
                "dataset": str(dataset) if isinstance(dataset, (str, os.PathLike)) else None,
                "dataset_sha256": dataset_digest(samples) if samples and needs_data else None,
                "default_source": default_cal.source if default_cal else None,
                "builtin_sha256": builtin_digest() if default_cal else None,
                "generated_tokens": default_cal.generated_tokens if default_cal else 0,
                "description": _describe_calibration(
                    dataset, samples, report, default_cal, needs_data
                ),
                "smoothed_groups": report.smoothed_groups if report else 0,
            },
            "float_params": "fp16",
            "quantized_layers": len(report.layers) if report else 0,
        }
        if reused is not None:
            # the numbers were found by the earlier build: describe how, and where they came from
            for key in REUSED_MANIFEST_KEYS:
                if key in reused:
                    self._manifest[key] = reused[key]
            self._manifest["quantized_layers"] = len(reused.get("layers", {}))
            self._manifest["qparams_from"] = str(qparams)
        log.info(
            "built %s for %s (%s, level %d)",
            self._manifest["quantized_dtype"],
            platform.name.upper(),
            algorithm,
            optimization_level,
        )
        return 0

    def _check_qparams(
        self,
        p: Path,
        do_quantization: bool,
        dtype: Any,
        activation_mode: str,
        hybrid_rate: float,
    ) -> dict[str, Any]:
        """The manifest of the export ``p`` whose quantization parameters ``build`` reuses,
        after checking that it fits the loaded model and the requested build."""
        from .export import SUFFIX, is_export, read_manifest

        if not do_quantization:
            raise BuildConfigError(
                "extra_qparams reuses quantization parameters: it needs do_quantization=True"
            )
        if not p.exists():
            raise BuildConfigError(f"extra_qparams: {p} does not exist")
        if not is_export(p):
            raise BuildConfigError(
                f"extra_qparams: {p} is not an rkllm-py export. rkllm-py reuses the parameters"
                f" of a directory written by an earlier export_rkllm() (NAME{SUFFIX}); it does"
                f" not read Rockchip's .qparams caches, whose format is undocumented"
            )
        old = read_manifest(p)
        mine, theirs = self._source.get("sha256"), old.get("source", {}).get("sha256")
        if not mine:
            raise BuildConfigError(
                "extra_qparams: the loaded model has no weights checksum to match (loaded with"
                " load_weight=False): load it with its weights"
            )
        if mine != theirs:
            raise BuildConfigError(
                f"extra_qparams: {p} was built from another model (source sha256"
                f" {str(theirs)[:12]}…, the loaded model's is {str(mine)[:12]}…): load the model"
                f" it was built from, or build without extra_qparams"
            )
        if str(old.get("quantized_dtype", "")).lower() != dtype.name:
            raise BuildConfigError(
                f"extra_qparams: {p} holds {old.get('quantized_dtype')} parameters, not"
                f" {dtype.name}: pass quantized_dtype={old.get('quantized_dtype')!r}"
            )
        if float(old.get("hybrid_rate", 0.0)) != float(hybrid_rate):
            raise BuildConfigError(
                f"extra_qparams: {p} was built with hybrid_rate={old.get('hybrid_rate')}, which"
                f" decided its layers' dtypes: pass the same hybrid_rate"
            )
        if (
            dtype.quantizes_activations
            and activation_mode == "static"
            and old.get("activation_mode") != "static"
        ):
            raise BuildConfigError(
                f"extra_qparams: {p} has no calibrated activation scales (it was built with"
                f" activation_mode={old.get('activation_mode')!r}): build it again with"
                f" static activations, or pass a per-call activation_mode"
            )
        return old

    def _load_qparams(self, path: Path, act_mode: str | None) -> Any:
        """The built model of the export ``path``, its a8 layers switched to ``act_mode``."""
        from .export import load_export
        from .quant.qlinear import QuantLinear

        model, _ = load_export(path)
        mine = {k: tuple(v.shape) for k, v in self._model.state_dict().items()}
        for name, mod in model.named_modules():
            if isinstance(mod, QuantLinear):
                want = mine.get(f"{name}.weight")
                if want != (mod.out_features, mod.in_features):
                    raise BuildConfigError(
                        f"extra_qparams: {path} layer {name} is {mod.out_features}x"
                        f"{mod.in_features}, the loaded model's is {want}"
                    )
                if mod.act_mode is not None and act_mode is not None and mod.act_mode != act_mode:
                    mod.use_dynamic_activations(act_mode)  # the integers do not depend on it
        del model.rkllm_manifest
        return model.float().eval()

    @staticmethod
    def _check_algorithm(name: str, dtype: Any, level: int) -> tuple[str, bool]:
        """(calibration algorithm, whether GPTQ runs) for ``quantized_algorithm``."""
        key = str(name).strip().lower()
        if key == "grq":
            if dtype.family != "w4a16":
                raise BuildConfigError(
                    f"quantized_algorithm 'grq' is for w4a16 dtypes only, not {dtype.name}"
                )
            return "normal", True  # Rockchip's maintainers describe grq as GPTQ-like
        if key.startswith(("normal_r", "grq_r")):
            raise BuildConfigError(
                f"quantized_algorithm {name!r} (quantization plus a recovery LoRA) is not"
                f" supported by rkllm-py: use one of {', '.join(ALGORITHMS)} or 'grq'"
            )
        if key not in ALGORITHMS:
            raise BuildConfigError(
                f"unknown quantized_algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}"
                f" or 'grq'"
            )
        return key, level >= 1

    def _calibration_batches(self, samples: list[dict[str, str]]) -> list[Any]:
        import torch

        if len(samples) > CALIB_MAX_SAMPLES:
            log.info(
                "using the first %d of %d calibration samples", CALIB_MAX_SAMPLES, len(samples)
            )
            samples = samples[:CALIB_MAX_SAMPLES]
        batches = []
        for s in samples:
            ids = self._tokenizer(s["input"] + s["target"], return_tensors="pt")["input_ids"]
            ids = ids[:, :CALIB_MAX_TOKENS]
            if ids.numel():
                batches.append(ids.to(self._device if self._device else "cpu").long())
        if not batches:
            raise BuildConfigError("the calibration dataset tokenizes to nothing")
        return [b.to(torch.long) for b in batches]

    # ------------------------------------------------------------------ export

    @_rockchip_call
    def export_rkllm(self, export_path: str | os.PathLike[str] = "./model.rkllm-pc") -> int:
        """Export the built model; 0 or -1.

        A path ending in ``.rkllm`` is an NPU model: it is delegated to Rockchip's toolkit
        (``rkllm.api``) when installed, and refused otherwise. Any other path becomes a
        portable ``.rkllm-pc`` directory (see :mod:`.export`).
        """
        from .export import SUFFIX, write_export

        if self._built is None:
            raise ConfigError("nothing to export: call build() first")
        path = Path(export_path).expanduser()
        if path.suffix.lower() == ".rkllm":
            if _rockchip_toolkit_available():
                return self._export_with_rockchip(path)
            raise ExportError(
                f"{path} would be an NPU model, but Rockchip's rkllm-toolkit (rkllm.api, x86-64"
                f" Linux only) is not installed, and rkllm-py does not write .rkllm files the"
                f" NPU cannot load. rkllm-py writes a portable quantized model instead: export"
                f" to {path.with_suffix(SUFFIX)} (PC engine: RKLLMModel(path, backend='pc'))"
            )
        if path.suffix.lower() != SUFFIX:
            log.info("exporting to %s (the %s suffix is recommended)", path, SUFFIX)
        write_export(path, self._built, self._tokenizer, self._manifest)
        return 0

    @_rockchip_call
    def export_gptq(self, export_path: str | os.PathLike[str]) -> int:
        """Export the built model as a Hugging Face GPTQ checkpoint directory; 0 or -1.

        rkllm-py only. The checkpoint (AutoGPTQ format v1, symmetric, ``desc_act`` false; see
        :mod:`.gptq_export`) holds exactly the integers and scales of the build, in the layout
        that Rockchip's toolkit (``load_huggingface``) and GPTQ loaders (AutoGPTQ, GPTQModel,
        transformers) read; it was checked against AutoGPTQ's published dequantization, not
        loaded by those tools (none is installable offline). The build's layers must share
        one layout Rockchip accepts: 4-bit per-channel or group 32/64/128, 8-bit per-channel
        or group 128/256/512 (so no ``hybrid_rate`` that mixes group sizes). For ``a8`` dtypes
        the activation scales, which GPTQ has no place for, go to
        ``rkllm_activation_scales.json``. ``export_path`` must be new or an empty directory.
        """
        from .gptq_export import write_gptq

        if self._built is None:
            raise ExportError("nothing to export: call build() first")
        if not self._manifest.get("do_quantization", False):
            raise ExportError(
                "the build is not quantized (do_quantization=False), and a GPTQ checkpoint"
                " holds quantized weights: build() with do_quantization=True, or use"
                " export_rkllm() for an fp16 export"
            )
        write_gptq(Path(export_path), self._built, self._tokenizer, self._manifest)
        return 0

    def _export_with_rockchip(self, path: Path) -> int:
        """Replay the load and build with Rockchip's toolkit and let it write the .rkllm."""
        from rkllm.api import RKLLM as RockchipRKLLM  # type: ignore[import-not-found]

        src = self._source
        rk = RockchipRKLLM()
        if src.get("kind") == "gguf":
            ret = rk.load_gguf(model=src["path"])
        else:
            ret = rk.load_huggingface(model=src["path"], model_lora=src.get("lora"))
        m = self._manifest
        if ret == 0:
            ret = rk.build(
                do_quantization=m["do_quantization"],
                optimization_level=m["optimization_level"],
                quantized_dtype=m["quantized_dtype"],
                quantized_algorithm=m["quantized_algorithm"],
                target_platform=m["target_platform"].lower(),
                num_npu_core=m["num_npu_core"],
                dataset=m["calibration"]["dataset"],
                hybrid_rate=m["hybrid_rate"],
                max_context=m["max_context"],
            )
        if ret == 0:
            ret = rk.export_rkllm(str(path))
        if ret != 0:
            raise ExportError(f"Rockchip's toolkit failed to export {path} (returned {ret})")
        return 0

    # ------------------------------------------------------------------ PC simulation

    @property
    def model(self) -> Any:
        """The built (simulated quantized) model, or the loaded float model before build()."""
        return self._built if self._built is not None else self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def manifest(self) -> dict[str, Any]:
        """What the last build() did (the export's manifest, without per-layer entries)."""
        return dict(self._manifest)

    def get_logits(self, inputs: Any) -> Any:
        """Logits [batch, tokens, vocab] of the built model (the float model before build()).

        ``inputs``: ``{"input_ids": ..., "attention_mask": ...}`` (lists or tensors), a tensor
        or list of token ids, or a string. Returns None (and logs why) on failure, or raises in
        strict mode.
        """
        try:
            return self._logits(inputs)
        except Exception as exc:
            log.error("get_logits failed: %s", exc)
            if self.strict:
                raise
            return None

    def _logits(self, inputs: Any) -> Any:
        import torch

        model = self.model
        if model is None:
            raise ConfigError("no model loaded: call load_huggingface() or load_gguf() first")
        mask = None
        if isinstance(inputs, str):
            ids = self._tokenizer(inputs, return_tensors="pt")["input_ids"]
        elif isinstance(inputs, Mapping):
            if "input_ids" not in inputs:
                raise ConfigError("get_logits needs {'input_ids': ...}")
            ids = torch.as_tensor(inputs["input_ids"])
            if inputs.get("attention_mask") is not None:
                mask = torch.as_tensor(inputs["attention_mask"])
        else:
            ids = torch.as_tensor(inputs)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
            mask = mask.unsqueeze(0) if mask is not None and mask.dim() == 1 else mask
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(
                input_ids=ids.long().to(device),
                attention_mask=mask.to(device) if mask is not None else None,
                use_cache=False,
            )
        return out.logits.float()

    def chat_model(self, messages: Any, args: Mapping[str, Any] | None = None) -> str | int:
        """Generate a reply with the built model; returns the text, or -1 on failure.

        ``messages`` is a prompt string (``"Human: hi\\nAssistant:"``) or a list of chat
        messages (rendered with the model's chat template). ``args``: ``max_length`` (new
        tokens), ``top_k``, ``top_p``, ``temperature``, ``do_sample``, ``repetition_penalty``.
        """
        try:
            return self._chat(messages, dict(args or {}))
        except Exception as exc:
            log.error("chat_model failed: %s", exc)
            if self.strict:
                raise
            return -1

    def _chat(self, messages: Any, args: dict[str, Any]) -> str:
        """One reply through the PC engine (the runtime's sampling rules), on the built model."""
        import torch

        from ..config import RuntimeConfig, SamplingParams
        from ..engine import ErrorEvent, Event, PromptInput, Request, TokenEvent
        from ..pc.engine import PCEngine
        from ..pc.loading import LoadedModel

        model, tok = self.model, self._tokenizer
        if model is None:
            raise ConfigError("no model loaded: call load_huggingface() or load_gguf() first")
        if isinstance(messages, str):
            prompt = messages
        elif isinstance(messages, list):
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            raise ConfigError("messages must be a prompt string or a list of chat messages")
        known = {"max_length", "top_k", "top_p", "temperature", "do_sample", "repetition_penalty"}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"chat_model args {unknown} unknown: use {sorted(known)}")
        trained = getattr(model.config, "max_position_embeddings", None) or 4096
        config = RuntimeConfig(max_context_len=min(4096, int(trained)))
        do_sample = bool(args.get("do_sample", False))
        sampling = SamplingParams(
            max_new_tokens=int(args.get("max_length", 128)),
            # Hugging Face's do_sample=False is greedy: the runtime's top_k=1
            top_k=int(args.get("top_k", 50)) if do_sample else 1,
            top_p=float(args.get("top_p", 1.0)),
            temperature=float(args.get("temperature", 1.0)),
            repeat_penalty=float(args.get("repetition_penalty", 1.0)),
        ).resolve(config)
        quant = self._manifest.get("quantized_dtype") if self._built is not None else None
        engine = PCEngine(
            LoadedModel(model, tok, "toolkit", quant),
            config,
            num_threads=torch.get_num_threads(),  # keep the process's setting
        )
        parts: list[str] = []
        errors: list[BaseException] = []

        class _Collect:
            def emit(self, event: Event) -> bool:
                if isinstance(event, TokenEvent):
                    parts.append(event.text)
                elif isinstance(event, ErrorEvent):
                    errors.append(event.error)
                return True

        try:
            engine.run(Request(PromptInput(prompt), sampling), _Collect())
        finally:
            engine.close()  # drops the engine's reference and cache, not the model
        if errors:
            raise errors[0]
        return "".join(parts)


def _describe_calibration(
    dataset: Any,
    samples: list[dict[str, str]],
    report: Any,
    default_cal: Calibration | None,
    needs_data: bool,
) -> str:
    """One line: what the build calibrated on."""
    if not needs_data:
        return "nothing (this build needs no calibration)"
    if default_cal is not None:
        return default_cal.describe()
    name = str(dataset) if isinstance(dataset, (str, os.PathLike)) else "the dataset passed in"
    tokens = report.calibration_tokens if report else 0
    used = report.calibration_samples if report else len(samples)
    return f"{name}: {used} of {len(samples)} samples, {tokens:,} tokens"


def _rockchip_toolkit_available() -> bool:
    try:
        return importlib.util.find_spec("rkllm.api") is not None
    except (ImportError, ValueError):
        return False


def _gguf_tensor_type(path: Path) -> str | None:
    """The dominant tensor type of a GGUF file's 2-D weights (e.g. ``Q4_0``, ``F16``)."""
    from ..formats.gguf import check_gguf

    return check_gguf(path).dominant_tensor_type(min_dims=2)
