"""rkllm-py core: one model API over Rockchip's RKLLM runtime (NPU) and a PC engine.

>>> from rkllm_core import RKLLMModel, RuntimeConfig
>>> with RKLLMModel("smollm2", RuntimeConfig(max_context_len=2048)) as m:
...     print(m.generate([{"role": "user", "content": "Hi"}]).text)

Nothing here imports torch: the PC engine is loaded only when a PC model is opened.
"""

from .cache import cache_dir
from .chat import ChatRenderer, normalize_messages
from .config import (
    EmbeddingConfig,
    EmbeddingFields,
    ResolvedSampling,
    RuntimeConfig,
    SamplingFields,
    SamplingParams,
    embedding_overrides,
    sampling_defaults,
)
from .demo_models import KNOWN_MODELS, fetch_model
from .engine import (
    ChatTemplateParts,
    Engine,
    EngineInfo,
    InferMode,
    PerfStats,
)
from .errors import (
    AbortedError,
    ConfigError,
    ContextLengthError,
    DownloadError,
    EngineUnavailableError,
    GenerationError,
    ModelClosedError,
    ModelFormatError,
    ModelNotFoundError,
    RequestTimeoutError,
    RKLLMError,
    RuntimeLibraryError,
    RuntimeVersionError,
    ToolCallParseError,
)
from .model import RKLLMModel
from .reply import (
    Reply,
    ReplyAssembler,
    ReplyPlan,
    normalize_tool_choice,
    plan_reply,
    response_schema,
    tool_names,
)
from .results import (
    GenerationResult,
    InvalidToolCall,
    ReplyFinishReason,
    StreamChunk,
    ToolCall,
    Usage,
    perf_dict,
)
from .sharing import load_shared, runtime_config_with, shared_model, short_model_name
from .streams import AsyncTokenStream, TokenStream
from .tools import parse_tool_calls

__version__ = "0.1.0"

__all__ = [
    "KNOWN_MODELS",
    "AbortedError",
    "AsyncTokenStream",
    "ChatRenderer",
    "ChatTemplateParts",
    "ConfigError",
    "ContextLengthError",
    "DownloadError",
    "EmbeddingConfig",
    "EmbeddingFields",
    "Engine",
    "EngineInfo",
    "EngineUnavailableError",
    "GenerationError",
    "GenerationResult",
    "InferMode",
    "InvalidToolCall",
    "ModelClosedError",
    "ModelFormatError",
    "ModelNotFoundError",
    "PerfStats",
    "RKLLMError",
    "RKLLMModel",
    "Reply",
    "ReplyAssembler",
    "ReplyFinishReason",
    "ReplyPlan",
    "RequestTimeoutError",
    "ResolvedSampling",
    "RuntimeConfig",
    "RuntimeLibraryError",
    "RuntimeVersionError",
    "SamplingFields",
    "SamplingParams",
    "StreamChunk",
    "TokenStream",
    "ToolCall",
    "ToolCallParseError",
    "Usage",
    "__version__",
    "cache_dir",
    "embedding_overrides",
    "fetch_model",
    "load_shared",
    "normalize_messages",
    "normalize_tool_choice",
    "parse_tool_calls",
    "perf_dict",
    "plan_reply",
    "response_schema",
    "runtime_config_with",
    "sampling_defaults",
    "shared_model",
    "short_model_name",
    "tool_names",
]
