"""Hardware profiles: the time of every subtask of an iteration, for one model on one
machine, and the step-time model built on them.

A profile is JSON keyed by model shape, dtype and device. Those shipped in
`scheduler/costs/profiles/` for GPUs we do not have (T4, A10) are derived from published
specifications, each figure with its source inside the file; measured profiles (issue 4's
`apexctl profile`) use the same fields. Per decoder layer, for a batch of T tokens of
which G rows attend on the GPU and C rows on the CPU:

    linear(T)   = max(layer weight bytes / GPU bandwidth, 2 x layer params x T / GPU FLOP/s)
    gatt(G)     = GPU KV bytes read by the G rows / GPU bandwidth
    catt(C)     = CPU KV bytes read by the C rows / CPU attention rate + data-plane round trip
    transfer(C) = C x (q, k, v out + attention back) bytes / PCIe bandwidth

How the subtasks compose into an iteration under each strategy is
`scheduler/cost_model.py`: the same formulas drive the simulator's clock and the
policies' predictions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from scheduler.costs.cost_model import plan_s
from scheduler.costs.measured_profile import MeasuredProfile
from scheduler.types import StepPlan

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    model: str
    num_layers: int
    layer_weight_bytes: float  # per decoder layer
    layer_params: float
    head_weight_bytes: float  # LM head (+ embedding gather), once per iteration
    kv_bytes_per_token_layer: float  # K and V of one token in one layer
    row_transfer_bytes_layer: float  # q, k, v out and the attention row back, per layer
    gpu_bandwidth: float  # bytes/s, effective
    gpu_flops: float  # FLOP/s, effective
    cpu_attention_rate: float  # bytes/s of KV that CPU attention reads, effective
    pcie_bandwidth: float  # bytes/s, effective
    layer_overhead_s: float  # kernel launches and the like, per layer
    iteration_overhead_s: float  # scheduling, RPC, sampling, per iteration
    dataplane_round_trip_s: float  # per layer, when CPU rows exist
    gpu_kv_capacity_tokens: int
    cpu_kv_capacity_tokens: int

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_dict(json.loads(profile_path(path).read_text()))

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        fields = {k: v["value"] if isinstance(v, dict) else v for k, v in data["figures"].items()}
        return cls(name=data["name"], device=data["device"], model=data["model"], **fields)

    def linear_s(self, tokens: int) -> float:
        memory = self.layer_weight_bytes / self.gpu_bandwidth
        compute = 2 * self.layer_params * tokens / self.gpu_flops
        return max(memory, compute) + self.layer_overhead_s

    def gatt_s(self, context_tokens: float, rows: int = 1) -> float:
        return context_tokens * self.kv_bytes_per_token_layer / self.gpu_bandwidth

    def head_s(self, rows: int = 1) -> float:
        return self.head_weight_bytes / self.gpu_bandwidth

    def overhead_s(self, rows: int) -> float:
        return self.iteration_overhead_s

    def catt_s(self, rows: int, context_tokens: float) -> float:
        if rows == 0:
            return 0.0
        read = context_tokens * self.kv_bytes_per_token_layer / self.cpu_attention_rate
        move = rows * self.row_transfer_bytes_layer / self.pcie_bandwidth
        return read + move + self.dataplane_round_trip_s


def step_time(profile: Profile | MeasuredProfile, plan: StepPlan) -> float:
    """The model's iteration time for the plan, run with the strategy the plan names."""
    return plan_s(profile, plan.seqs, plan.strategy, plan.pipeline_rows)


def user_profile_dir() -> Path:
    """Where `apexctl profile` saves measured profiles and the daemon looks for them."""
    return Path(os.environ.get("APEX_PROFILE_DIR") or Path.home() / ".cache" / "apex" / "profiles")


def profile_key(
    num_layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    dtype: str,
    device_name: str,
    cpu_kv_dtype: str,
) -> str:
    """Model shape, dtype and device: a profile measured under one key predicts nothing
    under another."""
    shape = f"L{num_layers}-H{hidden}-A{heads}-KV{kv_heads}-D{head_dim}-V{vocab}"
    return f"{shape}/{dtype}/{device_name}/cpu-kv:{cpu_kv_dtype or 'none'}"


def profile_path(path: str | Path) -> Path:
    """A JSON file, or the name of one shipped in scheduler/costs/profiles/."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = PROFILE_DIR / f"{path}.json"
    if not shipped.is_file():
        raise ValueError(f"no profile file {path} (nor {shipped})")
    return shipped


def load_profile(path: str | Path) -> Profile | MeasuredProfile:
    """A spec-derived or a measured profile, by path or by shipped name."""
    data = json.loads(profile_path(path).read_text())
    if data.get("kind") == "measured":
        return MeasuredProfile.from_dict(data)
    return Profile.from_dict(data)


def find_profile(key: str) -> Path | None:
    """The newest profile measured under this key, in the user's profile folder."""
    folder = user_profile_dir()
    found = []
    for p in folder.glob("*.json") if folder.is_dir() else []:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if data.get("key") == key:
            found.append((data.get("measured_at", ""), p))
    return max(found)[1] if found else None
