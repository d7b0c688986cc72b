"""A LoRA adapter built as its base's graph plus an adapter file, served by onnxruntime-genai's
adapters: two adapters of one base share the base files byte for byte, each variant answers as
its adapter merged into the base does (checked by the build against PyTorch), and a variant
without its adapter file fails to load naming it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import variants

from agent.engine import Engine, VariantError
from controller.build.adapters import ADAPTER_FILE
from controller.build.profiles import builtin_profiles
from controller.build.variants import build_and_check

PROFILES = ("cpu-fp32", "cpu-x86-avx2-int8")


def _adapter(base: Path, out: Path, seed: int, targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")
             ) -> Path:
    """A LoRA adapter of ``base`` with random, non-zero weights (so it changes the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                      target_modules=list(targets)))
    for name, tensor in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(tensor, std=0.05)
    model.save_pretrained(out)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tiny: variants.TinyVariants, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    root = tmp_path_factory.mktemp("adapters")
    profiles = [builtin_profiles().get(name) for name in PROFILES]
    out = {}
    for seed in (1, 2):
        adapter = _adapter(tiny.model_dir, root / f"adapter-{seed}", seed)
        outcomes = build_and_check(adapter, profiles, tiny.test_rows[:8], root / f"build-{seed}",
                                   base_dir=tiny.model_dir)
        out[seed] = {o.profile: o for o in outcomes}
    return out


def test_each_adapter_variant_answers_as_its_merged_model(built: dict[int, dict]) -> None:
    for outcomes in built.values():
        for profile in PROFILES:
            outcome = outcomes[profile]
            assert outcome.build["adapter"] == ADAPTER_FILE
            assert (outcome.dir / ADAPTER_FILE).is_file()
            meta = json.loads((outcome.dir / "slmops-variant.json").read_text())
            assert meta["adapter"] == ADAPTER_FILE
        assert outcomes["cpu-fp32"].metrics["greedy_agreement"] == 1.0  # against PyTorch, merged
        assert outcomes["cpu-x86-avx2-int8"].metrics["greedy_agreement"] >= 0.75


def test_two_adapters_of_one_base_share_every_file_but_the_adapter(built: dict[int, dict]) -> None:
    for profile in PROFILES:
        first, second = built[1][profile].dir, built[2][profile].dir
        for name in ("model.onnx", "model.onnx.data", "tokenizer.json", "genai_config.json"):
            assert _sha(first / name) == _sha(second / name), f"{profile}: {name} differs"
        assert _sha(first / ADAPTER_FILE) != _sha(second / ADAPTER_FILE)
        adapter_bytes = (first / ADAPTER_FILE).stat().st_size
        total = sum(p.stat().st_size for p in first.iterdir())
        assert adapter_bytes < 0.1 * total


def test_a_variant_without_its_adapter_file_fails_to_load_naming_it(built: dict[int, dict],
                                                                     tmp_path: Path) -> None:
    broken = shutil.copytree(built[1]["cpu-fp32"].dir, tmp_path / "v")
    (broken / ADAPTER_FILE).unlink()
    with pytest.raises(VariantError, match=ADAPTER_FILE):
        Engine.load(broken)


def test_an_adapter_of_lm_head_is_built_from_the_merged_model(tiny: variants.TinyVariants,
                                                              tmp_path: Path) -> None:
    adapter = _adapter(tiny.model_dir, tmp_path / "adapter", 3, ("q_proj", "lm_head"))
    [outcome] = build_and_check(adapter, [builtin_profiles().get("cpu-fp32")], tiny.test_rows[:4],
                                tmp_path / "build", base_dir=tiny.model_dir)
    assert not (outcome.dir / ADAPTER_FILE).exists()
    assert "merged into its base" in outcome.build["adapter"] and "lm_head" in outcome.build["adapter"]
    assert outcome.metrics["greedy_agreement"] == 1.0


def test_an_adapter_trained_on_a_registry_name_finds_the_version_it_was_trained_on(tmp_path: Path) -> None:
    """An adapter a job trained on `registry:smol` keeps that reference in its lineage (no version);
    `slmops build --local` builds it on the version directory its adapter_config.json names, not
    "a base that is not registered"; a base outside the registry is still refused in one line."""
    from controller.build.variants import adapter_base
    from controller.registry import ModelRegistry
    from controller.validation import Invalid

    registry = ModelRegistry(f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path / "models")
    try:
        for version in (1, 2):  # the adapter was trained on smol:1; smol:2 came later
            base_src = tmp_path / f"base-{version}"
            base_src.mkdir()
            (base_src / "config.json").write_text(json.dumps({"model_type": "llama", "v": version}))
            registry.register([{"name": "smol", "kind": "pretrained", "path": str(base_src)}])
        trained_on = registry.path(registry.get("smol:1"))

        def adapter(name: str, base: Path) -> object:
            src = tmp_path / name
            src.mkdir()
            (src / "adapter_config.json").write_text(json.dumps(
                {"base_model_name_or_path": str(base), "peft_type": "LORA"}))
            (record,) = registry.register([{"name": name, "kind": "adapter", "path": str(src),
                                            "lineage": {"base": {"ref": "registry:smol"}}}])
            return record

        assert adapter_base(registry, adapter("smol-lora", trained_on)) == trained_on
        outside = tmp_path / "elsewhere"
        shutil.copytree(trained_on, outside)
        with pytest.raises(Invalid, match="smol-stray:1 is a LoRA adapter whose base is not a registered"):
            adapter_base(registry, adapter("smol-stray", outside))
    finally:
        registry.close()
