"""Policies: where each request's KV lives and how each iteration runs (see base.py)."""

from scheduler.policies.base import Policy
from scheduler.policies.registry import POLICIES, make_policy, placement_policy

__all__ = ["POLICIES", "Policy", "make_policy", "placement_policy"]
