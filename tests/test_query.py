"""The filter language: one set of cases (query_cases.json) for tables/query.py and
tables/query.js, random expressions through both, and properties of the parser."""

import ast
import builtins
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage.errors import UserError
from tables.query import (And, Column, Compare, Literal, Not, Or, QueryError, QuerySyntaxError,
                          evaluate, filter_frame, parse, to_text)

ROOT = Path(__file__).resolve().parents[1]
CASES = json.loads((ROOT / "tests" / "query_cases.json").read_text(encoding="utf-8"))
QUERY_JS = ROOT / "tables" / "query.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed; the JavaScript filter is not checked")

# Reads {"rows": [...], "exprs": [...]} on stdin, prints one outcome per expression.
NODE_RUNNER = """
const Query = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const outcomes = input.exprs.map((expr) => {
  let test;
  try { test = Query.compile(expr); }
  catch (e) { return {syntax_error: e.message, column: e.column === undefined ? null : e.column, name: e.name}; }
  try { return {selected: input.rows.flatMap((row, i) => (test(row) ? [i] : []))}; }
  catch (e) { return {eval_error: e.message, name: e.name}; }
});
process.stdout.write(JSON.stringify(outcomes));
"""


def case_frame() -> pd.DataFrame:
    table = CASES["table"]
    return pd.DataFrame(table["rows"], columns=table["columns"])


def python_outcome(expr: str, frame: pd.DataFrame) -> dict:
    try:
        node = parse(expr)
    except QuerySyntaxError as e:
        return {"syntax_error": str(e), "column": e.column}
    try:
        return {"selected": np.flatnonzero(evaluate(node, frame).to_numpy()).tolist()}
    except QueryError as e:
        return {"eval_error": str(e)}


def node_outcomes(exprs: list[str], rows: list[dict]) -> list[dict]:
    run = subprocess.run([NODE, "-e", NODE_RUNNER, str(QUERY_JS)], input=json.dumps({"rows": rows, "exprs": exprs}),
                         capture_output=True, text=True, encoding="utf-8", timeout=60, check=True)
    return json.loads(run.stdout)


def expected_outcome(case: dict) -> dict:
    if "rows_selected" in case:
        return {"selected": case["rows_selected"]}
    if "error_column" in case:
        return {"syntax_error": case["message"], "column": case["error_column"]}
    return {"eval_error": case["eval_error"]}


def matches(outcome: dict, expected: dict) -> bool:
    if "eval_error" in expected:
        return expected["eval_error"] in outcome.get("eval_error", "")
    return {k: outcome.get(k) for k in expected} == expected


ALL_CASES = CASES["valid"] + CASES["invalid"] + CASES["eval_errors"]


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c["expr"][:40])
def test_python_matches_the_shared_cases(case):
    assert matches(python_outcome(case["expr"], case_frame()), expected_outcome(case))


@needs_node
def test_javascript_matches_the_shared_cases():
    outcomes = node_outcomes([c["expr"] for c in ALL_CASES], CASES["table"]["rows"])
    wrong = [(c["expr"], o) for c, o in zip(ALL_CASES, outcomes) if not matches(o, expected_outcome(c))]
    assert wrong == []
    names = {o.get("name") for c, o in zip(ALL_CASES, outcomes) if "error_column" in c}
    assert names == {"QuerySyntaxError"}


# ---------------------------------------------------------------- random expressions through both

COLUMNS = CASES["table"]["columns"] + ["missing"]
VALUES = ['"Aves"', '"Amphibia"', '""', "null", "true", "false", "0", "0.5", "-1", "1e999", "3", '"test"', '"img/z"']
GLUE = [" ", "", "  ", "\n"]


def random_expression(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        word = rng.choice(["and", "or", "AND", "Or"])
        return f"{random_expression(rng, depth + 1)} {word} {random_expression(rng, depth + 1)}"
    if depth < 3 and roll < 0.35:
        return "not " + random_expression(rng, depth + 1)
    if depth < 3 and roll < 0.45:
        return "(" + random_expression(rng, depth + 1) + ")"
    side = lambda: f'x["{rng.choice(COLUMNS)}"]' if rng.random() < 0.6 else rng.choice(VALUES)  # noqa: E731
    return f"{side()}{rng.choice(GLUE)}{rng.choice(['=', '==', '!=', '<', '<=', '>', '>='])}{rng.choice(GLUE)}{side()}"


def mutate(rng: random.Random, expr: str) -> str:
    i = rng.randrange(len(expr) + 1)
    roll = rng.random()
    if roll < 0.4:
        return expr[:i] + expr[i + 1:]
    if roll < 0.8:
        return expr[:i] + rng.choice(list('()[]"\'=!<>-.e\\ x&|🦜é') + ["and", "not", "1"]) + expr[i:]
    return expr[:i]


def random_expressions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    exprs = [random_expression(rng) for _ in range(count)]
    return exprs + [mutate(rng, e) for e in exprs]


@needs_node
def test_python_and_javascript_agree_on_random_expressions():
    """Same selection, or the same syntax error (text and column), or both fail to evaluate."""
    exprs, frame = random_expressions(400, seed=7), case_frame()
    outcomes = node_outcomes(exprs, CASES["table"]["rows"])
    kinds = {"selected": 0, "syntax_error": 0, "eval_error": 0}
    for expr, js in zip(exprs, outcomes):
        py = python_outcome(expr, frame)
        kind = next(iter(py))
        kinds[kind] += 1
        assert kind in js, (expr, py, js)
        if kind != "eval_error":
            assert {k: js.get(k) for k in py} == py, expr
    assert min(kinds.values()) > 20, kinds  # the generator reaches all three outcomes


# ---------------------------------------------------------------- properties of the parser

TOKENS = ['x', '[', ']', '(', ')', '"truth"', "'guess'", '"a\\"b"', '=', '==', '!=', '<', '<=', '>', '>=', 'and',
          'or', 'not', 'true', 'false', 'null', '1', '-2.5e3', '0.5', '"', "'", '\\', '!', '-', '.', 'e', '__import__',
          'os', 'eval', ';', 'é', '🦜']


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_a_syntax_error(text):
    try:
        parse(text)
    except QuerySyntaxError as e:
        assert 1 <= e.column <= len(text) + 1
        assert "\n" not in str(e) and f"at column {e.column}" in str(e)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14), st.lists(st.sampled_from(["", " "]), min_size=14, max_size=14))
def test_token_soup_parses_or_raises_a_syntax_error(tokens, spaces):
    text = "".join(t + s for t, s in zip(tokens, spaces))
    try:
        node = parse(text)
    except QuerySyntaxError as e:
        assert 1 <= e.column <= len(text) + 1
    else:
        assert parse(to_text(node)) == node


values = st.one_of(
    st.builds(Column, st.text(max_size=8)),
    st.builds(Literal, st.text(max_size=8)),
    st.builds(Literal, st.floats(allow_nan=False)),
    st.builds(Literal, st.booleans()),
    st.just(Literal(None)),
)


@st.composite
def comparisons(draw):
    left, right = draw(values), draw(values)
    orderable = all(not isinstance(v, Literal) or v.kind not in ("null", "boolean") for v in (left, right))
    op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="] if orderable else ["=", "!="]))
    return Compare(op, left, right)


nodes = st.recursive(
    comparisons(),
    lambda inner: st.one_of(st.builds(Not, inner),
                            st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
                            st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple))),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(nodes)
def test_printed_expressions_parse_back_to_the_same_tree(node):
    text = to_text(node)
    assert parse(text) == node
    assert to_text(parse(text)) == text


HOSTILE = [
    '__import__("os").system("touch {path}")',
    'x["truth"] = "a" or __import__("os").system("touch {path}")',
    'x["truth"] = "a"; import os; os.system("touch {path}")',
    'x[__import__("os").system("touch {path}")] = 1',
    '(lambda: open("{path}", "w"))()',
    'x["truth"] = require("fs").writeFileSync("{path}", "")',
    'x["truth"] = `${{require("fs").writeFileSync("{path}", "")}}`',
    'x["truth"] = "" + require("child_process").execSync("touch {path}")',
    'x[open("{path}", "w")] = 1',
]


def test_hostile_input_fails_to_parse_and_runs_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the filter must never reach eval/exec")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    target = tmp_path / "pwned"
    for template in HOSTILE:
        with pytest.raises(QuerySyntaxError):
            filter_frame(case_frame(), template.format(path=target))
    assert not target.exists()


def test_column_names_are_data_not_code(tmp_path):
    target = tmp_path / "pwned"
    for name in ['__class__', 'constructor', '__proto__', f'__import__("os").system("touch {target}")']:
        with pytest.raises(QueryError, match="unknown column"):
            filter_frame(case_frame(), f"x[{json.dumps(name)}] = 1")
    assert not target.exists()


@needs_node
def test_hostile_input_runs_nothing_in_javascript(tmp_path):
    target = tmp_path / "pwned"
    exprs = [t.format(path=target) for t in HOSTILE]
    outcomes = node_outcomes(exprs, CASES["table"]["rows"])
    assert all("syntax_error" in o for o in outcomes), outcomes
    assert not target.exists()


def test_the_sources_never_call_an_evaluator():
    tree = ast.parse((ROOT / "tables" / "query.py").read_text(encoding="utf-8"))
    called = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
              for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
    assert not called & {"eval", "exec", "compile", "__import__", "getattr", "query", "import_module"}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert "numexpr" not in imported
    js = QUERY_JS.read_text(encoding="utf-8")
    for word in ("eval(", "Function(", "setTimeout(", "setInterval(", "import("):
        assert word not in js


# ---------------------------------------------------------------- evaluation details


def test_errors_are_user_errors_with_one_line():
    with pytest.raises(UserError) as caught:
        parse('x["truth"] =\n')
    assert caught.value.column == 14 and "\n" not in str(caught.value)


def test_unknown_column_names_the_nearest_first():
    with pytest.raises(QueryError, match=r'unknown column "truht"; did you mean "truth"\? columns: truth, '):
        filter_frame(case_frame(), 'x["truht"] = "Aves"')


def test_the_result_keeps_the_frame_index():
    frame = case_frame().set_index(pd.Index(list("abcdefgh")))
    selected = evaluate(parse('x["split"] = "val"'), frame)
    assert selected.dtype == bool and selected[selected].index.tolist() == ["g", "h"]
    assert filter_frame(frame, 'x["split"] = "val"')["n"].tolist() == [6, 7]


def test_no_filter_keeps_every_row():
    frame = case_frame()
    assert filter_frame(frame, None) is frame and filter_frame(frame, "  ") is frame


def test_pandas_dtypes_evaluate_like_plain_ones():
    plain = case_frame()
    typed = plain.assign(split=plain["split"].astype("category"), n=plain["n"].astype("Int64"),
                         correct=plain["correct"].astype("boolean"), guess=plain["guess"].astype("string"),
                         truth=plain["truth"].astype(object))
    for expr in ['x["split"] = "val"', 'x["n"] >= 3', 'x["correct"] = false', 'x["guess"] < "B"', 'x["truth"] = ""']:
        assert evaluate(parse(expr), typed).tolist() == evaluate(parse(expr), plain).tolist(), expr


def test_a_column_of_other_values_is_refused():
    frame = pd.DataFrame({"when": pd.to_datetime(["2024-01-01"]).astype(object), "mixed": [[1]]})
    with pytest.raises(QueryError, match="holds"):
        filter_frame(frame, 'x["mixed"] = 1')


def test_importing_the_query_module_does_not_import_pandas():
    code = "import sys, tables.query; assert 'pandas' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
