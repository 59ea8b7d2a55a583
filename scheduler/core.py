"""The scheduler proper: pure bookkeeping, no I/O, no torch.

`schedule()` turns the queue and the running set into one iteration's plan;
`update(plan, tokens)` takes the executor's sampled tokens back and decides who is
finished. Everything in between (the RPC, detokenizing, streaming) lives in the engine,
so this class can be unit-tested, and later stepped by a simulator, without executors.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from scheduler.block_manager import BlockAllocator
from scheduler.config import SchedulerConfig
from scheduler.request import FinishReason, Request, Status


@dataclass(frozen=True)
class SeqPlan:
    request: Request
    token_ids: list[int]  # what to feed this iteration
    start_pos: int  # position of token_ids[0]

    @property
    def is_prefill(self) -> bool:
        return len(self.token_ids) > 1


@dataclass(frozen=True)
class StepPlan:
    step_id: int
    seqs: list[SeqPlan]
    preempted: list[Request]

    @property
    def num_prefill_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs if s.is_prefill)


class Scheduler:
    def __init__(self, config: SchedulerConfig, eos_token_ids: frozenset[int]) -> None:
        self.config = config
        self.eos_token_ids = eos_token_ids
        self.gpu = BlockAllocator(config.num_gpu_blocks, "gpu")
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.step_id = 0
        self.num_preemptions = 0

    # -- intake ---------------------------------------------------------------------
    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already live")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def queue_full(self) -> bool:
        return len(self.waiting) >= self.config.max_queue

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- planning -------------------------------------------------------------------
    def schedule(self) -> StepPlan | None:
        """One iteration: every running request decodes one token, then new ones join."""
        cfg = self.config
        preempted: list[Request] = []
        decodes: list[Request] = []
        queue = list(self.running)
        while queue:
            req = queue.pop(0)
            need = cfg.blocks_for(req.num_tokens) - len(req.block_table)
            while need > self.gpu.num_free:
                # Out of blocks: recompute the newest request later (vLLM's policy),
                # which may be this one.
                victim = queue.pop() if queue else req
                self.preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            else:
                req.block_table += self.gpu.allocate(need)
                decodes.append(req)
        self.running = decodes
        seqs = [SeqPlan(r, r.all_ids[r.num_computed :], r.num_computed) for r in decodes]

        budget = cfg.max_num_batched_tokens
        while self.waiting and len(self.running) < cfg.max_num_seqs and not preempted:
            req = self.waiting[0]
            n = req.num_tokens
            if n > budget and budget < cfg.max_num_batched_tokens:
                break  # wait for the next iteration's budget; never starve a long prompt
            need = cfg.blocks_for(n)
            if need > self.gpu.num_free:
                break
            self.waiting.popleft()
            req.block_table = self.gpu.allocate(need)
            req.status = Status.RUNNING
            self.running.append(req)
            seqs.append(SeqPlan(req, req.all_ids, 0))
            budget -= n
        if not seqs:
            return None
        self.step_id += 1
        return StepPlan(self.step_id, seqs, preempted)

    def preempt(self, req: Request) -> None:
        """Free the request's blocks and requeue it first; its tokens are kept for recompute."""
        self.gpu.free(req.block_table)
        req.block_table = []
        req.num_computed = 0
        req.status = Status.WAITING
        req.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # -- results --------------------------------------------------------------------
    def update(self, plan: StepPlan, tokens: list[int]) -> list[Request]:
        """Append each sampled token; returns the requests that got one (aborted ones skipped)."""
        now = time.monotonic()
        updated: list[Request] = []
        for seq, tok in zip(plan.seqs, tokens, strict=True):
            req = seq.request
            if req.finished:  # aborted while the step ran
                continue
            req.num_computed = seq.start_pos + len(seq.token_ids)
            req.output_ids.append(tok)
            if req.first_token_time is None:
                req.first_token_time = now
            reason, matched = self.check_stop(req, tok)
            if reason is not None:
                self.finish(req, reason, matched)
            updated.append(req)
        return updated

    def check_stop(self, req: Request, tok: int) -> tuple[FinishReason | None, str]:
        sp = req.sampling
        if tok in sp.stop_token_ids:
            return FinishReason.STOP_TOKEN, str(tok)
        if not sp.ignore_eos and tok in self.eos_token_ids:
            return FinishReason.EOS, str(tok)
        if len(req.output_ids) >= sp.max_tokens or req.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH, ""
        return None, ""

    def finish(self, req: Request, reason: FinishReason, matched: str = "") -> None:
        """End a request (stop, length, abort) and free its blocks at once."""
        if req.finished:
            return
        if req.status is Status.RUNNING:
            self.running.remove(req)
        elif req.status is Status.WAITING:
            self.waiting.remove(req)
        self.gpu.free(req.block_table)
        req.block_table = []
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.matched_stop = matched
        req.finish_time = time.monotonic()
        del self.requests[req.request_id]

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req, FinishReason.ABORTED)
        return req

    def requeue_running(self) -> list[Request]:
        """The executor lost its cache (it died): recompute everything that was running."""
        lost = list(self.running)
        for req in reversed(lost):
            self.running.remove(req)
            self.preempt(req)
        return lost
