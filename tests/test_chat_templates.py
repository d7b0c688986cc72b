"""The agent renders chat templates as transformers does: the same text and the same token ids,
for SmolLM2's own template and the published templates of Llama 3.2, Qwen2.5, Phi-3 and Gemma
(tests/chat_templates.py), and a message a template cannot render is a 400 naming it, never
dropped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from chat_templates import TEMPLATES
from test_agent_serve import ServerThread, http
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from agent.engine import Engine, ModelSlot, VariantError
from agent.engine.chat_template import ChatTemplate, TemplateError
from agent.engine.variant import check_variant

SYSTEM = {"role": "system", "content": "You are a careful assistant for a shop. Answer briefly and politely."}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system-user": [SYSTEM, {"role": "user", "content": "  Where is my order #4880?  "}],
    "multi-turn": [{"role": "user", "content": "Hi!"},
                   {"role": "assistant", "content": "Hello, how can I help?"},
                   {"role": "user", "content": "Tell me a joke about \"quotes\" & <tags>."}],
    "system-multi-turn": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey."},
                          {"role": "user", "content": "Ünïcode — 日本語?"}],
}


def _both(tokenizer: PreTrainedTokenizerFast, agent_tokenizer: Tokenizer, template: ChatTemplate,
          messages: list[dict[str, str]], generation: bool, **specials: str) -> None:
    """Render with transformers and with the agent; assert the same text and the same ids, or
    the same refusal."""
    try:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                                 **specials)
    except jinja2.TemplateError as e:  # from the template's raise_exception
        with pytest.raises(TemplateError, match=str(e).split("...")[0].replace("(", r"\(")):
            template.render(messages, add_generation_prompt=generation)
        return
    text = template.render(messages, add_generation_prompt=generation)
    assert text == expected
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation, **specials)
    assert agent_tokenizer.encode(text, add_special_tokens=False).ids == list(ids)


@pytest.mark.parametrize("generation", [True, False], ids=["generation-prompt", "no-generation-prompt"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("model", list(TEMPLATES))
def test_published_templates_render_the_same_text_and_tokens_as_transformers(
        smollm2_dir: Path, model: str, conversation: str, generation: bool) -> None:
    source, specials = TEMPLATES[model]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(smollm2_dir / "tokenizer.json"))
    tokenizer.chat_template = source
    agent_tokenizer = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    _both(tokenizer, agent_tokenizer, ChatTemplate(source, specials), CONVERSATIONS[conversation], generation,
          **specials)


@pytest.mark.parametrize("generation", [True, False])
def test_smollm2s_own_template_renders_as_transformers_apply_chat_template(smollm2_dir: Path,
                                                                          generation: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    template = ChatTemplate(config["chat_template"], {k: config[k] for k in ("bos_token", "eos_token")})
    agent_tokenizer = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    for messages in CONVERSATIONS.values():
        _both(tokenizer, agent_tokenizer, template, messages, generation)


def test_the_engine_prompts_a_smollm2_variant_token_for_token_as_transformers(smollm2_dir: Path,
                                                                            smollm2_int4: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    engine = Engine.load(smollm2_int4, threads=1)
    try:
        for messages in CONVERSATIONS.values():
            prompt = engine.chat_prompt(messages)
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert prompt == expected
            assert engine.encode(prompt) == list(tokenizer.apply_chat_template(messages,
                                                                               add_generation_prompt=True))
    finally:
        engine.close()


def _with_template(variant: Path, out: Path, *, jinja: str | None = None,
                   config_template: Any = None) -> Path:
    """A copy of ``variant`` (its big files linked) with another chat template."""
    out.mkdir()
    for f in variant.iterdir():
        if f.name not in ("chat_template.jinja", "tokenizer_config.json"):
            (out / f.name).symlink_to(f)
    config = json.loads((variant / "tokenizer_config.json").read_text())
    if config_template is not None:
        config["chat_template"] = config_template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja is not None:
        (out / "chat_template.jinja").write_text(jinja)
    return out


def test_the_template_comes_from_chat_template_jinja_or_tokenizer_config(smollm2_int4: Path,
                                                                         tmp_path: Path) -> None:
    assert (smollm2_int4 / "chat_template.jinja").is_file()  # what the builder writes
    assert check_variant(smollm2_int4).chat_template_file == "chat_template.jinja"
    named = _with_template(smollm2_int4, tmp_path / "named", config_template=[
        {"name": "tool_use", "template": "{{ raise_exception('no') }}"},
        {"name": "default", "template": TEMPLATES["gemma-3-it"][0]}])
    info = check_variant(named)
    assert info.chat_template == TEMPLATES["gemma-3-it"][0]
    assert info.chat_template_file == "tokenizer_config.json"


@pytest.mark.parametrize("source", ["{{ messages.__class__.__mro__ }}",
                                    "{{ ''['__class__'] }}",
                                    "{% for m in messages %}{{ m | attr('__init__') }}{% endfor %}"])
def test_a_template_reaching_python_internals_fails_the_load_naming_the_file(
        smollm2_int4: Path, tmp_path: Path, source: str) -> None:
    bad = _with_template(smollm2_int4, tmp_path / "bad", jinja=source)
    with pytest.raises(VariantError, match=r"chat_template\.jinja: .*sandbox forbids"):
        Engine.load(bad, threads=1)


def test_the_sandbox_still_refuses_what_slips_past_the_load_check() -> None:
    template = ChatTemplate("{% set name = '__cla' + 'ss__' %}{{ ((messages | first) | attr(name))() }}")
    with pytest.raises(TemplateError, match="refused these messages: .*unsafe"):
        template.render([{"role": "user", "content": "x"}])


def _chat(server: ServerThread, messages: list[dict[str, str]]) -> tuple[int, dict[str, Any]]:
    status, _, raw = http(server, "/v1/chat/completions", {"model": "smollm2", "messages": messages,
                                                          "max_tokens": 4, "temperature": 0})
    return status, json.loads(raw)


def test_the_openai_endpoint_renders_system_messages_and_refuses_what_a_template_cannot_render(
        smollm2_int4: Path, tmp_path: Path) -> None:
    user = {"role": "user", "content": "What is the capital of France?"}
    gemma_2 = TEMPLATES["gemma-2-it"][0]
    variants = {"smollm2": smollm2_int4,
                "gemma-2": _with_template(smollm2_int4, tmp_path / "gemma2", jinja=gemma_2),
                "slmops": _with_template(smollm2_int4, tmp_path / "slmops", jinja=(
                    "{% for message in messages %}{% if message['role'] == 'user' %}<|user|>\n"
                    "{{ message['content'] }}\n{% elif message['role'] == 'assistant' %}<|assistant|>\n"
                    "{{ message['content'] }}<|end|>{% endif %}{% endfor %}"
                    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"))}
    slot = ModelSlot(threads=1)
    server = None
    try:
        slot.load(variants["smollm2"], name="smollm2")
        server = ServerThread(slot)
        status, plain = _chat(server, [user])
        assert status == 200, plain
        # longer than the default system prompt SmolLM2's template puts in when there is none
        system = {"role": "system", "content": "You answer questions about geography for a school. " * 4}
        status, with_system = _chat(server, [system, user])
        assert status == 200, with_system
        assert with_system["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]

        slot.load(variants["gemma-2"], name="smollm2")  # Gemma 2's template raises for a system role
        status, body = _chat(server, [SYSTEM, user])
        assert status == 400 and "System role not supported" in body["error"]["message"], body
        assert _chat(server, [user])[0] == 200

        slot.load(variants["slmops"], name="smollm2")  # a template with no branch for system or tool
        for role in ("system", "tool"):
            status, body = _chat(server, [{"role": role, "content": "Be brief."}, user])
            assert status == 400, body
            assert body["error"]["param"] == "messages[0].role" and repr(role) in body["error"]["message"]
        assert _chat(server, [user])[0] == 200
    finally:
        if server is not None:
            server.stop()
        slot.unload()
