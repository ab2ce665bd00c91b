"""The W&B-Tables-style filter language, parsed by hand and never passed to eval.

    x["truth"] = "Amphibia" and x["guess"] != "Amphibia"
    x["score_Aves"] >= 0.5 or not (x["split"] = "test")

Grammar (keywords and `x` are case-insensitive; whitespace is space, tab, CR, LF):

    filter     = or_expr END
    or_expr    = and_expr { "or" and_expr }
    and_expr   = not_expr { "and" not_expr }
    not_expr   = "not" not_expr | "(" or_expr ")" | comparison
    comparison = value operator value
    operator   = "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    value      = column | string | number | "true" | "false" | "null"
    column     = "x" "[" string "]"
    string     = '"' { char | escape } '"' | "'" { char | escape } "'"
    escape     = "\\" ( '"' | "'" | "\\" | "n" | "t" | "r" )
    number     = [ "-" ] digit { digit } [ "." digit { digit } ] [ ( "e" | "E" ) [ "+" | "-" ] digit { digit } ]

Values have one of three types, number, string and boolean, or are null. Null
semantics, the same here and in tables/query.js:

- A missing value is null: None, NaN and the empty string "" (so an unlabelled
  image's truth equals both "" and null, and `x["truth"] != ""` keeps labelled rows).
- `=` is true when both sides are null, or both are non-null and equal; `!=` is its
  negation. So `x["truth"] != x["guess"]` also keeps unlabelled rows; add
  `x["truth"] != null and ...` to drop them.
- `< <= > >=` are false when either side is null; they order numbers, and strings by
  code point; booleans and the literal null cannot be ordered (a syntax error).
- Comparing two non-null values of different types (a number column with a string,
  say) is an error, not false: it is almost always a typo.
- Both sides of `and`/`or` are always evaluated, so a type error anywhere in the
  expression is reported in the CLI and in the browser alike.
"""

from __future__ import annotations

import difflib
import functools
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Union

from lineage.errors import UserError

if TYPE_CHECKING:
    import pandas

OPERATORS = ("==", "!=", "<=", ">=", "=", "<", ">")  # longest first, for the tokenizer
KEYWORDS = ("and", "or", "not", "true", "false", "null", "x")
ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
WHITESPACE = " \t\r\n"
DIGITS = "0123456789"
NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
NAME_CHARS = NAME_START + DIGITS
CHAR_HINTS = {"&": " (write 'and')", "|": " (write 'or')"}
SHOWN_TOKEN_CHARS = 30  # longer tokens are shortened in error messages
MAX_NESTING = 100  # levels of "(" and "not"; deeper is refused, not a RecursionError


class QueryError(UserError):
    """A filter that cannot be evaluated on this table (unknown column, type mismatch)."""


class QuerySyntaxError(QueryError):
    """A filter that does not parse; `column` is the 1-based position of the problem."""

    def __init__(self, reason: str, column: int, expr: str):
        self.reason, self.column, self.expr = reason, column, expr
        super().__init__(one_line(f"filter: {reason} at column {column}: {expr}"))


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").replace("\t", " ")


# ---------------------------------------------------------------- the AST


@dataclass(frozen=True)
class Column:
    name: str
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Literal:
    value: Union[str, float, bool, None]
    kind: str = field(init=False)  # compared too, so Literal(True) != Literal(1.0)

    def __post_init__(self):
        object.__setattr__(self, "kind", value_kind(self.value))


@dataclass(frozen=True)
class Compare:
    op: str  # one of = != < <= > >= ("==" is read as "=")
    left: Union[Column, Literal]
    right: Union[Column, Literal]
    column: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Not:
    operand: "Node"


@dataclass(frozen=True)
class And:
    operands: tuple  # two or more; flat, so long chains need no deep recursion


@dataclass(frozen=True)
class Or:
    operands: tuple


Node = Union[Compare, Not, And, Or]


def value_kind(value) -> str:
    if value is None or value == "":
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "string"


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # ( ) [ ] op string number name end
    text: str  # the source text
    column: int  # 1-based
    value: object = None


def describe_char(char: str) -> str:
    return f"'{char}'" if "!" <= char <= "~" else f"U+{ord(char):04X}"


def describe_token(token: Token) -> str:
    if token.kind == "end":
        return "the end"
    text = token.text
    if len(text) > SHOWN_TOKEN_CHARS:
        text = text[: SHOWN_TOKEN_CHARS - 3] + "..."
    return f"'{text}'"


def tokenize(expr: str) -> Iterator[Token]:
    """Tokens left to right, lazily, so the first problem in reading order is the one reported."""
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in WHITESPACE:
            i += 1
            continue
        start = i
        if char in "()[]":
            yield Token(char, char, i + 1)
            i += 1
        elif char in "=!<>":
            op = next((op for op in OPERATORS if expr.startswith(op, i)), None)
            if op is None:
                raise QuerySyntaxError("unexpected character '!' (did you mean '!='?)", i + 1, expr)
            yield Token("op", op, i + 1, "=" if op == "==" else op)
            i += len(op)
        elif char in "\"'":
            value, i = read_string(expr, i)
            yield Token("string", expr[start:i], start + 1, value)
        elif char == "-" or char in DIGITS:
            i = read_number(expr, i)
            yield Token("number", expr[start:i], start + 1, float(expr[start:i]))
        elif char in NAME_START:
            while i < len(expr) and expr[i] in NAME_CHARS:
                i += 1
            yield Token("name", expr[start:i], start + 1, expr[start:i].lower())
        else:
            hint = CHAR_HINTS.get(char, "")
            raise QuerySyntaxError(f"unexpected character {describe_char(char)}{hint}", i + 1, expr)
    yield Token("end", "", len(expr) + 1)


def read_string(expr: str, start: int) -> tuple[str, int]:
    quote, chars, i = expr[start], [], start + 1
    while i < len(expr) and expr[i] != quote:
        if expr[i] == "\\":
            if i + 1 >= len(expr):
                break
            escaped = expr[i + 1]
            if escaped not in ESCAPES:
                shown = "'\\" + escaped + "'" if "!" <= escaped <= "~" else "after '\\'"
                raise QuerySyntaxError(
                    f"unknown escape {shown} in a string (use \\\" \\' \\\\ \\n \\t \\r)", i + 1, expr
                )
            chars.append(ESCAPES[escaped])
            i += 2
        else:
            chars.append(expr[i])
            i += 1
    if i >= len(expr) or expr[i] != quote:
        raise QuerySyntaxError(f"unterminated string (add the closing {quote})", start + 1, expr)
    return "".join(chars), i + 1


def read_number(expr: str, start: int) -> int:
    def digits(i: int, after: str) -> int:
        if i >= len(expr) or expr[i] not in DIGITS:
            raise QuerySyntaxError(f"expected a digit after '{after}'", i + 1, expr)
        while i < len(expr) and expr[i] in DIGITS:
            i += 1
        return i

    i = digits(start + 1, "-") if expr[start] == "-" else digits(start, "")
    if i < len(expr) and expr[i] == ".":
        i = digits(i + 1, ".")
    if i < len(expr) and expr[i] in "eE":
        after = expr[i]
        i += 1
        if i < len(expr) and expr[i] in "+-":
            after, i = expr[i], i + 1
        i = digits(i, after)
    return i


# ---------------------------------------------------------------- the parser


class Parser:
    """Recursive descent over the token list, one method per grammar rule."""

    def __init__(self, expr: str):
        self.expr, self.source, self.tokens, self.at, self.depth = expr, tokenize(expr), [], 0, 0

    def peek(self) -> Token:
        if self.at == len(self.tokens):
            self.tokens.append(next(self.source))
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.peek()
        self.at += 1
        return token

    def is_keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.value == word

    def fail(self, reason: str, token: Token):
        raise QuerySyntaxError(reason, token.column, self.expr)

    def expected(self, what: str, token: Token):
        self.fail(f"expected {what}, found {describe_token(token)}", token)

    def expect_end_of(self, what: str, token: Token):
        if token.kind == "op":
            self.fail("comparisons cannot be chained; join them with 'and'", token)
        self.expected(what, token)

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek().kind != "end":
            self.expect_end_of("'and', 'or' or the end", self.peek())
        return node

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.is_keyword("or"):
            self.take()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.is_keyword("and"):
            self.take()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self) -> Node:
        token = self.peek()
        if token.kind == "(" or self.is_keyword("not"):
            self.depth += 1
            if self.depth > MAX_NESTING:
                self.fail(f"nested deeper than {MAX_NESTING} levels", token)
            self.take()
            node = Not(self.not_expr()) if token.kind == "name" else self.parenthesised(token)
            self.depth -= 1
            return node
        if token.kind in ("string", "number") or (token.kind == "name" and token.value not in ("and", "or")):
            return self.comparison()
        previous = self.tokens[self.at - 1] if self.at else None
        after = f" after '{previous.text}'" if previous else ' such as x["truth"] = "Aves"'
        self.expected("a condition" + after, token)

    def parenthesised(self, opening: Token) -> Node:
        node = self.or_expr()
        if self.peek().kind != ")":
            self.expect_end_of(f"')' for the '(' at column {opening.column}", self.peek())
        self.take()
        return node

    def comparison(self) -> Compare:
        start = self.peek().column - 1
        left = self.value(None)
        op = self.peek()
        if op.kind != "op":
            last = self.tokens[self.at - 1]
            left_text = self.expr[start : last.column - 1 + len(last.text)]
            self.expected(f"an operator (= != < <= > >=) after {left_text}", op)
        self.take()
        right = self.value(op)
        if op.value not in ("=", "!="):
            for side in (left, right):
                if isinstance(side, Literal) and side.kind in ("null", "boolean"):
                    self.fail(f"'{op.text}' cannot order {side.kind} values; use = or !=", op)
        return Compare(op.value, left, right, op.column)

    def value(self, after_op: Token | None) -> Union[Column, Literal]:
        token = self.peek()
        if token.kind in ("string", "number"):
            self.take()
            return Literal(token.value)
        if token.kind == "name" and token.value in ("true", "false", "null"):
            self.take()
            return Literal({"true": True, "false": False, "null": None}[token.value])
        if token.kind == "name" and token.value == "x":
            self.take()
            return self.column_rest(token)
        if token.kind == "name" and token.value not in KEYWORDS:
            self.fail(f"unknown name '{token.text}' (write a column as x[\"name\"] and text in quotes)", token)
        self.expected("a value" + (f" after '{after_op.text}'" if after_op else ""), token)

    def column_rest(self, x: Token) -> Column:
        if self.peek().kind != "[":
            self.expected(f"'[' after '{x.text}'", self.peek())
        self.take()
        name = self.peek()
        if name.kind != "string":
            self.expected("a quoted column name", name)
        self.take()
        if self.peek().kind != "]":
            self.expected("']'", self.peek())
        self.take()
        return Column(name.value, x.column)


def parse(expr: str) -> Node:
    """The AST of a filter expression; raises QuerySyntaxError with the column."""
    if not isinstance(expr, str):
        raise QueryError(f"filter: expected the filter as text, got {type(expr).__name__}")
    return Parser(expr).parse()


# ---------------------------------------------------------------- printing


def quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def format_value(node: Union[Column, Literal]) -> str:
    if isinstance(node, Column):
        return f"x[{quote(node.name)}]"
    if node.kind == "boolean":
        return "true" if node.value else "false"
    if isinstance(node.value, str):
        return quote(node.value)
    if node.value is None:
        return "null"
    if node.value in (float("inf"), float("-inf")):
        return "1e999" if node.value > 0 else "-1e999"
    number = float(node.value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def to_text(node: Node, context: int = 0) -> str:
    """The expression back as text, parenthesised only where precedence needs it."""
    if isinstance(node, Compare):
        return f"{format_value(node.left)} {node.op} {format_value(node.right)}"
    if isinstance(node, Not):
        text, precedence = "not " + to_text(node.operand, 3), 3
    elif isinstance(node, And):
        text, precedence = " and ".join(to_text(operand, 3) for operand in node.operands), 2
    else:
        text, precedence = " or ".join(to_text(operand, 2) for operand in node.operands), 1
    return f"({text})" if precedence < context else text


# ---------------------------------------------------------------- evaluation


@dataclass
class Operand:
    """One side of a comparison, as arrays: values, where they are null, and one type."""

    kind: str  # number, string, boolean, or null when every value is null
    values: object  # a numpy array, a pandas Series of str, or a scalar
    null: object  # a bool array or a bool
    shown: str  # how the error messages name it


def column_operand(frame: "pandas.DataFrame", node: Column) -> Operand:
    import numpy as np
    import pandas as pd

    if node.name not in frame.columns:
        raise QueryError(unknown_column_message(node.name, [str(c) for c in frame.columns], "filter"))
    series, shown = frame[node.name], format_value(node)
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    if pd.api.types.is_bool_dtype(series.dtype):
        kind = "boolean"
    elif pd.api.types.is_numeric_dtype(series.dtype):
        kind = "number"
    else:
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        kinds = {"string": "string", "empty": "string", "boolean": "boolean", "integer": "number",
                 "floating": "number", "mixed-integer-float": "number", "decimal": "number"}
        if inferred not in kinds:
            raise QueryError(f"filter: column {shown} holds {inferred} values; the filter compares "
                             "numbers, strings and booleans only")
        kind = kinds[inferred]
    null = series.isna().to_numpy(dtype=bool)
    if kind == "string":  # pandas compares missing strings without raising; compare() masks them
        values = series.reset_index(drop=True)  # so Series meets Series by position
        null = null | (values == "").to_numpy(dtype=bool, na_value=True)
    elif kind == "boolean":
        values = series.fillna(False).to_numpy(dtype=bool)
    else:
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    return Operand("null" if null.all() else kind, values, null, shown)


def literal_operand(node: Literal) -> Operand:
    return Operand(node.kind, node.value, node.kind == "null", format_value(node))


COMPARATORS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt,
               "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def compare(node: Compare, a: Operand, b: Operand, rows: int):
    import numpy as np

    if "null" not in (a.kind, b.kind) and a.kind != b.kind:
        raise QueryError(f"filter: cannot compare {a.shown} ({a.kind}) with {b.shown} ({b.kind}) at "
                         f"column {node.column}; compare numbers with numbers and text with quoted text")
    if node.op not in ("=", "!=") and "boolean" in (a.kind, b.kind):
        raise QueryError(f"filter: '{node.op}' cannot order boolean values at column {node.column}; "
                         "use = or !=")
    both = ~np.asarray(a.null) & ~np.asarray(b.null)
    if "null" in (a.kind, b.kind):
        raw = np.zeros(rows, dtype=bool)
    else:
        raw = COMPARATORS["=" if node.op == "!=" else node.op](a.values, b.values)
        raw = raw.to_numpy(dtype=bool, na_value=False) if hasattr(raw, "to_numpy") else np.asarray(raw, dtype=bool)
    result = np.where(both, raw, False)
    if node.op in ("=", "!="):
        result = result | (np.asarray(a.null) & np.asarray(b.null))
    if node.op == "!=":
        result = ~result
    return np.broadcast_to(result, (rows,))


def evaluate(node: Node, frame: "pandas.DataFrame") -> "pandas.Series":
    """A boolean Series over the frame's index: which rows the filter keeps."""
    import numpy as np
    import pandas as pd

    columns: dict[str, Operand] = {}

    def operand(side) -> Operand:
        if isinstance(side, Literal):
            return literal_operand(side)
        if side.name not in columns:
            columns[side.name] = column_operand(frame, side)
        return columns[side.name]

    def walk(node: Node):
        if isinstance(node, Compare):
            return compare(node, operand(node.left), operand(node.right), len(frame))
        if isinstance(node, Not):
            return ~walk(node.operand)
        results = [walk(child) for child in node.operands]  # all, always: see the docstring
        combine = operator.and_ if isinstance(node, And) else operator.or_
        return functools.reduce(combine, results)

    return pd.Series(np.array(walk(node), dtype=bool), index=frame.index, name="selected")


def filter_frame(frame: "pandas.DataFrame", expr: str | None) -> "pandas.DataFrame":
    """The rows the filter keeps; None or a blank filter keeps all."""
    if expr is None or not expr.strip():
        return frame
    return frame[evaluate(parse(expr), frame).to_numpy()]


def unknown_column_message(name: str, available: list[str], what: str, shown: int = 20) -> str:
    """`what: unknown column "nme"; did you mean "name"? columns: name, ...`, nearest first."""
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    ordered = close + [c for c in available if c not in close]
    listed = ", ".join(ordered[:shown]) + (f", ... ({len(ordered) - shown} more)" if len(ordered) > shown else "")
    hint = f"; did you mean \"{close[0]}\"?" if close else ";"
    return one_line(f"{what}: unknown column \"{name}\"{hint} columns: {listed}")
