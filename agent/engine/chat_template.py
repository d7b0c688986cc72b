"""A model's chat template, rendered as transformers' ``apply_chat_template`` renders it.

The environment is transformers' (``transformers.utils.chat_template_utils``), rebuilt here
because the agent never imports transformers: jinja2's ``ImmutableSandboxedEnvironment`` with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}``
block (transformers tracks assistant tokens with it; rendering only needs its body), the
``raise_exception`` and ``strftime_now`` globals, and a ``tojson`` filter that does not escape
HTML and takes ``indent`` / ``ensure_ascii`` / ``separators`` / ``sort_keys``. The template gets
what transformers passes it: ``messages``, ``tools`` and ``documents`` (None),
``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``, ``eos_token``,
``unk_token``, ``pad_token`` from tokenizer_config.json).

Two checks transformers does not make, so a conversation is never changed silently:

- a template that reads an attribute or key starting with ``_`` (``__class__``, ...: the sandbox
  forbids them) is refused when it is compiled, so such a model fails to load;
- :meth:`ChatTemplate.render` renders the conversation a second time with a unique marker as
  each message's content and raises :class:`TemplateError` naming the role of any message whose
  marker is missing (a template with no branch for ``system`` or ``tool`` drops those).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.engine.variant import REBUILD, TOKENIZER_CONFIG, VariantError, VariantInfo, token_text

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


class TemplateError(ValueError):
    """The template can't be compiled, or can't render these messages; the message says why and
    ``field`` names the part of the request at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, field: str = "messages") -> None:
        super().__init__(message)
        self.field = field


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body (transformers' AssistantTracker
    also records where it is, for assistant-token masks, which serving does not need)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> str:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _private_names(tree: nodes.Template) -> list[str]:
    """Attributes and constant keys starting with ``_`` that the template reads."""
    found = [node.attr for node in tree.find_all(nodes.Getattr) if node.attr.startswith("_")]
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str) \
                and item.arg.value.startswith("_"):
            found.append(item.arg.value)
    for call in tree.find_all(nodes.Filter):  # value | attr('__class__')
        if call.name == "attr" and call.args and isinstance(call.args[0], nodes.Const) \
                and str(call.args[0].value).startswith("_"):
            found.append(str(call.args[0].value))
    return found


def _marker(index: int) -> str:
    return f"slmopsmsg{index}x7q"  # one word: survives trim, split, replace of whitespace


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        """Compile ``source``; raises TemplateError on a syntax error or a forbidden name."""
        env = _environment()
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from e
        private = _private_names(tree)
        if private:
            raise TemplateError(f"the chat template reads {', '.join(sorted(set(private)))}, which the "
                                "sandbox forbids (names starting with '_' reach Python internals)")
        self.source = source
        # as transformers' special_tokens_map: only the tokens the tokenizer has
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if k in SPECIAL_TOKENS and v}
        self._template = env.from_string(source)

    def _render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return self._template.render(messages=[dict(m) for m in messages], tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.TemplateError as e:  # raise_exception, SecurityError, UndefinedError
            raise TemplateError(f"the chat template refused these messages: {e.message or e}") from e
        except (TypeError, ValueError, LookupError, AttributeError) as e:
            raise TemplateError(f"the chat template failed on these messages "
                                f"({type(e).__name__}: {e})") from e

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text of ``messages`` (each with ``role`` and ``content``). Raises
        TemplateError with the template's own message, or naming a message it leaves out."""
        text = self._render(messages, add_generation_prompt)
        probes = [{**m, "content": _marker(i)} for i, m in enumerate(messages)]
        try:
            probed = self._render(probes, add_generation_prompt)
        except TemplateError:
            return text  # the template reads the content itself (parses it...): nothing to check
        for index, message in enumerate(messages):
            if _marker(index) not in probed:
                raise TemplateError(f"the chat template does not render a {message.get('role')!r} message "
                                    f"(messages[{index}]); it would be dropped from the prompt",
                                    field=f"messages[{index}].role")
        return text


def variant_template(info: VariantInfo) -> ChatTemplate | None:
    """The variant's chat template (chat_template.jinja, else tokenizer_config.json's
    ``chat_template``, as check_variant found it) with the special tokens of its
    tokenizer_config.json; None if it has none. Raises VariantError naming the file."""
    if info.chat_template is None:
        return None
    config_path = info.path / TOKENIZER_CONFIG
    config: Any = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VariantError(f"{config_path} is not valid JSON ({e}); {REBUILD}") from e
    config = config if isinstance(config, dict) else {}
    specials = {key: token_text(config.get(key)) for key in SPECIAL_TOKENS}
    try:
        return ChatTemplate(info.chat_template, specials)
    except TemplateError as e:
        raise VariantError(f"{info.path / (info.chat_template_file or TOKENIZER_CONFIG)}: {e}; fix the "
                           "template there, or rebuild the variant from a model with a working one") from e
