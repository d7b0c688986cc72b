"""The bundled customer-support task (seeded splits, exact answers, a format validator)."""

from controller.pipeline.task.support import (
    ALL_INTENTS,
    BASE_INTENTS,
    NEW_INTENTS,
    generate,
    split_of,
    validate_answer,
    write_splits,
)

__all__ = ["ALL_INTENTS", "BASE_INTENTS", "NEW_INTENTS", "generate", "split_of", "validate_answer",
           "write_splits"]
