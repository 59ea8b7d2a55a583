"""Model shapes `apex init-model` can write.

The tiny presets are the defaults for tests and the quick-start: small enough that CI
runs many generations in seconds. The large presets carry the real shapes of the models
our users serve, with random weights, for benchmarks on a GPU (nothing can be
downloaded, so real weights never appear here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    vocab_size: int | None  # None: exactly the trained tokenizer's size
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    # Exactness tests need clear argmax gaps: default init leaves top-2 logits ~1e-5
    # apart, where legitimate fp32 reordering flips tokens. Scaling the 2-D weights and
    # the LM head widens the gaps to 1e-4..1e-2 (DESIGN.md section 5).
    weight_scale: float = 1.0
    lm_head_scale: float = 1.0
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{self.name}: hidden_size must divide by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.name}: heads must divide by key/value heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


_LLAMA3_ROPE_8B = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="tiny",
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=352,
            max_position_embeddings=2048,
            vocab_size=None,
            weight_scale=3.0,
            lm_head_scale=10.0,
        ),
        ModelPreset(
            name="tiny-gqa",
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=352,
            max_position_embeddings=2048,
            vocab_size=None,
            rope_theta=500000.0,
            rope_scaling={**_LLAMA3_ROPE_8B, "original_max_position_embeddings": 256},
            weight_scale=3.0,
            lm_head_scale=10.0,
        ),
        ModelPreset(
            name="llama2-7b",
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            intermediate_size=11008,
            max_position_embeddings=4096,
            vocab_size=32000,
            dtype="float16",
        ),
        ModelPreset(
            name="llama3.1-8b",
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            max_position_embeddings=131072,
            vocab_size=128256,
            rope_theta=500000.0,
            rope_scaling=dict(_LLAMA3_ROPE_8B),
            dtype="bfloat16",
        ),
    )
}

DEFAULT_PRESET = "tiny"
