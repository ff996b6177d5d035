"""Tool calling on real questions: BFCL's simple_python, multiple and irrelevance categories.

The Berkeley Function Calling Leaderboard's questions and possible answers are read out of the
``bfcl-eval`` wheel (downloaded with ``pip download --no-deps``, never installed). Each question
runs through three paths on the same model, greedy:

- ``core``: ``RKLLMModel.generate(messages, tools=…)``;
- ``langchain``: ``ChatRKLLM.bind_tools(tools).invoke(messages)``;
- ``llamaindex``: ``RKLLM.chat_with_tools(tools, chat_history=…)``;

and is scored with an AST match written here after BFCL's rules (ast_checker): exactly one
call, the expected function name (dots written as underscores, as for function-calling
models), every required parameter, no parameter outside the function's or the answer's,
each value among the possible answers (strings compared without case, spaces and ``,./-_*^``;
an int accepted for a float; an omitted optional parameter only when ``""`` is a possible
answer). An irrelevance question is answered correctly when no tool is called.

Also reported: the same core path with ``tool_choice="required"`` (a forced call: what it
does to simple/multiple accuracy, and to irrelevance, where any call is wrong).

The model is slow on a shared CPU (Qwen2.5-Coder-0.5B, ~6 tokens/s), so a bounded subset is
run: the first ``--per-category`` questions of each category through the core, and the first
``--others-per-category`` through the other paths (say so when quoting figures).

    .venv/bin/python benchmarks/tools.py [--model qwen2.5-coder-0.5b] [--per-category 20]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BFCL_WHEEL = "bfcl-eval==2026.3.23"
CATEGORIES = ("simple_python", "multiple", "irrelevance")
_PUNCT = re.compile(r"[ ,./\-_*^]")
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "float": float, "boolean": bool, "array": list,
    "tuple": list, "dict": dict, "any": str,
}


# --- data ---------------------------------------------------------------------------------


def read_bfcl(cache: Path) -> dict[str, tuple[list[dict], dict[str, dict]]]:
    """Questions and possible answers per category, from the bfcl-eval wheel."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("bfcl_eval-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", BFCL_WHEEL, "-d", str(cache)],
            check=True, capture_output=True,
        )
        wheels = sorted(cache.glob("bfcl_eval-*.whl"))
    out = {}
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for category in CATEGORIES:
            questions = _jsonl(wheel.read(f"bfcl_eval/data/BFCL_v4_{category}.json"))
            answers: dict[str, dict] = {}
            if category != "irrelevance":
                for row in _jsonl(
                    wheel.read(f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json")
                ):
                    answers[row["id"]] = row
            out[category] = (questions, answers)
    return out


def _jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def tool_name(name: str) -> str:
    """Function names as function-calling APIs accept them (BFCL does the same)."""
    return name.replace(".", "_")


def _schema(node: Any) -> Any:
    """BFCL's parameter types (dict, float, tuple, any) as JSON-schema types."""
    if isinstance(node, dict):
        out = {k: _schema(v) for k, v in node.items()}
        if isinstance(node.get("type"), str):
            out["type"] = _TYPES.get(node["type"], node["type"])
        return out
    if isinstance(node, list):
        return [_schema(v) for v in node]
    return node


def openai_tools(functions: list[dict]) -> list[dict]:
    """BFCL function descriptions → OpenAI tool dicts."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool_name(f["name"]),
                "description": f.get("description", ""),
                "parameters": _schema(f["parameters"]),
            },
        }
        for f in functions
    ]


# --- scoring (BFCL's AST rules, written here) ------------------------------------------------


def _norm(text: str) -> str:
    return _PUNCT.sub("", text).lower().replace("'", '"')


def _value_ok(value: Any, possible: list, kind: str) -> bool:
    if kind == "float" and type(value) is int:
        value = float(value)
    expected = _PY_TYPES.get(kind, str)
    answer_types = {type(p) for p in possible if p != ""}
    if type(value) is not expected and type(value) not in answer_types:
        return False  # wrong type (bool is not an int here, as in BFCL's exact type check)
    if isinstance(value, str):
        return _norm(value) in {_norm(p) for p in possible if isinstance(p, str)}
    if isinstance(value, list):
        normed = [_norm(v) if isinstance(v, str) else v for v in value]
        return any(
            normed == [_norm(v) if isinstance(v, str) else v for v in p]
            for p in possible if isinstance(p, list)
        )
    if isinstance(value, dict):
        return any(_dict_ok(value, p) for p in possible if isinstance(p, dict))
    return value in possible


def _dict_ok(value: dict, possible: dict) -> bool:
    for key, options in possible.items():
        if key not in value:
            if "" not in options:
                return False
            continue
        item = value[key]
        normed = _norm(item) if isinstance(item, str) else item
        allowed = [_norm(o) if isinstance(o, str) else o for o in options]
        if normed not in allowed:
            return False
    return all(key in possible for key in value)


def call_matches(call: tuple[str, dict], functions: list[dict], answer: dict) -> bool:
    """One model call against one ground-truth entry ``{name: {param: [possible …]}}``."""
    ((expected_name, params),) = answer.items()
    name, args = call
    if name != tool_name(expected_name):
        return False
    spec = next(f for f in functions if f["name"] == expected_name)["parameters"]
    properties = spec.get("properties", {})
    if any(p not in args for p in spec.get("required", [])):
        return False
    for key, value in args.items():
        if key not in properties or key not in params:
            return False
        if not _value_ok(value, params[key], properties[key].get("type", "string")):
            return False
    return all(key in args or "" in options for key, options in params.items())


def score(category: str, case: dict, answers: dict, calls: list[tuple[str, dict]]) -> bool:
    """Whether the calls answer the case correctly."""
    if category == "irrelevance":
        return not calls
    truth = answers[case["id"]]["ground_truth"]
    return len(calls) == len(truth) == 1 and call_matches(calls[0], case["function"], truth[0])


# --- the three paths -----------------------------------------------------------------------

Path_ = Callable[[list[dict], list[dict]], tuple[list[tuple[str, dict]], str]]


def core_path(model: Any, max_tokens: int, tool_choice: Any = None) -> Path_:
    def run(messages: list[dict], tools: list[dict]) -> tuple[list[tuple[str, dict]], str]:
        result = model.generate(messages, tools=tools, tool_choice=tool_choice,
                                max_new_tokens=max_tokens)
        return [(c.name, dict(c.arguments)) for c in result.tool_calls], result.content

    return run


def langchain_path(model_name: str, max_tokens: int) -> Path_:
    from langchain_core.messages import HumanMessage, SystemMessage

    from langchain_rkllm import ChatRKLLM

    llm = ChatRKLLM(model=model_name, max_tokens=max_tokens)

    def run(messages: list[dict], tools: list[dict]) -> tuple[list[tuple[str, dict]], str]:
        lc = [SystemMessage(m["content"]) if m["role"] == "system" else HumanMessage(m["content"])
              for m in messages]
        msg = llm.bind_tools(tools).invoke(lc)
        return [(c["name"], dict(c["args"])) for c in msg.tool_calls], str(msg.content)

    return run


def llamaindex_path(model_name: str, max_tokens: int) -> Path_:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.tools import FunctionTool, ToolMetadata

    from llamaindex_rkllm import RKLLM

    class SchemaMetadata(ToolMetadata):
        """Tool metadata that carries a JSON schema as it is (BFCL gives no Python function)."""

        def __init__(self, spec: dict) -> None:
            super().__init__(description=spec["description"] or spec["name"], name=spec["name"])
            self.parameters = spec["parameters"]

        def get_parameters_dict(self) -> dict:
            return self.parameters

    llm = RKLLM(model=model_name, max_tokens=max_tokens)

    def run(messages: list[dict], tools: list[dict]) -> tuple[list[tuple[str, dict]], str]:
        li_tools = [FunctionTool(fn=lambda **_: None, metadata=SchemaMetadata(t["function"]))
                    for t in tools]
        history = [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
        response = llm.chat_with_tools(li_tools, chat_history=history,
                                       allow_parallel_tool_calls=True)
        calls = llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
        return [(c.tool_name, dict(c.tool_kwargs)) for c in calls], response.message.content or ""

    return run


# --- the run -------------------------------------------------------------------------------


def run_path(
    name: str, path: Path_, data: dict, per_category: int, log: Any, skip: int = 0
) -> dict[str, list[tuple[list, bool]]]:
    out: dict[str, list[tuple[list, bool]]] = {}
    for category in CATEGORIES:
        questions, answers = data[category]
        rows = []
        start = time.perf_counter()
        for case in questions[skip : skip + per_category]:
            tools = openai_tools(case["function"])
            calls, _ = path(case["question"][0], tools)
            ok = score(category, case, answers, calls)
            rows.append((calls, ok))
            log.write(json.dumps({"path": name, "id": case["id"], "calls": calls, "ok": ok}) + "\n")
            log.flush()
        out[category] = rows
        print(f"  {name:22s} {category:14s} {sum(ok for _, ok in rows):3d}/{len(rows)}"
              f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def _agreement(a: list[tuple[list, bool]], b: list[tuple[list, bool]]) -> str:
    pairs = list(zip(a, b))  # noqa: B905 - compared on the questions both paths ran
    same = sum(x[0] == y[0] for x, y in pairs)
    return f"{same}/{len(pairs)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--per-category", type=int, default=20)
    parser.add_argument("--others-per-category", type=int, default=None,
                        help="questions per category for the paths other than core"
                             " (default: --per-category); outputs are compared on these")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--skip", type=int, default=0,
                        help="start after this many questions per category (to split a run)")
    parser.add_argument("--paths", default="core,langchain,llamaindex,core-required")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bfcl-wheel")
    parser.add_argument("--log", type=Path, default=Path("bfcl_calls.jsonl"))
    args = parser.parse_args()

    from rkllm_core import RuntimeConfig, load_shared

    data = read_bfcl(args.cache)
    model = load_shared(args.model, runtime_config=RuntimeConfig())
    paths: dict[str, Path_] = {
        "core": core_path(model, args.max_tokens),
        "langchain": langchain_path(args.model, args.max_tokens),
        "llamaindex": llamaindex_path(args.model, args.max_tokens),
        "core-required": core_path(model, args.max_tokens, tool_choice="required"),
    }
    chosen = args.paths.split(",")
    print(f"BFCL {BFCL_WHEEL}: {args.per_category} questions per category after {args.skip},"
          f" {args.model}, greedy, max {args.max_tokens} new tokens")
    results = {}
    others = args.others_per_category or args.per_category
    with args.log.open("w") as log:
        for name in chosen:
            count = args.per_category if name == "core" else others
            results[name] = run_path(name, paths[name], data, count, log, args.skip)
    print("\naccuracy (AST match; irrelevance: no call)")
    print(f"  {'path':22s} " + " ".join(f"{c:>14s}" for c in CATEGORIES))
    for name, per_cat in results.items():
        cells = [f"{sum(ok for _, ok in per_cat[c]):>8d}/{len(per_cat[c]):<5d}"
                 for c in CATEGORIES]
        print(f"  {name:22s} " + " ".join(cells))
    if "core" in results:
        for name in ("langchain", "llamaindex"):
            if name in results:
                same = [_agreement(results["core"][c], results[name][c]) for c in CATEGORIES]
                print(f"  identical calls, core vs {name}: " + ", ".join(
                    f"{c} {s}" for c, s in zip(CATEGORIES, same, strict=True)))


if __name__ == "__main__":
    main()
