"""megatron-core's GPTModel behind the trainer's model interface (GPUs only; UNTESTED on a GPU).

No GPU was available while this was written: the configuration mapping (`transformer_config`) is
checked by a CPU test, but building and training the model has not run. It needs CUDA because
megatron-core's attention allocates on `torch.cuda.current_device()`.

Choices, and why:
- Tensor, pipeline, context and expert parallel sizes are 1: the trainer is data-parallel only
  (torch DDP over the whole model), which fits the presets up to `openseek-small` (1.4B total
  parameters) on 40 GB+ GPUs. Larger parallel sizes are refused with a clear message.
- Parameters stay fp32 and the forward runs under bf16 autocast (when the preset sets `bf16`),
  instead of megatron's Float16Module plus distributed optimizer: one optimizer path for both
  models, with fp32 master weights as megatron has.
- Transformer Engine layers where TE is installed (faster, fused), megatron's local layers else;
  MoE experts as `moe_experts` says (the start-up log line names the one used).
- Vocabulary padded to a multiple of 128, as Megatron-LM's `--make-vocab-size-divisible-by` does.
- MoE with expert bias (DeepSeek-V3's aux-loss-free balancing): the bias is updated after each
  optimizer step from the tokens routed in that step, as megatron's `finalize_model_grads` does.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datamix.errors import UserError
from datamix.presets import trainer_refusal
from datamix.runspec import RunSpec
from datamix_trainer.model import BuiltModel, register_builder

VOCAB_MULTIPLE = 128


def parse_layer_pattern(value: Any, num_layers: int) -> int | list[int]:
    """Megatron's `--moe-layer-freq`: an int, or a pattern like "[0]+[1]*5" (parsed, not eval'd)."""
    if isinstance(value, int):
        return value
    pattern: list[int] = []
    for term in str(value).replace(" ", "").split("+"):
        match = re.fullmatch(r"\[([0-9,]*)\](?:\*(\d+))?", term)
        if not match:
            raise UserError(f'model.overrides.moeLayerFreq: cannot read {value!r}; write e.g. "[0]+[1]*5"')
        items = [int(x) for x in match.group(1).split(",") if x]
        pattern += items * int(match.group(2) or 1)
    if len(pattern) != num_layers:
        raise UserError(f"model.overrides.moeLayerFreq: {value!r} has {len(pattern)} entries for {num_layers} layers")
    return pattern


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def have_grouped_gemm() -> bool:
    try:
        import grouped_gemm  # noqa: F401
    except ImportError:
        return False
    return True


def moe_experts(settings: dict[str, Any], use_te: bool, grouped_gemm: bool) -> tuple[bool, str]:
    """Whether megatron's grouped GEMM can serve `moeGroupedGemm`, and which experts module runs.

    megatron-core has three: TEGroupedMLP (Transformer Engine), GroupedMLP (the `grouped_gemm`
    package, a CUDA extension built from source) and SequentialMLP (one matmul per expert: the
    same results, slower with many small experts). The trainer image has neither TE nor
    grouped_gemm (docs/trainer.md says why), so `openseek-small` runs SequentialMLP there.
    """
    if not int(settings.get("numExperts", 0) or 0):
        return False, ""
    if not settings.get("moeGroupedGemm"):
        return False, "SequentialMLP (moeGroupedGemm is off)"
    if use_te:
        return True, "TEGroupedMLP (Transformer Engine grouped GEMM)"
    if grouped_gemm:
        return True, "GroupedMLP (the grouped_gemm package)"
    return False, (
        "SequentialMLP, one matmul per expert: moeGroupedGemm asks for a grouped GEMM, but neither Transformer "
        "Engine nor the grouped_gemm package is installed (same results, slower)"
    )


def transformer_config(spec: RunSpec, use_te: bool, grouped_gemm: bool = False) -> Any:
    """The preset's settings as megatron-core's (MLA)TransformerConfig."""
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    s = spec.model.settings
    refusal = trainer_refusal(s, on_gpus=True)
    if refusal is not None:
        raise UserError(f"model.overrides.{refusal[0]}: {refusal[1]}")
    layers = int(s["numLayers"])
    heads = int(s["numAttentionHeads"])
    experts = int(s.get("numExperts", 0)) or None
    swiglu = bool(s.get("swiglu", True))
    common: dict[str, Any] = {
        "num_layers": layers,
        "hidden_size": int(s["hiddenSize"]),
        "num_attention_heads": heads,
        "num_query_groups": int(s.get("numQueryGroups", heads)),
        "ffn_hidden_size": int(s["ffnHiddenSize"]),
        "normalization": str(s.get("normalization", "RMSNorm")),
        "layernorm_epsilon": float(s.get("normEpsilon", 1e-5)),
        "gated_linear_unit": swiglu,
        "activation_func": F.silu if swiglu else F.gelu,
        "add_bias_linear": False,
        "init_method_std": float(s.get("initMethodStd", 0.02)),
        "attention_dropout": float(s.get("attentionDropout", 0.0)),
        "hidden_dropout": float(s.get("hiddenDropout", 0.0)),
        "qk_layernorm": bool(s.get("qkLayernorm", False)),
        "params_dtype": torch.float32,  # fp32 master weights; compute in bf16 via autocast
        "bf16": False,
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "sequence_parallel": False,  # only meaningful with tensor parallelism
    }
    if experts:
        common.update(
            {
                "num_moe_experts": experts,
                "moe_ffn_hidden_size": int(s.get("moeFfnHiddenSize", s["ffnHiddenSize"])),
                "moe_shared_expert_intermediate_size": int(s["moeSharedExpertIntermediateSize"])
                if s.get("moeSharedExpertIntermediateSize")
                else None,
                "moe_router_topk": int(s.get("moeRouterTopk", 2)),
                "moe_layer_freq": parse_layer_pattern(s.get("moeLayerFreq", 1), layers),
                "moe_aux_loss_coeff": float(s.get("moeAuxLossCoeff", 0.0)),
                "moe_router_score_function": str(s.get("moeRouterScoreFunction", "softmax")),
                "moe_router_load_balancing_type": str(s.get("moeRouterLoadBalancingType", "aux_loss")),
                "moe_router_enable_expert_bias": bool(s.get("moeRouterEnableExpertBias", False)),
                "moe_router_bias_update_rate": float(s.get("moeRouterBiasUpdateRate", 1e-3)),
                "moe_router_topk_scaling_factor": float(s["moeRouterTopkScalingFactor"])
                if s.get("moeRouterTopkScalingFactor")
                else None,
                "moe_router_num_groups": int(s["moeRouterNumGroups"]) if s.get("moeRouterNumGroups") else None,
                "moe_router_group_topk": int(s["moeRouterGroupTopk"]) if s.get("moeRouterGroupTopk") else None,
                # Grouped GEMM needs TE or the grouped_gemm package; all-to-all needs expert parallelism.
                "moe_grouped_gemm": moe_experts(s, use_te, grouped_gemm)[0],
                "moe_token_dispatcher_type": "allgather",
            }
        )
    if s.get("multiLatentAttention"):
        return MLATransformerConfig(
            **common,
            q_lora_rank=None,  # DeepSeek-V2-Lite style: no query compression at this size
            kv_lora_rank=int(s.get("kvLoraRank", 512)),
            qk_head_dim=int(s.get("qkHeadDim", 128)),
            qk_pos_emb_head_dim=int(s.get("qkPosEmbHeadDim", 64)),
            v_head_dim=int(s.get("vHeadDim", 128)),
            rope_type="rope",
            rotary_base=float(s.get("rotaryBase", 10000)),
        )
    return TransformerConfig(**common)


def flops_per_token(config: Any, vocab: int, seq_length: int) -> float:
    """Training FLOPs per token: 6 x active matmul parameters + attention (an estimate for MoE/MLA)."""
    h = config.hidden_size
    attention = 4 * h * h
    dense_mlp = (3 if config.gated_linear_unit else 2) * h * config.ffn_hidden_size
    mlp = dense_mlp
    if config.num_moe_experts:
        expert = (3 if config.gated_linear_unit else 2) * h * config.moe_ffn_hidden_size
        shared = (3 if config.gated_linear_unit else 2) * h * (config.moe_shared_expert_intermediate_size or 0)
        mlp = config.moe_router_topk * expert + shared
    return 6.0 * (config.num_layers * (attention + mlp) + vocab * h) + 12.0 * config.num_layers * h * seq_length


class MegatronGPT(nn.Module):
    """Adapts GPTModel to the interface: (tokens, position_ids, labels) -> per-token loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # attention_mask=None: the causal mask is implied by the layer spec's AttnMaskType.causal.
        return self.model(tokens, position_ids, None, labels=labels)


@register_builder("megatron")
def build_megatron_gpt(spec: RunSpec, device: torch.device) -> BuiltModel:
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    if device.type != "cuda":
        raise UserError("DATAMIX_MODEL: megatron-core's GPTModel needs CUDA")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    tensor_parallel.model_parallel_cuda_manual_seed(spec.training.seed)
    use_te = have_transformer_engine()
    grouped_gemm = have_grouped_gemm()
    config = transformer_config(spec, use_te, grouped_gemm)
    experts = moe_experts(spec.model.settings, use_te, grouped_gemm)[1]
    s = spec.model.settings
    vocab = padded_vocab(spec.training.vocab_size)
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_decoder_block_spec(config, use_transformer_engine=use_te),
        vocab_size=vocab,
        max_sequence_length=int(s.get("maxPositionEmbeddings", spec.training.seq_length)),
        share_embeddings_and_output_weights=not bool(s.get("untieEmbeddingsAndOutputWeights", False)),
        position_embedding_type="rope",
        rotary_base=int(s.get("rotaryBase", 10000)),
    ).to(device)
    n = sum(p.numel() for p in model.parameters())

    after_step = None
    if getattr(config, "moe_router_enable_expert_bias", False):
        from megatron.core.distributed.finalize_model_grads import (
            _update_router_expert_bias,
            reset_model_temporary_tensors,
        )

        def after_step(module: nn.Module) -> None:
            _update_router_expert_bias([module], config)
            reset_model_temporary_tensors(config, [module])

    return BuiltModel(
        module=MegatronGPT(model),
        flops_per_token=flops_per_token(config, vocab, spec.training.seq_length),
        parameters=n,
        description=(
            f"megatron-core GPTModel ({'Transformer Engine' if use_te else 'local'} layers): preset "
            f"{spec.model.preset}, {config.num_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_moe_experts or 0} experts, {n / 1e6:.1f}M parameters"
            + (f"; MoE experts: {experts}" if experts else "")
        ),
        after_step=after_step,
        autocast_dtype=torch.bfloat16 if s.get("bf16") else None,
    )
