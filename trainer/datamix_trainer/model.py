"""The model interface, its builders, and the small pure-PyTorch GPT used on CPU.

Every model the trainer drives is an `nn.Module` called as `model(tokens, position_ids, labels)`
and returning the per-token loss `[batch, seq]` (megatron-core's `GPTModel` convention when labels
are given). The loop masks and averages; it never sees logits. A builder turns the run spec's
`ModelSpec.settings` (the preset with overrides) into a `BuiltModel`; builders are registered by
name so a new model plugs in without touching the loop.

`GPT` below is nanoGPT-sized and readable top to bottom: RMSNorm, rotary position embeddings,
grouped-query attention through `scaled_dot_product_attention`, a SwiGLU MLP, tied input and
output embeddings (unless `untieEmbeddingsAndOutputWeights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from datamix.errors import UserError
from datamix.presets import trainer_refusal
from datamix.runspec import RunSpec


@dataclass
class BuiltModel:
    module: nn.Module
    flops_per_token: float  # training FLOPs (forward + backward) per token, for MFU
    parameters: int
    description: str
    # Called after each optimizer step (megatron's MoE expert-bias update); most models need none.
    after_step: Callable[[nn.Module], None] | None = None
    autocast_dtype: torch.dtype | None = None  # bf16 autocast on GPUs when the preset asks for it


ModelBuilder = Callable[[RunSpec, torch.device], BuiltModel]
MODEL_BUILDERS: dict[str, ModelBuilder] = {}


def register_builder(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def wrap(fn: ModelBuilder) -> ModelBuilder:
        MODEL_BUILDERS[name] = fn
        return fn

    return wrap


def choose_builder(choice: str, device: torch.device) -> str:
    """`auto`: megatron-core's GPTModel where it can run (CUDA), else the PyTorch GPT."""
    if choice == "auto":
        return "megatron" if device.type == "cuda" else "torch"
    if choice == "megatron" and device.type != "cuda":
        raise UserError("DATAMIX_MODEL: megatron-core's GPTModel needs CUDA; use DATAMIX_MODEL=torch on CPU")
    return choice


def build_model(choice: str, spec: RunSpec, device: torch.device) -> BuiltModel:
    name = choose_builder(choice, device)
    if name == "megatron":
        from datamix_trainer import megatron_model  # noqa: F401  (registers the builder; needs CUDA)
    return MODEL_BUILDERS[name](spec, device)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_length: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    norm_eps: float = 1e-5
    rotary_base: float = 10000.0
    init_std: float = 0.02
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_spec(cls, spec: RunSpec) -> GPTConfig:
        s = spec.model.settings
        refusal = trainer_refusal(s, on_gpus=False)
        if refusal is not None:
            raise UserError(f"model.overrides.{refusal[0]}: {refusal[1]} (preset {spec.model.preset!r})")
        heads = int(s["numAttentionHeads"])
        groups = int(s.get("numQueryGroups", heads))
        hidden = int(s["hiddenSize"])
        return cls(
            vocab_size=spec.training.vocab_size,
            seq_length=spec.training.seq_length,
            num_layers=int(s["numLayers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_query_groups=groups,
            ffn_hidden_size=int(s["ffnHiddenSize"]),
            norm_eps=float(s.get("normEpsilon", 1e-5)),
            rotary_base=float(s.get("rotaryBase", 10000)),
            init_std=float(s.get("initMethodStd", 0.02)),
            tie_embeddings=not bool(s.get("untieEmbeddingsAndOutputWeights", False)),
        )

    def flops_per_token(self) -> float:
        """Training FLOPs per token, PaLM/nanoGPT style: 6 x (matmul parameters) + attention."""
        h, g, d = self.hidden_size, self.num_query_groups, self.head_dim
        attention = h * h + 2 * h * g * d + h * h  # q, k and v (grouped), output projection
        mlp = 3 * h * self.ffn_hidden_size
        matmul_params = self.num_layers * (attention + mlp) + self.vocab_size * h  # + logits
        return 6.0 * matmul_params + 12.0 * self.num_layers * h * self.seq_length


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # [length, head_dim / 2]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the two halves of each head (the GPT-NeoX/Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c = c
        kv = c.num_query_groups * c.head_dim
        self.qkv = nn.Linear(c.hidden_size, c.hidden_size + 2 * kv, bias=False)
        self.proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        c = self.c
        kv = c.num_query_groups * c.head_dim
        q, k, v = self.qkv(x).split((c.hidden_size, kv, kv), dim=-1)
        q = q.view(b, s, c.num_heads, c.head_dim).transpose(1, 2)
        k = k.view(b, s, c.num_query_groups, c.head_dim).transpose(1, 2)
        v = v.view(b, s, c.num_query_groups, c.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if c.num_query_groups != c.num_heads:  # grouped-query attention: share each k/v head
            repeat = c.num_heads // c.num_query_groups
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, c.hidden_size))


class SwiGLU(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(c.hidden_size, 2 * c.ffn_hidden_size, bias=False)
        self.down = nn.Linear(c.ffn_hidden_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.attn = Attention(c)
        self.mlp_norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.mlp = SwiGLU(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.head = None if c.tie_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        cos, sin = rotary_tables(c.head_dim, c.seq_length, c.rotary_base)
        # Not saved in checkpoints (derived), not broadcast by DDP (identical everywhere).
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=c.init_std / math.sqrt(2 * c.num_layers))

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.c.init_std)

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Positions of a sample are 0..s-1 (no position resets), so slicing the tables suffices.
        s = tokens.shape[1]
        cos, sin = self.get_buffer("cos")[:s], self.get_buffer("sin")[:s]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, weight)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        return loss.view_as(labels)


@register_builder("torch")
def build_torch_gpt(spec: RunSpec, device: torch.device) -> BuiltModel:
    config = GPTConfig.from_spec(spec)
    module = GPT(config).to(device)
    n = sum(p.numel() for p in module.parameters())
    return BuiltModel(
        module=module,
        flops_per_token=config.flops_per_token(),
        parameters=n,
        description=(
            f"PyTorch GPT: {config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads "
            f"({config.num_query_groups} kv groups), ffn {config.ffn_hidden_size}, {n / 1e6:.2f}M parameters"
        ),
    )
