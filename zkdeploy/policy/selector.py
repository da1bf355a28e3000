"""Node selectors: which nodes a wave (or a discovery) takes, from their name, labels and facts.

The language, in the spirit of mcollective's compound filters::

    env=prod   env==prod          equality (strings compare as text)
    env!=dev                      inequality
    env in (qa, int)              one of
    rack=~/^r1[0-9]$/             regular expression (search)
    cpus>=8   memory<64000        numeric comparisons (<, <=, >, >=)
    node=web-a01                  the node's name is the key ``node``
    slice(0%, 50%)                a stable slice of the fleet by a hash of the node's name
    has(gpu)                      the label is present
    class=web   /^web/            the node has this class (bare /re/: a class matching it)
    os.family=debian  cpus>=8     facts are keys like labels (dotted names: ``os.family``)
    not X  !X  X and Y  X or Y  (X)  the usual precedence: not, then and, then or
    *                             every node

The mapping a selector reads is whatever the caller gives: for a wave, the
node's labels; for discovery (zkdeploy.policy.discovery), its facts with its
labels over them, its ``classes`` and each service's ``<service>.version``.
A value that is a list (``classes``) matches ``=`` when it holds the value,
``!=`` when it does not, ``=~`` when any element matches, ``in (..)`` when
any element is one of them.  ``class`` is another name for ``classes``.

``slice(a%, b%)`` keeps a node when a stable hash of its name, as a
percentage, falls in [a, b): the same node always lands in the same slice, on
every agent and in every command, so "half of env=prod" is
``env=prod and slice(0%, 50%)``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zkdeploy.errors import ConfigError

Labels = Mapping[str, Any]
Test = Callable[[str, Labels], bool]

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<regex>=~\s*/(?:\\.|[^/])*/)
    | (?P<op><=|>=|!=|==|=|<|>)
    | (?P<bare>/(?:\\.|[^/])*/)
    | (?P<punct>[(),*!])
    | (?P<pct>\d+(?:\.\d+)?%)
    | (?P<word>[A-Za-z0-9_.:+@-]+|"[^"]*"|'[^']*')
    )""", re.VERBOSE)


def slice_point(node: str) -> float:
    """Where ``node`` falls in [0, 100): the same on every host and in every run."""
    digest = hashlib.sha256(node.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass(frozen=True)
class Selector:
    """A parsed selector; ``matches(node, labels)`` says whether it takes that node."""

    text: str
    _test: Test

    def matches(self, node: str, labels: Labels) -> bool:
        return self._test(node, labels)

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> Selector:
    """Parse ``text``; ConfigError naming the position and what was expected when it is not valid."""
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    test = parser.expression()
    if parser.pos != len(tokens):
        parser.fail("an operator (and, or) or the end")
    return Selector(text.strip(), test)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ConfigError(f"selector {text!r}: unexpected {text[pos:].strip()[:10]!r} at position {pos}")
        kind = match.lastgroup or ""
        start, value = match.start(kind), match.group(kind).strip()
        if kind == "word" and value[:1] in "\"'":
            value, kind = value[1:-1], "string"
        out.append((kind, value, start))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str, tokens: list[tuple[str, str, int]]) -> None:
        self.text = text
        self.tokens = tokens
        self.pos = 0

    def fail(self, expected: str) -> None:
        where = self.tokens[self.pos][2] if self.pos < len(self.tokens) else len(self.text)
        got = repr(self.tokens[self.pos][1]) if self.pos < len(self.tokens) else "the end"
        raise ConfigError(f"selector {self.text!r}: expected {expected} at position {where}, got {got}")

    def peek(self, value: str | None = None, kind: str | None = None) -> bool:
        if self.pos >= len(self.tokens):
            return False
        tkind, tvalue, _ = self.tokens[self.pos]
        return (value is None or tvalue == value) and (kind is None or tkind == kind)

    def take(self, value: str | None = None, kind: str | None = None, expected: str = "") -> str:
        if not self.peek(value, kind):
            self.fail(expected or repr(value) or kind or "a token")
        token = self.tokens[self.pos][1]
        self.pos += 1
        return token

    def expression(self) -> Test:
        left = self.conjunction()
        while self.peek("or"):
            self.pos += 1
            right, first = self.conjunction(), left
            left = (lambda f, g: lambda n, labels: f(n, labels) or g(n, labels))(first, right)
        return left

    def conjunction(self) -> Test:
        left = self.negation()
        while self.peek("and"):
            self.pos += 1
            right, first = self.negation(), left
            left = (lambda f, g: lambda n, labels: f(n, labels) and g(n, labels))(first, right)
        return left

    def negation(self) -> Test:
        if self.peek("not") or self.peek("!", kind="punct"):
            self.pos += 1
            inner = self.negation()
            return lambda n, labels: not inner(n, labels)
        return self.atom()

    def atom(self) -> Test:
        if self.peek("("):
            self.pos += 1
            inner = self.expression()
            self.take(")", expected="')'")
            return inner
        if self.peek("*"):
            self.pos += 1
            return lambda n, labels: True
        if self.peek(kind="bare"):
            pattern = self._regex(self.take(kind="bare")[1:-1])
            return lambda n, labels: any(pattern.search(c) for c in _items(labels.get("classes")))
        if self.peek("slice") and self.pos + 1 < len(self.tokens) and self.tokens[self.pos + 1][1] == "(":
            return self.slice()
        if self.peek("has") and self.pos + 1 < len(self.tokens) and self.tokens[self.pos + 1][1] == "(":
            self.pos += 2
            key = self.take(kind="word", expected="a label name")
            self.take(")", expected="')'")
            return lambda n, labels: key == "node" or _key(key) in labels
        key = self.take(kind="word", expected="a label name, '(', 'not', 'slice(...)' or '*'")
        return self.comparison(key)

    def slice(self) -> Test:
        self.pos += 2
        low = self._percent()
        self.take(",", expected="','")
        high = self._percent()
        self.take(")", expected="')'")
        if not 0 <= low <= high <= 100:
            raise ConfigError(f"selector {self.text!r}: slice({low:g}%, {high:g}%) "
                              "must satisfy 0% <= from <= to <= 100%")
        return lambda n, labels: low <= slice_point(n) < high or (high == 100 and slice_point(n) >= low)

    def _percent(self) -> float:
        return float(self.take(kind="pct", expected="a percentage like 50%")[:-1])

    def comparison(self, key: str) -> Test:
        name = _key(key)

        def value_of(node: str, labels: Labels) -> Any:
            return node if key == "node" else labels.get(name)

        if self.peek("in"):
            self.pos += 1
            self.take("(", expected="'(' after 'in'")
            values = {self._value()}
            while self.peek(","):
                self.pos += 1
                values.add(self._value())
            self.take(")", expected="')'")
            return lambda n, labels: any(v in values for v in _items(value_of(n, labels)))
        if self.peek(kind="regex"):
            pattern = self._regex(self.take(kind="regex")[2:].strip()[1:-1])
            return lambda n, labels: any(pattern.search(v) for v in _items(value_of(n, labels)))
        op = self.take(kind="op", expected=f"an operator after {key!r} (=, !=, in, =~, <, <=, >, >=)")
        value = self._value()
        if op in ("=", "==", "!="):
            equal = op != "!="
            return lambda n, labels: (value in _items(value_of(n, labels))) == equal
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"selector {self.text!r}: {key}{op}{value}: a number is needed after {op}") from None
        compare = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}[op]

        def numeric(n: str, labels: Labels) -> bool:
            try:
                return compare(float(value_of(n, labels)), number)
            except (TypeError, ValueError):
                return False
        return numeric

    def _regex(self, source: str) -> re.Pattern[str]:
        try:
            return re.compile(source)
        except re.error as exc:
            raise ConfigError(f"selector {self.text!r}: bad regular expression /{source}/: {exc}") from None

    def _value(self) -> str:
        if self.peek(kind="string"):
            return self.take(kind="string")
        if self.peek(kind="pct"):
            return self.take(kind="pct")
        return self.take(kind="word", expected="a value")


def _key(key: str) -> str:
    return "classes" if key == "class" else key


def _items(value: Any) -> list[str]:
    """A value as the texts it matches: every element of a list, else the value itself (none for None)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_text(v) for v in value]
    return [_text(value)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
