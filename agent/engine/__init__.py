"""The agent's inference engine: a model variant loaded and run on this device (onnxruntime-genai,
or a plain onnxruntime decode loop for the fallback route's variants), with the model's own chat
template and OpenAI-style sampling parameters.

    engine = Engine.load(Path("variants/support-int4"))
    for piece in engine.stream(engine.chat_prompt([{"role": "user", "content": "hi"}]),
                               SamplingParams(max_tokens=64)):
        print(piece.text, end="")
"""

from __future__ import annotations

from agent.engine.engine import Completion, Engine, EngineClosed, Piece, Stream
from agent.engine.sampling import ParamError, SamplingParams
from agent.engine.slot import Loaded, ModelSlot, NoModel
from agent.engine.variant import VariantError, VariantInfo, check_variant

__all__ = ["Completion", "Engine", "EngineClosed", "Loaded", "ModelSlot", "NoModel", "ParamError", "Piece",
           "SamplingParams", "Stream", "VariantError", "VariantInfo", "check_variant"]
