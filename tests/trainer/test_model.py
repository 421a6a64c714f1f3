"""Models: the PyTorch GPT's properties, and the megatron-core configuration of every preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from datamix_trainer.model import GPT, GPTConfig, build_torch_gpt

from datamix.errors import UserError
from datamix.presets import PRESETS
from datamix.runspec import ModelSpec
from tests.trainer.runs import quickstart_spec


def spec_with(preset: str, **overrides: object):
    spec = quickstart_spec(Path("/data"), Path("/output"))
    return dataclasses.replace(spec, model=ModelSpec(preset, {**PRESETS[preset], **overrides}))


def test_gpt_is_causal_and_returns_per_token_losses() -> None:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=257,
        seq_length=32,
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
    )
    model = GPT(config).eval()
    tokens = torch.randint(0, 257, (2, 32))
    positions = torch.arange(32).expand(2, 32)
    loss = model(tokens, positions, tokens)
    assert loss.shape == (2, 32)
    changed = tokens.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 257  # only the future changes
    loss2 = model(changed, positions, tokens)
    assert torch.equal(loss[:, :20], loss2[:, :20])
    assert not torch.equal(loss[:, 20:], loss2[:, 20:])
    assert model.embed.weight.grad is None
    assert model.head is None  # tied output embedding


def test_tiny_preset_builds_the_cpu_model_with_tied_embeddings() -> None:
    built = build_torch_gpt(spec_with("tiny"), torch.device("cpu"))
    params = dict(built.module.named_parameters())
    assert "head.weight" not in params, "the output embedding is tied"
    assert params["embed.weight"].shape == (257, 128)
    assert 0.3e6 < built.parameters < 1e6
    assert built.flops_per_token > 6 * built.parameters  # + logits and attention


def test_cpu_model_refuses_moe_presets_with_the_reason() -> None:
    with pytest.raises(UserError, match=r"numExperts.*need the GPU"):
        build_torch_gpt(spec_with("openseek-small"), torch.device("cpu"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # megatron's advice for GPU runs
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_maps_to_a_valid_megatron_transformer_config(preset: str) -> None:
    """What can be checked of the GPU path without a GPU: megatron-core accepts the configuration."""
    from datamix_trainer.megatron_model import transformer_config

    config = transformer_config(spec_with(preset), use_te=False)
    settings = PRESETS[preset]
    assert config.num_layers == settings["numLayers"]
    assert config.hidden_size == settings["hiddenSize"]
    if settings.get("numExperts"):
        assert config.num_moe_experts == settings["numExperts"]
        assert config.moe_layer_freq == [0, 1, 1, 1, 1, 1]  # "[0]+[1]*5": the first layer is dense
        assert type(config).__name__ == "MLATransformerConfig"


def test_tensor_parallelism_is_refused_on_the_gpu_path() -> None:
    from datamix_trainer.megatron_model import transformer_config

    with pytest.raises(UserError, match=r"tensorModelParallelSize.*data-parallel only"):
        transformer_config(spec_with("small", tensorModelParallelSize=2), use_te=False)


@pytest.mark.filterwarnings("ignore::UserWarning")  # megatron's advice for GPU runs
@pytest.mark.parametrize(
    ("use_te", "grouped_gemm", "module"),
    [(False, False, "SequentialMLP"), (False, True, "GroupedMLP"), (True, False, "TEGroupedMLP")],
)
def test_openseek_small_names_the_moe_experts_module_it_gets(use_te: bool, grouped_gemm: bool, module: str) -> None:
    """The preset asks for grouped GEMM; without Transformer Engine or grouped_gemm the trainer
    falls back to SequentialMLP and says so (the description is the start-up log line)."""
    from datamix_trainer.megatron_model import moe_experts, transformer_config

    spec = spec_with("openseek-small")
    assert spec.model.settings["moeGroupedGemm"]
    grouped, description = moe_experts(spec.model.settings, use_te, grouped_gemm)
    assert description.startswith(module)
    assert grouped == (module != "SequentialMLP")
    if module == "SequentialMLP":
        assert "neither Transformer Engine nor the grouped_gemm package is installed" in description
    if not use_te:  # megatron's MoE layer spec without TE, as its decoder block spec builds it from the config
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        config = transformer_config(spec, use_te=False, grouped_gemm=grouped_gemm)
        assert config.moe_grouped_gemm == grouped
        layer = get_gpt_layer_local_spec(
            num_experts=config.num_moe_experts,
            moe_grouped_gemm=config.moe_grouped_gemm,
            qk_layernorm=config.qk_layernorm,
            multi_latent_attention=True,
        )
        assert layer.submodules.mlp.submodules.experts.module.__name__ == module
