"""Teachers answer prompts for distillation: a local Hugging Face model or any OpenAI-compatible
endpoint. Importing this package stays light; each teacher imports what it needs."""

from controller.pipeline.teachers.base import (
    Answer,
    GenerationSettings,
    Teacher,
    TeacherError,
    make_teacher,
)

__all__ = ["Answer", "GenerationSettings", "Teacher", "TeacherError", "make_teacher"]
