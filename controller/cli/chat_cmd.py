"""`slmops chat MODEL`: talk to a registered model (transformers, on the CPU) or to one of its
built variants (the agent's engine), in this process.

The model files are read from a local registry (``--data-dir``, as `slmops run --local`), not
through the controller's gRPC API: chatting runs here, so it needs the files here.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import click

from controller.cli.output import CliError, fail
from controller.settings import default_data_dir


class _HfReply:
    """transformers ``generate`` in a thread, its text streamed by a TextIteratorStreamer."""

    def __init__(self, model: Any, tokenizer: Any, messages: list[dict[str, str]], max_tokens: int,
                 temperature: float) -> None:
        from transformers import TextIteratorStreamer

        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        self.prompt_tokens, self.completion_tokens = int(ids.shape[-1]), 0
        self.finish_reason: str | None = None
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature} if temperature > 0
                                    else {"do_sample": False})
        self._max = max_tokens

        def run() -> None:
            out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=max_tokens,
                                 streamer=self._streamer, pad_token_id=tokenizer.eos_token_id, **sampling)
            self.completion_tokens = int(out.shape[-1]) - self.prompt_tokens

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def __iter__(self) -> Any:
        yield from self._streamer
        self._thread.join()
        self.finish_reason = "length" if self.completion_tokens >= self._max else "stop"


def _hf_respond(model_dir: Path, max_tokens: int, temperature: float, as_json: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        raise CliError(f"{model_dir} has no chat template (tokenizer_config.json / chat_template.jinja)",
                       "no_chat_template")
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    if not as_json and not torch.cuda.is_available():
        click.echo("no GPU: generating on the CPU with transformers", err=True)
    return lambda messages: _HfReply(model, tokenizer, messages, max_tokens, temperature)


@click.command()
@click.argument("model")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="the local controller's data dir holding the registry (default ~/.local/share/slmops)")
@click.option("--system", default="", help="a system prompt")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True, help="per answer")
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), default=0.7, show_default=True,
              help="0 answers greedily")
@click.option("--message", default=None, help="with --json: the user message (default: read from stdin)")
@click.option("--json", "as_json", is_flag=True,
              help="answer one message (--message or stdin) and print the answer and usage as JSON")
def chat(model: str, data_dir: Path | None, system: str, max_tokens: int, temperature: float,
         message: str | None, as_json: bool) -> None:
    """Talk to MODEL in the terminal: a registered model NAME[:VERSION] (transformers, on this
    machine) or a built variant NAME:VERSION@PROFILE (the agent's engine). Ctrl-D or /exit leaves."""
    from agent.chat_cli import interactive, one_shot
    from agent.engine import Engine, ParamError, SamplingParams, VariantError
    from controller.registry import ModelRegistry, NotFound
    from controller.validation import Invalid

    data_dir = data_dir or default_data_dir()
    engine = None
    try:
        if not (data_dir / "fleet.db").is_file():
            raise CliError(f"{data_dir} holds no registry (fleet.db); pass the --data-dir of a local "
                           "controller (slmops controller start / slmops run --local)", "not_found")
        registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
        ref, _, profile = model.partition("@")
        if profile:
            variant = registry.variant(ref, profile)
            engine = Engine.load(registry.models_root / variant.path)
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
            loaded = engine

            def respond(messages: list[dict[str, str]]) -> Any:
                return loaded.stream(loaded.chat_prompt(messages), params)

            name = f"{variant.model_ref}@{variant.profile}"
        else:
            record = registry.get(ref)
            respond = _hf_respond(registry.path(record), max_tokens, temperature, as_json)
            name = record.ref
        if as_json:
            text = message if message is not None else sys.stdin.read()
            if not text.strip():
                raise CliError("no message: pass --message TEXT or write it to stdin", "invalid")
            click.echo(json.dumps(one_shot(respond, name, text.strip(), system)))
            return
        click.echo(f"{name}; Ctrl-D or /exit to leave", err=True)
        interactive(respond, system, lambda: input("> "), sys.stdout)
    except (Invalid, NotFound) as e:
        fail(CliError(str(e), "not_found" if isinstance(e, NotFound) else "invalid"), as_json)
    except VariantError as e:
        fail(CliError(str(e), "bad_variant"), as_json)
    except ParamError as e:
        fail(CliError(f"{e.field}: {e.message}", "invalid"), as_json)
    except CliError as e:
        fail(e, as_json)
    finally:
        if engine is not None:
            engine.close()
