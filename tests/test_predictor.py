"""The step-time predictor: its online fit and the one error figure it keeps."""

from __future__ import annotations

import math
import random

from scheduler.engine.predictor import FEATURES, StepTimePredictor, features
from scheduler.types import Request, SamplingConfig, SeqPlan, StepPlan, Tier


def plan(rng: random.Random) -> StepPlan:
    seqs = []
    for i in range(rng.randint(1, 40)):
        req = Request(f"r{i}", [1], SamplingConfig())
        if rng.random() < 0.1:
            n = rng.randint(2, 300)
            seqs.append(SeqPlan(req, [1] * n, 0, Tier.GPU, []))
        else:
            ctx = rng.randint(1, 2000)
            tier = Tier.CPU if rng.random() < 0.4 else Tier.GPU
            seqs.append(SeqPlan(req, [1], ctx - 1, tier, []))
    return StepPlan(1, seqs, [])


def true_time(p: StepPlan) -> float:
    x = features(p)
    # fixed 2 ms, per prefill token 20 us, GPU rows 50 us + context, CPU rows dearer
    return float(x @ [2e-3, 2e-5, 1e-6, 5e-5, 3e-5, 1e-4, 2e-4])


def test_features_count_the_work_of_each_tier():
    req = Request("a", [1], SamplingConfig())
    p = StepPlan(
        1,
        [
            SeqPlan(req, [1] * 10, 0, Tier.GPU, []),
            SeqPlan(req, [1], 99, Tier.GPU, []),
            SeqPlan(req, [1], 499, Tier.CPU, []),
        ],
        [],
    )
    x = dict(zip(FEATURES, features(p), strict=True))
    assert x == {
        "fixed": 1,
        "prefill_tokens": 10,
        "prefill_attention": 0.1,
        "gpu_rows": 1,
        "gpu_context": 0.1,
        "cpu_rows": 1,
        "cpu_context": 0.5,
    }


def test_learns_step_time_online_and_reports_its_error():
    rng = random.Random(0)
    pred = StepTimePredictor(min_samples=32, refit_every=8)
    assert math.isnan(pred.mape())
    for _ in range(40):
        p = plan(rng)
        x = features(p)
        assert pred.predict(x) is None or pred.observed >= 32
        pred.observe(x, true_time(p) * rng.uniform(0.97, 1.03), pred.predict(x))
    assert pred.coef is not None
    for _ in range(300):
        p = plan(rng)
        x = features(p)
        pred.observe(x, true_time(p) * rng.uniform(0.97, 1.03), pred.predict(x))
    assert pred.mape() < 0.04  # the noise is +-3%
    # the machine slows down by half: the window recalibrates
    for _ in range(700):
        p = plan(rng)
        x = features(p)
        pred.observe(x, 1.5 * true_time(p) * rng.uniform(0.97, 1.03), pred.predict(x))
    assert pred.mape() < 0.04
