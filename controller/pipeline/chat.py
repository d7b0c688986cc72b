"""The prompt format of the models slmops builds: defined beside the agent's runtime
(agent/chat_format.py), which the device's gate shares with the build."""

from agent.chat_format import (  # noqa: F401 - re-exported for the pipeline
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    END,
    PAD,
    SPECIAL_TOKENS,
    USER,
    clean_answer,
    full_text,
    prompt_text,
)
