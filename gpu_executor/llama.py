"""The Llama-family model: its weights, its paged KV cache and the math of one layer.

`checkpoint.py` reads the weights (directly from safetensors, or through transformers
for the RoPE variants it knows) and fuses QKV and gate/up into single matmuls; the
layer math is ours, because the attention must read a block-paged cache that the
scheduler manages. How the layers run for one step (GPU-only, asynchronous overlap,
asymmetric pipelining) is not the model's business: `strategies.py` composes these
pieces per strategy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_executor.batch import NewPrompts, PackedBatch
from gpu_executor.checkpoint import LayerWeights, load_checkpoint


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float

    @classmethod
    def from_config(cls, model_dir: str | Path) -> ModelShape:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        heads = cfg["num_attention_heads"]
        return cls(
            num_layers=cfg["num_hidden_layers"],
            hidden_size=cfg["hidden_size"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg["max_position_embeddings"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        )


class PagedKVCache:
    """Per layer: K and V as (num_blocks, block_size, kv_heads, head_dim)."""

    def __init__(
        self, shape: ModelShape, num_blocks: int, block_size: int, dtype: torch.dtype, device
    ) -> None:
        dims = (num_blocks, block_size, shape.num_kv_heads, shape.head_dim)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.k = [torch.zeros(dims, dtype=dtype, device=device) for _ in range(shape.num_layers)]
        self.v = [torch.zeros(dims, dtype=dtype, device=device) for _ in range(shape.num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): timings must include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same arithmetic as transformers' LlamaRMSNorm: normalise in fp32, scale in dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaModel:
    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str = "auto",
        decode_kernel: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.shape = ModelShape.from_config(model_dir)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(model_dir, dtype, self.device)
        ck = load_checkpoint(model_dir, self.dtype, self.device, self.shape.num_layers)
        self.loader = ck.loader
        self.inv_freq, self.attention_scaling = ck.inv_freq, ck.attention_scaling
        self.embed, self.final_norm, self.lm_head = ck.embed, ck.final_norm, ck.lm_head
        self.layers = ck.layers
        self.weight_bytes = (
            sum(
                t.nbytes
                for lw in self.layers
                for t in (lw.input_norm, lw.qkv, lw.o, lw.post_norm, lw.gate_up, lw.down)
            )
            + self.embed.nbytes
            + self.lm_head.nbytes
            + self.final_norm.nbytes
        )
        self.scale = self.shape.head_dim**-0.5
        self.cache: PagedKVCache | None = None
        self.triton_decode = use_triton_decode(decode_kernel, self.device)
        self.triton_prefill = False  # set with the cache: it depends on the block size

    def init_cache(self, num_blocks: int, block_size: int) -> int:
        self.cache = None  # release the old one first: on a GPU both may not fit
        self.cache = PagedKVCache(self.shape, num_blocks, block_size, self.dtype, self.device)
        # the paged prefill kernel's tl.dot needs 16 or more on each side
        self.triton_prefill = self.triton_decode and min(block_size, self.shape.head_dim) >= 16
        return self.cache.nbytes

    @property
    def kv(self) -> PagedKVCache:
        if self.cache is None:
            raise RuntimeError("KV cache not initialised: InitCache must come before Step")
        return self.cache

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(self.dtype)
        sin = (emb.sin() * self.attention_scaling).to(self.dtype)
        return cos[:, None, :], sin[:, None, :]

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.embed)

    def head(self, last: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head over each sequence's last token: fp32 logits."""
        s = self.shape
        return (rms_norm(last, self.final_norm, s.rms_norm_eps) @ self.lm_head.T).float()

    def qkv(
        self, lw: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pre(X): norm, fused QKV projection, RoPE."""
        s = self.shape
        q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        h = rms_norm(x, lw.input_norm, s.rms_norm_eps)
        qkv = h @ lw.qkv.T
        q = qkv[:, :q_size].view(-1, s.num_heads, s.head_dim)
        k = qkv[:, q_size : q_size + kv_size].view(-1, s.num_kv_heads, s.head_dim)
        v = qkv[:, q_size + kv_size :].view(-1, s.num_kv_heads, s.head_dim)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def post(self, lw: LayerWeights, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """post(X): O projection, residual, norm, MLP, residual."""
        s = self.shape
        x = x + att.reshape(x.shape[0], -1) @ lw.o.T
        h = rms_norm(x, lw.post_norm, s.rms_norm_eps)
        gate, up = (h @ lw.gate_up.T).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ lw.down.T

    def write_kv(self, li: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        kc = self.kv.k[li].view(-1, self.shape.num_kv_heads, self.shape.head_dim)
        vc = self.kv.v[li].view(-1, self.shape.num_kv_heads, self.shape.head_dim)
        kc.index_copy_(0, slots, k)
        vc.index_copy_(0, slots, v)

    def attention(
        self,
        li: int,
        q: torch.Tensor,
        batch: PackedBatch,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of the GPU-tier rows; CPU rows are left for the join to fill. k and
        v: this layer's new K and V in batch order (already written to the cache; only
        needed when the batch has new prompts, which attend over them as they are,
        several per call: no gather, no mask)."""
        out = torch.empty_like(q)
        if batch.num_decode_tokens:
            qd = q.index_select(0, batch.decode_token_index)
            out.index_copy_(
                0,
                batch.decode_token_index,
                self.decode_attention(li, qd, batch.decode_block_tables, batch.decode_context_lens),
            )
        if batch.new_prompts and (k is None or v is None):
            raise RuntimeError("new prompts attend over their new K and V: pass them")
        for group in batch.new_prompts:
            out.index_copy_(0, group.out_index, self.causal_attention(q, k, v, group))
        if batch.continued is not None and self.triton_prefill:
            from gpu_executor.triton_attention import paged_prefill_attention

            c = batch.continued
            kc, vc = self.kv.k[li], self.kv.v[li]
            paged_prefill_attention(
                q, out, kc, vc, c.block_tables, c.token_starts, c.lens, c.start_positions,
                c.max_len, self.scale,
            )  # fmt: skip
        elif batch.continued is not None:
            tables = batch.continued.block_tables
            for p, table in zip(batch.prefills, tables, strict=True):
                span = slice(p.token_start, p.token_end)
                out[span] = self.prefill_attention(li, q[span], p.start_pos, table)
        return out

    def causal_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: NewPrompts
    ) -> torch.Tensor:
        """New prompts over their own K and V, padded to one length: SDPA's causal path
        (flash or memory-efficient kernels on CUDA), nothing materialised but the output.
        Returns the real tokens' rows, in `group.out_index` order."""
        idx = group.token_index  # (P, L)
        o = F.scaled_dot_product_attention(
            q[idx].transpose(1, 2),  # (P, H, L, d)
            k[idx].transpose(1, 2),
            v[idx].transpose(1, 2),
            is_causal=True,
            scale=self.scale,
            enable_gqa=self.shape.num_heads != self.shape.num_kv_heads,
        )
        rows = o.transpose(1, 2).reshape(-1, self.shape.num_heads, self.shape.head_dim)
        return rows.index_select(0, group.valid)

    def gather(self, li: int, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., blocks) block ids -> K, V as (..., blocks * block_size, kv_heads, head_dim)."""
        lead = tables.shape[:-1]
        k = self.kv.k[li][tables].reshape(*lead, -1, self.shape.num_kv_heads, self.shape.head_dim)
        v = self.kv.v[li][tables].reshape(*lead, -1, self.shape.num_kv_heads, self.shape.head_dim)
        return k, v

    def decode_attention(
        self, li: int, q: torch.Tensor, tables: torch.Tensor, context_lens: torch.Tensor
    ) -> torch.Tensor:
        if self.triton_decode:  # the blocks read where they lie (gpu_executor/triton_attention)
            from gpu_executor.triton_attention import paged_decode_attention

            return paged_decode_attention(
                q, self.kv.k[li], self.kv.v[li], tables, context_lens, self.scale
            )
        k, v = self.gather(li, tables)  # (D, L, kvh, d)
        length = k.shape[1]
        mask = torch.arange(length, device=q.device)[None, :] < context_lens[:, None]
        o = F.scaled_dot_product_attention(
            q[:, :, None, :],  # (D, H, 1, d)
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask[:, None, None, :],
            scale=self.scale,
            enable_gqa=self.shape.num_heads != self.shape.num_kv_heads,
        )
        return o[:, :, 0, :]

    def prefill_attention(
        self, li: int, q: torch.Tensor, start_pos: int, table: torch.Tensor
    ) -> torch.Tensor:
        """A prompt chunk after a cached prefix (chunked prefill, shared prompt blocks):
        over the cache, gathered, with a mask."""
        n = q.shape[0]
        total = start_pos + n
        k, v = self.gather(li, table)
        k, v = k[:total], v[:total]  # (total, kvh, d)
        rows = torch.arange(start_pos, total, device=q.device)[:, None]
        mask = torch.arange(total, device=q.device)[None, :] <= rows
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],  # (1, H, n, d)
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=mask[None, None],
            scale=self.scale,
            enable_gqa=self.shape.num_heads != self.shape.num_kv_heads,
        )
        return o[0].transpose(0, 1)


DECODE_KERNELS = ("auto", "triton", "gather")


def use_triton_decode(kernel: str, device: torch.device) -> bool:
    """auto: the Triton kernel on CUDA when triton imports, else the gathered SDPA path
    (the CPU's, where Triton only interprets); triton: it, or an error saying why not."""
    if kernel not in DECODE_KERNELS:
        raise ValueError(f"decode kernel must be one of {DECODE_KERNELS}, not {kernel!r}")
    if kernel == "gather":
        return False
    from gpu_executor.triton_attention import available

    if kernel == "triton":
        if not available():
            raise ValueError("--decode-kernel triton: triton is not installed")
        return True
    return device.type == "cuda" and available()


def resolve_dtype(model_dir: str | Path, dtype: str, device: torch.device) -> torch.dtype:
    """ "auto": the checkpoint's dtype on CUDA; fp32 on the CPU, where fp16 matmuls crawl."""
    if dtype != "auto":
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, not {dtype!r}")
        return getattr(torch, dtype)
    if device.type == "cpu":
        return torch.float32
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return getattr(torch, cfg.get("torch_dtype") or cfg.get("dtype") or "float16")
