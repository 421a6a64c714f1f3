"""Model presets and the vocabulary of `spec.model.overrides`.

Pure data shared by the validator (which keys exist, of what type), the importer (which
OpenSeek/FlagScale keys map to which setting) and the trainer (the values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

Setting = int | float | str | bool

# Every model setting a manifest may override, with its type. The names are Megatron's
# argument names in camelCase, so an OpenSeek `train/*.yaml` maps onto them mechanically.
MODEL_SETTINGS: Final[dict[str, type]] = {
    "numLayers": int,
    "hiddenSize": int,
    "numAttentionHeads": int,
    "numQueryGroups": int,
    "groupQueryAttention": bool,
    "ffnHiddenSize": int,
    "maxPositionEmbeddings": int,
    "normEpsilon": float,
    "normalization": str,
    "rotaryBase": int,
    "swiglu": bool,
    "initMethodStd": float,
    "attentionDropout": float,
    "hiddenDropout": float,
    "untieEmbeddingsAndOutputWeights": bool,
    "qkLayernorm": bool,
    "multiLatentAttention": bool,
    "kvLoraRank": int,
    "qkHeadDim": int,
    "qkPosEmbHeadDim": int,
    "vHeadDim": int,
    "numExperts": int,
    "moeFfnHiddenSize": int,
    "moeSharedExpertIntermediateSize": int,
    "moeRouterTopk": int,
    "moeLayerFreq": str,
    "moeAuxLossCoeff": float,
    "moeRouterScoreFunction": str,
    "moeRouterLoadBalancingType": str,
    "moeRouterEnableExpertBias": bool,
    "moeRouterBiasUpdateRate": float,
    "moeRouterTopkScalingFactor": float,
    "moeRouterNumGroups": int,
    "moeRouterGroupTopk": int,
    "moeGroupedGemm": bool,
    "moeTokenDispatcherType": str,
    "tensorModelParallelSize": int,
    "pipelineModelParallelSize": int,
    "expertModelParallelSize": int,
    "contextParallelSize": int,
    "sequenceParallel": bool,
    "bf16": bool,
    "clipGrad": float,
    "weightDecay": float,
    "adamBeta1": float,
    "adamBeta2": float,
}

_DENSE_DEFAULTS: Final[dict[str, Setting]] = {
    "normEpsilon": 1e-5,
    "normalization": "RMSNorm",
    "rotaryBase": 10000,
    "swiglu": True,
    "initMethodStd": 0.02,
    "attentionDropout": 0.0,
    "hiddenDropout": 0.0,
    "untieEmbeddingsAndOutputWeights": False,
    "qkLayernorm": False,
    "multiLatentAttention": False,
    "numExperts": 0,
    "tensorModelParallelSize": 1,
    "pipelineModelParallelSize": 1,
    "expertModelParallelSize": 1,
    "contextParallelSize": 1,
    "sequenceParallel": False,
    "bf16": False,
    "clipGrad": 1.0,
    "weightDecay": 0.1,
    "adamBeta1": 0.9,
    "adamBeta2": 0.95,
}

PRESETS: Final[dict[str, dict[str, Setting]]] = {
    # Trains on two CPU cores in minutes; the quickstart's model.
    "tiny": {
        **_DENSE_DEFAULTS,
        "numLayers": 2,
        "hiddenSize": 128,
        "numAttentionHeads": 4,
        "numQueryGroups": 4,
        "ffnHiddenSize": 384,
    },
    # A ~100M dense model for single-GPU proxy runs (mixture sweeps).
    "small": {
        **_DENSE_DEFAULTS,
        "numLayers": 12,
        "hiddenSize": 768,
        "numAttentionHeads": 12,
        "numQueryGroups": 12,
        "ffnHiddenSize": 2048,
        "bf16": True,
    },
    # OpenSeek-Small v1 (DeepSeek-V3 style MoE, 1.4B total / 0.4B active): the seed's baseline
    # `train_deepseek_v3_1_4b.yaml`, the GPU reference configuration.
    "openseek-small": {
        **_DENSE_DEFAULTS,
        "numLayers": 6,
        "hiddenSize": 1280,
        "numAttentionHeads": 10,
        "numQueryGroups": 10,
        "groupQueryAttention": False,
        "ffnHiddenSize": 7168,
        "maxPositionEmbeddings": 4096,
        "normEpsilon": 1e-6,
        "rotaryBase": 1000000,
        "initMethodStd": 6e-3,
        "qkLayernorm": True,
        "multiLatentAttention": True,
        "kvLoraRank": 512,
        "qkHeadDim": 128,
        "qkPosEmbHeadDim": 64,
        "vHeadDim": 128,
        "numExperts": 64,
        "moeFfnHiddenSize": 896,
        "moeSharedExpertIntermediateSize": 1792,
        "moeRouterTopk": 6,
        "moeLayerFreq": "[0]+[1]*5",
        "moeAuxLossCoeff": 0.0001,
        "moeRouterScoreFunction": "sigmoid",
        "moeRouterLoadBalancingType": "seq_aux_loss",
        "moeRouterEnableExpertBias": True,
        "moeRouterBiasUpdateRate": 0.001,
        "moeRouterTopkScalingFactor": 2.446,
        "moeRouterNumGroups": 1,
        "moeRouterGroupTopk": 1,
        "moeGroupedGemm": True,
        "moeTokenDispatcherType": "alltoall",
        "sequenceParallel": True,
        "bf16": True,
    },
}


def check_override(key: str, value: object) -> str | None:
    """Return why `overrides[key] = value` is not acceptable, or None."""
    expected = MODEL_SETTINGS.get(key)
    if expected is None:
        return f"unknown model setting {key!r}; known settings: {', '.join(sorted(MODEL_SETTINGS))}"
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"model setting {key!r} must be a {expected.__name__}, got {_short(value)}"
    if isinstance(value, str) and len(value) > MAX_SETTING_STRING_LENGTH:
        return f"model setting {key!r} is {len(value)} characters long; at most {MAX_SETTING_STRING_LENGTH}"
    return None


# The schema cannot bound an override's value (it is open), so the check above does.
MAX_SETTING_STRING_LENGTH: Final = 256


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The trainer is data-parallel only: torch DDP over the whole model (trainer/datamix_trainer).
MODEL_PARALLEL_SETTINGS: Final = (
    "tensorModelParallelSize",
    "pipelineModelParallelSize",
    "contextParallelSize",
    "expertModelParallelSize",
)


def trainer_refusal(settings: Mapping[str, Setting], on_gpus: bool) -> tuple[str, str] | None:
    """The first model setting the trainer cannot honour, as (setting, why and the fix); None if
    it can train them all. The one home of these rules: `datamix validate`, the operator
    (Stalled/InvalidSpec) and the trainer itself ask here. `on_gpus`: megatron-core's GPTModel
    (resources.gpusPerNode > 0); else the trainer's CPU model."""
    for key in MODEL_PARALLEL_SETTINGS:
        if int(settings.get(key, 1)) != 1:
            return key, (
                f"{settings[key]} is not supported: the trainer is data-parallel only (every GPU holds the "
                "whole model); set it to 1"
            )
    heads = int(settings.get("numAttentionHeads", 1))
    groups = int(settings.get("numQueryGroups", heads))
    hidden = int(settings.get("hiddenSize", heads))
    if heads < 1 or hidden % heads:
        return "numAttentionHeads", f"hiddenSize ({hidden}) must be a multiple of numAttentionHeads ({heads})"
    if groups < 1 or heads % groups:
        return "numQueryGroups", f"numAttentionHeads ({heads}) must be a multiple of numQueryGroups ({groups})"
    if not on_gpus:
        gpu_only = [
            key
            for key, dense in (("multiLatentAttention", False), ("numExperts", 0), ("swiglu", True))
            if key in settings and settings[key] != dense
        ]
        if settings.get("normalization", "RMSNorm") != "RMSNorm":
            gpu_only.append("normalization")
        if gpu_only:
            return gpu_only[0], (
                f"the CPU model trains dense RMSNorm/SwiGLU GPTs only; {', '.join(gpu_only)} need the GPU model: "
                "set resources.gpusPerNode, or choose a dense preset"
            )
    return None
