"""Chat templates of the simple kind, rendered without Jinja, for the plain onnxruntime runtime.

onnxruntime-genai renders a variant's template itself, but its Tokenizer exists only beside a
loaded og.Model, and the agent has no Jinja. This module renders the family of templates that
slmops trains (controller/pipeline/chat.py) and many others share: one loop over the messages,
``if``/``elif``/``else`` on the role, text and ``{{ ... }}`` outputs joining string literals,
``message['role']`` / ``message['content']`` (``| trim`` allowed), ``bos_token`` and
``eos_token`` with ``+``, and the ``add_generation_prompt`` block. Whitespace is handled as
transformers renders templates (``trim_blocks``, ``lstrip_blocks``, ``{%-`` / ``-%}``), so the
output is the same, byte for byte. Anything else (``set``, macros, ``loop``, tools, other
filters) raises :class:`TemplateError` saying what it met.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TAG = re.compile(r"\{\{(-?)(.*?)(-?)\}\}|\{%([-+]?)(.*?)(-?)%\}|\{#([-+]?)(.*?)(-?)#\}", re.S)
_TOKEN = re.compile(r"""\s*(?:('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")  # a string
                       |([A-Za-z_]\w*)|(==|!=|[\[\].+|]))""", re.S | re.X)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
MESSAGE_KEYS = ("role", "content")
GLOBALS = ("bos_token", "eos_token")


class TemplateError(ValueError):
    """A template outside the family this module renders; the message says what it met."""


@dataclass(frozen=True)
class _Value:  # a string literal, message[key] or a global, optionally trimmed
    literal: str | None = None
    key: str | None = None  # message key
    name: str | None = None  # global
    trim: bool = False


@dataclass(frozen=True)
class _Output:
    terms: tuple[_Value, ...]


@dataclass(frozen=True)
class _Cond:  # add_generation_prompt, or left ==/!= right
    left: tuple[_Value, ...] = ()
    op: str = ""
    right: tuple[_Value, ...] = ()
    negate: bool = False


@dataclass(frozen=True)
class _If:
    branches: tuple[tuple[_Cond, tuple[_Node, ...]], ...]
    otherwise: tuple[_Node, ...]


@dataclass(frozen=True)
class _For:
    body: tuple[_Node, ...]


_Node = str | _Output | _If | _For


def _lex(source: str) -> list[tuple[str, str]]:
    """[(kind, text)]: kind "text", "out" or "stmt"; whitespace control already applied."""
    items: list[list[str]] = []
    at = 0
    for match in _TAG.finditer(source):
        items.append(["text", source[at:match.start()]])
        if match.group(2) is not None:
            kind, before, body, after = "out", match.group(1), match.group(2), match.group(3)
        elif match.group(5) is not None:
            kind, before, body, after = "stmt", match.group(4), match.group(5), match.group(6)
        else:
            kind, before, body, after = "comment", match.group(7), match.group(8), match.group(9)
        text = items[-1][1]
        if before == "-":
            text = text.rstrip()
        elif kind != "out" and before != "+":  # lstrip_blocks: a block tag alone at a line's start
            line_start = text.rfind("\n") + 1
            if not text[line_start:].strip(" \t"):
                text = text[:line_start]
        items[-1][1] = text
        items.append([kind, body.strip(), after])
        at = match.end()
    items.append(["text", source[at:]])
    out: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        if item[0] == "text":
            text = item[1]
            if index and items[index - 1][2] == "-":
                text = text.lstrip()
            elif index and items[index - 1][0] != "out" and text.startswith(("\n", "\r\n")):
                text = text[text.index("\n") + 1:]  # trim_blocks
            if text:
                out.append(("text", text))
        elif item[0] != "comment":
            out.append((item[0], item[1]))
    return out


def _tokens(expr: str) -> list[str]:
    tokens, at = [], 0
    while at < len(expr.rstrip()):
        match = _TOKEN.match(expr, at)
        if not match:
            raise TemplateError(f"unsupported expression {expr!r}")
        tokens.append(match.group(match.lastindex or 0))
        at = match.end()
    return tokens


def _literal(token: str) -> str:
    body, out, at = token[1:-1], [], 0
    while at < len(body):
        if body[at] == "\\":
            if body[at + 1:at + 2] not in _ESCAPES:
                raise TemplateError(f"unsupported escape in the string {token}")
            out.append(_ESCAPES[body[at + 1]])
            at += 2
        else:
            out.append(body[at])
            at += 1
    return "".join(out)


def _terms(tokens: list[str], expr: str) -> tuple[_Value, ...]:
    """``term (+ term)*`` where a term is a string, message[key], message.key or a global."""
    terms: list[_Value] = []
    while True:
        if not tokens:
            raise TemplateError(f"unsupported expression {expr!r}")
        token = tokens.pop(0)
        if token[0] in "'\"":
            value = _Value(literal=_literal(token))
        elif token == "message" and tokens[:1] == ["["] and len(tokens) > 2 and tokens[2] == "]":
            value = _Value(key=_literal(tokens[1]) if tokens[1][0] in "'\"" else "?")
            del tokens[:3]
        elif token == "message" and tokens[:1] == ["."] and len(tokens) > 1:
            value = _Value(key=tokens[1])
            del tokens[:2]
        elif token in GLOBALS:
            value = _Value(name=token)
        else:
            raise TemplateError(f"unsupported expression {expr!r} (at {token!r})")
        if value.key is not None and value.key not in MESSAGE_KEYS:
            raise TemplateError(f"unsupported expression {expr!r}: only message['role'] and "
                                "message['content'] are known")
        if tokens[:2] == ["|", "trim"]:
            value = _Value(value.literal, value.key, value.name, trim=True)
            del tokens[:2]
        terms.append(value)
        if tokens[:1] != ["+"]:
            return tuple(terms)
        tokens.pop(0)


def _expression(expr: str) -> _Output:
    tokens = _tokens(expr)
    terms = _terms(tokens, expr)
    if tokens:
        raise TemplateError(f"unsupported expression {expr!r}")
    return _Output(terms)


def _condition(expr: str) -> _Cond:
    tokens = _tokens(expr)
    negate = tokens[:1] == ["not"]
    if tokens[int(negate):] == ["add_generation_prompt"]:
        return _Cond(negate=negate)
    left = _terms(tokens, expr)
    if not tokens or tokens[0] not in ("==", "!="):
        raise TemplateError(f"unsupported condition {expr!r}")
    op = tokens.pop(0)
    right = _terms(tokens, expr)
    if tokens:
        raise TemplateError(f"unsupported condition {expr!r}")
    return _Cond(left, op, right)


def _parse(items: list[tuple[str, str]], at: int,
           ends: tuple[str, ...]) -> tuple[tuple[_Node, ...], int, str]:
    """Nodes from ``items[at:]`` up to a statement starting with one of ``ends``."""
    nodes: list[_Node] = []
    while at < len(items):
        kind, text = items[at]
        at += 1
        if kind == "text":
            nodes.append(text)
        elif kind == "out":
            nodes.append(_expression(text))
        elif (text.split(maxsplit=1) or [""])[0] in ends:
            return tuple(nodes), at, text
        elif re.fullmatch(r"for\s+message\s+in\s+messages", text):
            body, at, _ = _parse(items, at, ("endfor",))
            nodes.append(_For(body))
        elif text.startswith("if "):
            branches, cond = [], _condition(text[3:])
            while True:
                body, at, end = _parse(items, at, ("elif", "else", "endif"))
                branches.append((cond, body))
                if not end.startswith("elif"):
                    break
                cond = _condition(end[5:])
            otherwise: tuple[_Node, ...] = ()
            if end == "else":
                otherwise, at, _ = _parse(items, at, ("endif",))
            nodes.append(_If(tuple(branches), otherwise))
        else:
            raise TemplateError(f"unsupported statement {{% {text} %}}")
    if ends:
        raise TemplateError(f"the template ends before {{% {ends[-1]} %}}")
    return tuple(nodes), at, ""


class ChatTemplate:
    def __init__(self, source: str) -> None:
        """Parse ``source``; raises TemplateError when it is not of the family above."""
        self.source = source
        self._nodes, _, _ = _parse(_lex(source), 0, ())

    def render(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True,
               bos_token: str = "", eos_token: str = "") -> str:
        scope = {"bos_token": bos_token, "eos_token": eos_token}
        out: list[str] = []
        self._render(self._nodes, messages, None, scope, add_generation_prompt, out)
        return "".join(out)

    def _render(self, nodes: Sequence[_Node], messages: Sequence[Mapping[str, str]],
                message: Mapping[str, str] | None, scope: Mapping[str, str], generation: bool,
                out: list[str]) -> None:
        def value(terms: tuple[_Value, ...]) -> str:
            parts = []
            for term in terms:
                if term.key is not None:
                    if message is None:
                        raise TemplateError("the template reads message outside the loop over messages")
                    text = str(message.get(term.key, ""))
                else:
                    text = term.literal if term.literal is not None else scope[term.name or ""]
                parts.append(text.strip() if term.trim else text)
            return "".join(parts)

        def holds(cond: _Cond) -> bool:
            if not cond.op:
                return generation != cond.negate
            return (value(cond.left) == value(cond.right)) == (cond.op == "==")

        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Output):
                out.append(value(node.terms))
            elif isinstance(node, _For):
                for each in messages:
                    self._render(node.body, messages, each, scope, generation, out)
            else:
                body = next((b for cond, b in node.branches if holds(cond)), node.otherwise)
                self._render(body, messages, message, scope, generation, out)
