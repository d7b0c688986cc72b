"""The steps a recipe can use, one class per module (like Olive's passes). Importing this
package registers them all in :data:`STEPS`; it stays light (heavy imports happen in ``run``).

``Step.describe()`` lists a step's parameters with their types, defaults and help:
``python -c "from controller.pipeline.steps import STEPS; print(STEPS['distill'].describe())"``.
"""

from controller.pipeline.steps import (
    build,
    distill,
    evaluate,
    finetune,
    generate_task,
    import_model,
    init_model,
    register,
)
from controller.pipeline.steps.base import STEPS, ResolvedModel, Step, StepContext, StepError, StepRecord

__all__ = ["STEPS", "ResolvedModel", "Step", "StepContext", "StepError", "StepRecord", "build", "distill",
           "evaluate", "finetune", "generate_task", "import_model", "init_model", "register"]
