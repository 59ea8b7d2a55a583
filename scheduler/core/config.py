"""Frozen configuration of the daemon, validated where it is built."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scheduler.types import Decision, Request, SeqPlan, Strategy, Tier


@dataclass(frozen=True)
class ModelSpec:
    """What the scheduler needs to know of the model, read from config.json (no torch)."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelSpec:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ValueError(f"{model_dir} is not a checkpoint directory: no config.json")
        cfg = json.loads(path.read_text())
        heads = cfg["num_attention_heads"]
        return cls(
            name=Path(model_dir).resolve().name,
            num_layers=cfg["num_hidden_layers"],
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg["max_position_embeddings"],
        )

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


PLACEMENTS = ("gpu", "cpu", "auto")
# The daemon's default tokens an iteration, prompts chunked (--max-num-batched-tokens);
# the simulator runs the same unless told otherwise.
DEFAULT_BATCHED_TOKENS = 512
STRATEGIES = ("auto", "overlap", "pipeline")


@dataclass(frozen=True)
class SchedulerConfig:
    max_model_len: int
    block_size: int = 16
    num_gpu_blocks: int = 1024
    max_num_seqs: int = 256  # running requests per iteration
    # Unchunked: prompt tokens admitted per iteration (a longer prompt runs alone).
    # Chunked: every token of an iteration, a decode row counting one; prompts past what
    # is left are prefilled in chunks over several iterations, so that one long prompt
    # does not stall every decoding request for its whole prefill (vLLM's default).
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = False
    max_queue: int = 1024  # waiting requests before RESOURCE_EXHAUSTED
    num_cpu_blocks: int = 0  # 0: no CPU tier
    placement: str = "auto"  # gpu | cpu | auto
    strategy: str = "auto"  # auto (the policy's call) | overlap | pipeline: forced

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, not {self.placement!r}")
        if self.num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be >= 0, got {self.num_cpu_blocks}")
        if self.placement == "cpu" and not self.num_cpu_blocks:
            raise ValueError("placement cpu needs a CPU tier (num_cpu_blocks > 0)")
        if self.num_cpu_blocks and self.blocks_for(self.max_model_len) > self.num_cpu_blocks:
            raise ValueError(
                f"one sequence of max_model_len={self.max_model_len} tokens needs "
                f"{self.blocks_for(self.max_model_len)} blocks, but the CPU tier has "
                f"{self.num_cpu_blocks}: give it more or lower --max-model-len"
            )
        for name in (
            "max_model_len",
            "block_size",
            "num_gpu_blocks",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_queue",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.blocks_for(self.max_model_len) > self.num_gpu_blocks:
            raise ValueError(
                f"one sequence of max_model_len={self.max_model_len} tokens needs "
                f"{self.blocks_for(self.max_model_len)} blocks of {self.block_size} tokens, "
                f"but the GPU tier has {self.num_gpu_blocks}: give it more blocks or lower "
                "--max-model-len"
            )

    def prefill_budget(self, decode_rows: int) -> int:
        """Prompt tokens an iteration may carry: unchunked, max_num_batched_tokens of new
        prompts; chunked, what the decode rows leave of it (at least a block, so that
        prompts always progress)."""
        if not self.chunked_prefill:
            return self.max_num_batched_tokens
        return max(self.max_num_batched_tokens - decode_rows, self.block_size)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def future_blocks(self, req: Request) -> int:
        """Blocks the request holds once it has generated all it may."""
        # num_tokens + remaining_tokens, without the two properties: it runs for every
        # running request each iteration
        final = len(req.prompt_ids) + req.sampling.max_tokens
        return self.blocks_for(min(final, self.max_model_len))


def forced(strategy: str, seqs: list[SeqPlan]) -> Decision:
    """--strategy overlap|pipeline (tests, operations): pipelining splits the CPU rows
    in half, so that both sub-batches carry CPU rows whenever there are two."""
    if strategy == "overlap":
        return Decision(Strategy.OVERLAP, 0, float("nan"))
    n = sum(1 for s in seqs if s.tier is Tier.CPU)
    return Decision(Strategy.PIPELINE, (n + 1) // 2, float("nan"))
