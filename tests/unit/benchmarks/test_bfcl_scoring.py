"""The BFCL scorer of benchmarks/tools.py follows BFCL's AST rules (checked on BFCL-shaped
cases; no model runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SPEC = importlib.util.spec_from_file_location(
    "bench_tools", Path(__file__).resolve().parents[3] / "benchmarks" / "tools.py"
)
assert SPEC and SPEC.loader
bench: Any = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

FUNCTIONS = [{
    "name": "geo.distance",
    "description": "Distance between two cities.",
    "parameters": {
        "type": "dict",
        "properties": {
            "origin": {"type": "string"},
            "km": {"type": "float"},
            "stops": {"type": "integer"},
            "via": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["origin", "km"],
    },
}]
ANSWER = {"geo.distance": {"origin": ["New York, NY", "NYC"], "km": [2.5], "stops": ["", 0],
                           "via": [["Boston"], ""]}}
CASE = {"id": "simple_python_9", "function": FUNCTIONS}
ANSWERS = {"simple_python_9": {"ground_truth": [ANSWER]}}


def ok(args: dict, name: str = "geo_distance") -> bool:
    return bench.score("simple_python", CASE, ANSWERS, [(name, args)])


def test_ast_rules() -> None:
    assert ok({"origin": "new york ny", "km": 2.5})  # case, spaces and punctuation ignored
    assert ok({"origin": "NYC", "km": 2.5, "stops": 0, "via": ["boston"]})
    assert not ok({"origin": "NYC", "km": 2.5}, name="geo.distance")  # dots become _
    assert not ok({"origin": "NYC"})  # a required parameter missing
    assert not ok({"origin": "NYC", "km": 2.5, "speed": 3})  # not a parameter
    assert not ok({"origin": "Boston", "km": 2.5})  # not a possible value
    assert not ok({"origin": "NYC", "km": "2.5"})  # wrong type
    assert not ok({"origin": "NYC", "km": 2.5, "stops": True})  # a bool is not an integer
    assert not bench.score("simple_python", CASE, ANSWERS, [])  # one call is expected
    two = [("geo_distance", {"origin": "NYC", "km": 2.5})] * 2
    assert not bench.score("simple_python", CASE, ANSWERS, two)


def test_int_is_accepted_for_a_float() -> None:
    answers = {"simple_python_9": {"ground_truth": [{"geo.distance": {
        "origin": ["NYC"], "km": [3.0], "stops": [""], "via": [""]}}]}}
    assert bench.score("simple_python", CASE, answers, [("geo_distance", {"origin": "NYC",
                                                                          "km": 3})])


def test_irrelevance_is_right_without_a_call() -> None:
    assert bench.score("irrelevance", CASE, {}, [])
    assert not bench.score("irrelevance", CASE, {}, [("geo_distance", {})])


def test_schema_conversion() -> None:
    (tool,) = bench.openai_tools(FUNCTIONS)
    assert tool["function"]["name"] == "geo_distance"
    params = tool["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["km"]["type"] == "number"
    assert params["properties"]["via"]["items"]["type"] == "string"
