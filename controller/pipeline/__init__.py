"""The model pipeline: build, distill, fine-tune, evaluate. Heavy imports (torch,
transformers, peft) happen inside the modules that need them, never at package import."""
