"""Policies by name: what `--policy` and the admin `Policy` call build."""

from __future__ import annotations

from scheduler.costs.cost_model import CostModel
from scheduler.policies.apex import ApexPolicy
from scheduler.policies.base import FixedRulePolicy, GpuOnlyPolicy, Policy
from scheduler.policies.neo import NeoPolicy

POLICIES = ("gpu-only", "neo", "apex")


def make_policy(
    name: str,
    cost: CostModel | None,
    tpot_slo_s: float | None = None,
    ttft_slo_s: float | None = None,
) -> Policy:
    """A policy by name. neo and apex need a cost model; without one they fall back to
    the fixed rule (the caller says so to the operator). The bounds are apex's."""
    if name == "gpu-only":
        return GpuOnlyPolicy(cost)
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {name!r}")
    if cost is None:
        return FixedRulePolicy(None, name)
    if name == "neo":
        return NeoPolicy(cost)
    return ApexPolicy(cost, tpot_slo_s or None, ttft_slo_s)


def placement_policy(placement: str) -> Policy:
    """The policy for a forced placement with no profile: gpu-only for `gpu`, else the
    fixed placement rule."""
    return GpuOnlyPolicy(None) if placement == "gpu" else FixedRulePolicy(None)
