"""Rollouts: a model version to the devices a label selector picks, in health-gated waves
(plan.py: targets and waves; waves.py: one step of the state machine; gates.py: the health
gates; engine.py: the controller's task that runs them)."""
