"""Step-time prediction error, and the online fit that predicts when no profile does.

The engine predicts each step's time once: the policy's calibrated profile when one is
loaded, else a linear model of the iteration's wall time over the work in the plan
(prefill tokens and their quadratic attention, GPU decode rows and the context they
attend to, CPU rows and theirs), refit by least squares over a sliding window of
measured iterations. Whichever predicted, its error is kept here, once: the recent mean
absolute percentage error is the one figure the admin API and the metrics report.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from scheduler.types import StepPlan, Tier

FEATURES = (
    "fixed",
    "prefill_tokens",
    "prefill_attention",
    "gpu_rows",
    "gpu_context",
    "cpu_rows",
    "cpu_context",
)


def features(plan: StepPlan) -> np.ndarray:
    x = np.zeros(len(FEATURES))
    x[0] = 1.0
    for s in plan.seqs:
        n = len(s.token_ids)
        ctx = s.start_pos + n
        if n > 1:
            x[1] += n
            x[2] += n * ctx / 1e3  # attention work of a prefill grows with n x context
        elif s.tier is Tier.CPU:
            x[5] += 1
            x[6] += ctx / 1e3
        else:
            x[3] += 1
            x[4] += ctx / 1e3
    return x


class StepTimePredictor:
    def __init__(
        self,
        window: int = 512,
        min_samples: int = 32,
        refit_every: int = 16,
        error_window: int = 200,
    ) -> None:
        self.samples: deque[tuple[np.ndarray, float]] = deque(maxlen=window)
        self.errors: deque[float] = deque(maxlen=error_window)
        self.min_samples = min_samples
        self.refit_every = refit_every
        self.coef: np.ndarray | None = None
        self.observed = 0

    def predict(self, x: np.ndarray) -> float | None:
        """Predicted seconds for a plan's features; None until enough iterations were
        measured. The caller computes features(plan) once and passes it to observe too."""
        if self.coef is None:
            return None
        return max(float(x @ self.coef), 0.0)

    def observe(
        self, x: np.ndarray, measured_s: float, predicted_s: float | None, fit: bool = True
    ) -> None:
        """Records the error of the step's prediction (whoever made it); with `fit`, the
        step also trains the online model (not needed while a profile predicts)."""
        if predicted_s is not None and measured_s > 0:
            self.errors.append(abs(predicted_s - measured_s) / measured_s)
        self.observed += 1
        if not fit:
            return
        self.samples.append((x, measured_s))
        if len(self.samples) >= self.min_samples and self.observed % self.refit_every == 0:
            self.refit()

    def refit(self) -> None:
        x = np.stack([s[0] for s in self.samples])
        y = np.array([s[1] for s in self.samples])
        # A little ridge keeps features that never varied (no CPU rows yet) at zero.
        lam = 1e-6 * len(y)
        self.coef = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)

    def mape(self) -> float:
        """Mean absolute percentage error over the recent window (NaN before any)."""
        return float(np.mean(self.errors)) if self.errors else float("nan")
