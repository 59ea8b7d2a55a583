"""Reading a Llama checkpoint into the tensors the model runs.

Most checkpoints are safetensors with the original RoPE (Llama-2) or Llama-3.1's
`llama3` scaling (our tiny presets mimic both): those are read directly, in well under
a second. Importing transformers alone takes ~3 s on two cores, paid on every executor
start (the test suite starts ~40 stacks), so it is kept for what it is needed for: any
other RoPE variant (linear, dynamic, YaRN: transformers knows their arithmetic) and
checkpoints that are not safetensors. Both paths give the same tensors (tests/test_checkpoint.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_ROPE_THETA = 10000.0  # LlamaConfig's default


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # (q + 2 kv, hidden)
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # (2 inter, hidden)
    down: torch.Tensor


@dataclass
class Checkpoint:
    embed: torch.Tensor
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    layers: list[LayerWeights]
    inv_freq: torch.Tensor  # float32, RoPE's inverse frequencies
    attention_scaling: float
    loader: str  # "safetensors" or "transformers": which path read it


Tensors = tuple[Callable[[str], torch.Tensor], torch.Tensor, float]  # by name, RoPE


def load_checkpoint(
    model_dir: str | Path, dtype: torch.dtype, device: torch.device, num_layers: int
) -> Checkpoint:
    """QKV and gate/up fused into single matmuls; everything on `device` in `dtype`."""
    model_dir = Path(model_dir)
    direct = read_direct(model_dir)
    loader = "safetensors" if direct is not None else "transformers"
    get, inv_freq, scaling = direct or read_with_transformers(model_dir, dtype)

    def weight(name: str) -> torch.Tensor:
        return get(name).detach().to(device=device, dtype=dtype)

    return Checkpoint(
        embed=weight("model.embed_tokens.weight"),
        final_norm=weight("model.norm.weight"),
        lm_head=weight("lm_head.weight"),
        layers=[layer_weights(weight, f"model.layers.{i}.") for i in range(num_layers)],
        inv_freq=inv_freq.to(device),
        attention_scaling=scaling,
        loader=loader,
    )


def read_direct(model_dir: Path) -> Tensors | None:
    """The checkpoint's tensors straight from its safetensors, with its RoPE's
    frequencies; None when it is not that kind of checkpoint."""
    cfg = json.loads((model_dir / "config.json").read_text())
    inv_freq = rope_inv_freq(cfg)
    files = safetensors_files(model_dir)
    if inv_freq is None or not files:
        return None
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    tensors.setdefault("lm_head.weight", tensors["model.embed_tokens.weight"])  # tied
    return tensors.__getitem__, inv_freq, 1.0


def read_with_transformers(model_dir: Path, dtype: torch.dtype) -> Tensors:
    """Any checkpoint transformers loads as a Llama, with its RoPE variant's
    frequencies and scaling."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    rot = hf.model.rotary_emb
    state = hf.state_dict()
    state.setdefault("lm_head.weight", hf.lm_head.weight)  # tied: one tensor, one key
    return state.__getitem__, rot.inv_freq.detach().float(), float(rot.attention_scaling)


def layer_weights(weight: Callable[[str], torch.Tensor], p: str) -> LayerWeights:
    att, mlp = p + "self_attn.", p + "mlp."
    return LayerWeights(
        input_norm=weight(p + "input_layernorm.weight"),
        qkv=torch.cat([weight(att + f"{x}_proj.weight") for x in "qkv"]),
        o=weight(att + "o_proj.weight"),
        post_norm=weight(p + "post_attention_layernorm.weight"),
        gate_up=torch.cat([weight(mlp + "gate_proj.weight"), weight(mlp + "up_proj.weight")]),
        down=weight(mlp + "down_proj.weight"),
    )


def rope_parameters(cfg: dict) -> dict:
    """The RoPE settings in either config style: transformers 5's `rope_parameters`,
    or the older `rope_theta` beside `rope_scaling`."""
    params = {"rope_theta": cfg.get("rope_theta", DEFAULT_ROPE_THETA)}
    params.update(cfg.get("rope_scaling") or {})
    params.update(cfg.get("rope_parameters") or {})
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def rope_inv_freq(cfg: dict) -> torch.Tensor | None:
    """RoPE's inverse frequencies for the original RoPE and Llama-3.1's `llama3`
    scaling (both leave the attention unscaled), in the arithmetic transformers uses;
    None for any other variant."""
    params = rope_parameters(cfg)
    if params["rope_type"] not in ("default", "llama3"):
        return None
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = float(params["rope_theta"])
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    if params["rope_type"] == "llama3":
        inv_freq = llama3_scaled(inv_freq, params)
    return inv_freq


def llama3_scaled(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    """Llama 3.1's RoPE scaling: wavelengths longer than the original context over
    `low_freq_factor` are stretched by `factor`, those shorter than it over
    `high_freq_factor` kept, and the band between blended linearly in the context's
    count of wavelengths."""
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    context = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    stretched = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * stretched / factor + smooth * stretched
    medium = ~(wavelen < context / high) & ~(wavelen > context / low)
    return torch.where(medium, blended, stretched)


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files, one or sharded; [] when it has none."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []
