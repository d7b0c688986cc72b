"""Device variants: a registered model built for each device profile, checked with the
runtime a device runs, and gated before it may be deployed.

- profiles.py: what a profile is, the built-in ones; profile_file.py: custom ones from YAML;
- matching.py: a device's hardware report -> its profile;
- builder.py: a model directory -> a variant directory for a profile (genai_builder.py, the
  onnxruntime-genai model builder; optimum_export.py, the fallback for other architectures;
  quantize.py, onnxruntime's quantizers for what a route can't build directly);
- check.py: a variant measured on a held-out set against the PyTorch fp32 model, in a child
  process (measure.py) running the agent's engine (onnxruntime-genai, or for fallback variants
  its plain onnxruntime loop);
- gates.py: the profile's gates on those measurements -> passed or failed, with the reason;
- variants.py: all of it for a list of profiles (the ``build`` step and ``slmops build``).

Importing this package is light: torch, transformers, optimum and onnx load inside functions.
"""

from controller.build.matching import match, match_profile
from controller.build.profiles import (
    BUILTIN,
    PRECISIONS,
    PROVIDERS,
    BuildOptions,
    DeviceProfile,
    Gates,
    HardwareMatch,
    ProfileError,
    ProfileSet,
    builtin_profiles,
    load_profiles,
    parse_profiles,
)

__all__ = ["BUILTIN", "PRECISIONS", "PROVIDERS", "BuildOptions", "DeviceProfile", "Gates", "HardwareMatch",
           "ProfileError", "ProfileSet", "builtin_profiles", "load_profiles", "match", "match_profile",
           "parse_profiles"]
