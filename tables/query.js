/* The filter language of tables/query.py, for the HTML report: same grammar, same
 * semantics, same syntax-error messages and columns (tests/query_cases.json holds both
 * to it). No dependencies; never uses eval or Function.
 *
 *   Query.parse(expr)   -> AST ({type: "compare" | "not" | "and" | "or", ...})
 *   Query.compile(expr) -> row => boolean, for a row object {truth: "Aves", score_Aves: 0.3, ...}
 *
 * Syntax errors are thrown at parse/compile time as QuerySyntaxError (.column is 1-based,
 * counted in code points as Python does); unknown columns and type mismatches are thrown
 * as QueryError when a row is tested. Null: null, undefined, NaN and "" are all null;
 * null = null and null = "" are true, null = anything else is false, and < <= > >= with a
 * null side are false. Both sides of and/or are always evaluated, as in Python.
 */
(function () {
  "use strict";

  const OPERATORS = ["==", "!=", "<=", ">=", "=", "<", ">"]; // longest first
  const KEYWORDS = ["and", "or", "not", "true", "false", "null", "x"];
  const ESCAPES = { '"': '"', "'": "'", "\\": "\\", n: "\n", t: "\t", r: "\r" };
  const WHITESPACE = " \t\r\n";
  const DIGITS = "0123456789";
  const NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_";
  const NAME_CHARS = NAME_START + DIGITS;
  const CHAR_HINTS = { "&": " (write 'and')", "|": " (write 'or')" };
  const SHOWN_TOKEN_CHARS = 30;
  const MAX_NESTING = 100;

  function oneLine(text) {
    return text.replace(/[\r\n\t]/g, " ");
  }

  class QueryError extends Error {
    constructor(message) {
      super(oneLine(message));
      this.name = "QueryError";
    }
  }

  class QuerySyntaxError extends QueryError {
    constructor(reason, column, expr) {
      super(`filter: ${reason} at column ${column}: ${expr}`);
      this.name = "QuerySyntaxError";
      this.reason = reason;
      this.column = column;
      this.expr = expr;
    }
  }

  // ------------------------------------------------------------------ tokens

  function describeChar(char) {
    if (char >= "!" && char <= "~") return `'${char}'`;
    return "U+" + char.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
  }

  function describeToken(token) {
    if (token.kind === "end") return "the end";
    let chars = Array.from(token.text);
    if (chars.length > SHOWN_TOKEN_CHARS) chars = chars.slice(0, SHOWN_TOKEN_CHARS - 3).concat(["..."]);
    return `'${chars.join("")}'`;
  }

  function* tokenize(expr) {
    const chars = Array.from(expr); // code points, so columns match Python's
    const text = (start, end) => chars.slice(start, end).join("");
    const startsWith = (s, i) => text(i, i + s.length) === s;
    let i = 0;
    while (i < chars.length) {
      const char = chars[i];
      if (WHITESPACE.includes(char)) {
        i += 1;
        continue;
      }
      const start = i;
      if ("()[]".includes(char)) {
        yield { kind: char, text: char, column: i + 1 };
        i += 1;
      } else if ("=!<>".includes(char)) {
        const op = OPERATORS.find((o) => startsWith(o, i));
        if (op === undefined) throw new QuerySyntaxError("unexpected character '!' (did you mean '!='?)", i + 1, expr);
        yield { kind: "op", text: op, column: i + 1, value: op === "==" ? "=" : op };
        i += op.length;
      } else if (char === '"' || char === "'") {
        const [value, end] = readString(chars, i, expr);
        i = end;
        yield { kind: "string", text: text(start, i), column: start + 1, value };
      } else if (char === "-" || DIGITS.includes(char)) {
        i = readNumber(chars, i, expr);
        yield { kind: "number", text: text(start, i), column: start + 1, value: Number(text(start, i)) };
      } else if (NAME_START.includes(char)) {
        while (i < chars.length && NAME_CHARS.includes(chars[i])) i += 1;
        yield { kind: "name", text: text(start, i), column: start + 1, value: text(start, i).toLowerCase() };
      } else {
        const hint = Object.prototype.hasOwnProperty.call(CHAR_HINTS, char) ? CHAR_HINTS[char] : "";
        throw new QuerySyntaxError(`unexpected character ${describeChar(char)}${hint}`, i + 1, expr);
      }
    }
    yield { kind: "end", text: "", column: chars.length + 1 };
  }

  function readString(chars, start, expr) {
    const quote = chars[start];
    const out = [];
    let i = start + 1;
    while (i < chars.length && chars[i] !== quote) {
      if (chars[i] === "\\") {
        if (i + 1 >= chars.length) break;
        const escaped = chars[i + 1];
        if (!Object.prototype.hasOwnProperty.call(ESCAPES, escaped)) {
          const shown = escaped >= "!" && escaped <= "~" ? "'\\" + escaped + "'" : "after '\\'";
          throw new QuerySyntaxError(`unknown escape ${shown} in a string (use \\" \\' \\\\ \\n \\t \\r)`, i + 1, expr);
        }
        out.push(ESCAPES[escaped]);
        i += 2;
      } else {
        out.push(chars[i]);
        i += 1;
      }
    }
    if (i >= chars.length || chars[i] !== quote) throw new QuerySyntaxError(`unterminated string (add the closing ${quote})`, start + 1, expr);
    return [out.join(""), i + 1];
  }

  function readNumber(chars, start, expr) {
    const digits = (i, after) => {
      if (i >= chars.length || !DIGITS.includes(chars[i])) {
        throw new QuerySyntaxError(`expected a digit after '${after}'`, i + 1, expr);
      }
      while (i < chars.length && DIGITS.includes(chars[i])) i += 1;
      return i;
    };
    let i = chars[start] === "-" ? digits(start + 1, "-") : digits(start, "");
    if (i < chars.length && chars[i] === ".") i = digits(i + 1, ".");
    if (i < chars.length && (chars[i] === "e" || chars[i] === "E")) {
      let after = chars[i];
      i += 1;
      if (i < chars.length && (chars[i] === "+" || chars[i] === "-")) {
        after = chars[i];
        i += 1;
      }
      i = digits(i, after);
    }
    return i;
  }

  // ------------------------------------------------------------------ the parser (mirrors Parser in query.py)

  class Parser {
    constructor(expr) {
      this.expr = expr;
      this.chars = Array.from(expr);
      this.source = tokenize(expr);
      this.tokens = [];
      this.at = 0;
      this.depth = 0;
    }

    peek() {
      if (this.at === this.tokens.length) this.tokens.push(this.source.next().value);
      return this.tokens[this.at];
    }

    take() {
      const token = this.peek();
      this.at += 1;
      return token;
    }

    isKeyword(word) {
      const token = this.peek();
      return token.kind === "name" && token.value === word;
    }

    fail(reason, token) {
      throw new QuerySyntaxError(reason, token.column, this.expr);
    }

    expected(what, token) {
      this.fail(`expected ${what}, found ${describeToken(token)}`, token);
    }

    expectEndOf(what, token) {
      if (token.kind === "op") this.fail("comparisons cannot be chained; join them with 'and'", token);
      this.expected(what, token);
    }

    parse() {
      const node = this.orExpr();
      if (this.peek().kind !== "end") this.expectEndOf("'and', 'or' or the end", this.peek());
      return node;
    }

    orExpr() {
      const operands = [this.andExpr()];
      while (this.isKeyword("or")) {
        this.take();
        operands.push(this.andExpr());
      }
      return operands.length === 1 ? operands[0] : { type: "or", operands };
    }

    andExpr() {
      const operands = [this.notExpr()];
      while (this.isKeyword("and")) {
        this.take();
        operands.push(this.notExpr());
      }
      return operands.length === 1 ? operands[0] : { type: "and", operands };
    }

    notExpr() {
      const token = this.peek();
      if (token.kind === "(" || this.isKeyword("not")) {
        this.depth += 1;
        if (this.depth > MAX_NESTING) this.fail(`nested deeper than ${MAX_NESTING} levels`, token);
        this.take();
        const node = token.kind === "name" ? { type: "not", operand: this.notExpr() } : this.parenthesised(token);
        this.depth -= 1;
        return node;
      }
      if (token.kind === "string" || token.kind === "number" || (token.kind === "name" && token.value !== "and" && token.value !== "or")) {
        return this.comparison();
      }
      const previous = this.at ? this.tokens[this.at - 1] : null;
      const after = previous ? ` after '${previous.text}'` : ' such as x["truth"] = "Aves"';
      this.expected("a condition" + after, token);
    }

    parenthesised(opening) {
      const node = this.orExpr();
      if (this.peek().kind !== ")") this.expectEndOf(`')' for the '(' at column ${opening.column}`, this.peek());
      this.take();
      return node;
    }

    comparison() {
      const start = this.peek().column - 1;
      const left = this.value(null);
      const op = this.peek();
      if (op.kind !== "op") {
        const last = this.tokens[this.at - 1];
        const leftText = this.chars.slice(start, last.column - 1 + Array.from(last.text).length).join("");
        this.expected(`an operator (= != < <= > >=) after ${leftText}`, op);
      }
      this.take();
      const right = this.value(op);
      if (op.value !== "=" && op.value !== "!=") {
        for (const side of [left, right]) {
          const kind = side.type === "literal" ? literalKind(side.value) : null;
          if (kind === "null" || kind === "boolean") this.fail(`'${op.text}' cannot order ${kind} values; use = or !=`, op);
        }
      }
      return { type: "compare", op: op.value, left, right, column: op.column };
    }

    value(afterOp) {
      const token = this.peek();
      if (token.kind === "string" || token.kind === "number") {
        this.take();
        return { type: "literal", value: token.value };
      }
      if (token.kind === "name" && ["true", "false", "null"].includes(token.value)) {
        this.take();
        return { type: "literal", value: { true: true, false: false, null: null }[token.value] };
      }
      if (token.kind === "name" && token.value === "x") {
        this.take();
        return this.columnRest(token);
      }
      if (token.kind === "name" && !KEYWORDS.includes(token.value)) {
        this.fail(`unknown name '${token.text}' (write a column as x["name"] and text in quotes)`, token);
      }
      this.expected("a value" + (afterOp ? ` after '${afterOp.text}'` : ""), token);
    }

    columnRest(x) {
      if (this.peek().kind !== "[") this.expected(`'[' after '${x.text}'`, this.peek());
      this.take();
      const name = this.peek();
      if (name.kind !== "string") this.expected("a quoted column name", name);
      this.take();
      if (this.peek().kind !== "]") this.expected("']'", this.peek());
      this.take();
      return { type: "column", name: name.value, column: x.column };
    }
  }

  function parse(expr) {
    if (typeof expr !== "string") throw new QueryError(`filter: expected the filter as text, got ${typeof expr}`);
    return new Parser(expr).parse();
  }

  // ------------------------------------------------------------------ evaluation

  function isNull(value) {
    return value === null || value === undefined || value === "" || (typeof value === "number" && Number.isNaN(value));
  }

  function literalKind(value) {
    if (isNull(value)) return "null";
    if (typeof value === "boolean") return "boolean";
    return typeof value === "number" ? "number" : "string";
  }

  function shown(side) {
    if (side.type === "column") return `x[${JSON.stringify(side.name)}]`;
    return side.value === null ? "null" : JSON.stringify(side.value);
  }

  function readSide(side, row) {
    if (side.type === "literal") return isNull(side.value) ? null : side.value;
    if (!Object.prototype.hasOwnProperty.call(row, side.name)) {
      throw new QueryError(`filter: unknown column ${JSON.stringify(side.name)}; columns: ${Object.keys(row).join(", ")}`);
    }
    const value = row[side.name];
    if (isNull(value)) return null;
    if (!["string", "number", "boolean"].includes(typeof value)) {
      throw new QueryError(`filter: column ${shown(side)} holds ${typeof value} values; the filter compares numbers, strings and booleans only`);
    }
    return value;
  }

  function compareStrings(a, b) {
    // By code point, as Python does: a surrogate (half of a code point above U+FFFF)
    // sorts after every other UTF-16 unit.
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) {
      const x = a.charCodeAt(i);
      const y = b.charCodeAt(i);
      if (x !== y) {
        const sx = x >= 0xd800 && x <= 0xdfff;
        const sy = y >= 0xd800 && y <= 0xdfff;
        if (sx !== sy) return sx ? 1 : -1;
        return x < y ? -1 : 1;
      }
    }
    return a.length - b.length;
  }

  function compareValues(node, a, b) {
    const ka = literalKind(a);
    const kb = literalKind(b);
    if (ka !== "null" && kb !== "null" && ka !== kb) {
      throw new QueryError(`filter: cannot compare ${shown(node.left)} (${ka}) with ${shown(node.right)} (${kb}) at column ${node.column}; compare numbers with numbers and text with quoted text`);
    }
    const ordering = node.op !== "=" && node.op !== "!=";
    if (ordering && (ka === "boolean" || kb === "boolean")) {
      throw new QueryError(`filter: '${node.op}' cannot order boolean values at column ${node.column}; use = or !=`);
    }
    if (ka === "null" || kb === "null") {
      if (ordering) return false;
      return (ka === kb) === (node.op === "=");
    }
    const order = ka === "string" ? compareStrings(a, b) : a < b ? -1 : a > b ? 1 : 0;
    switch (node.op) {
      case "=": return order === 0;
      case "!=": return order !== 0;
      case "<": return order < 0;
      case "<=": return order <= 0;
      case ">": return order > 0;
      default: return order >= 0;
    }
  }

  function evaluate(node, row) {
    switch (node.type) {
      case "compare":
        return compareValues(node, readSide(node.left, row), readSide(node.right, row));
      case "not":
        return !evaluate(node.operand, row);
      case "and": {
        const results = node.operands.map((operand) => evaluate(operand, row)); // all, always
        return results.every(Boolean);
      }
      default: {
        const results = node.operands.map((operand) => evaluate(operand, row));
        return results.some(Boolean);
      }
    }
  }

  function compile(expr) {
    const ast = parse(expr);
    return (row) => evaluate(ast, row);
  }

  const Query = { parse, compile, QueryError, QuerySyntaxError };
  if (typeof module !== "undefined" && module.exports) module.exports = Query;
  if (typeof window !== "undefined") window.Query = Query;
})();
