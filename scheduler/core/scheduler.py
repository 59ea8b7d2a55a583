"""The scheduler proper: pure bookkeeping over two KV tiers, no I/O, no torch.

`schedule()` turns the queue and the running set into one iteration's plan: which
sequences run, on which tier their attention runs, and which KV blocks move between
tiers before the forward pass; `update(plan, tokens)` takes the sampled tokens back and
decides who is finished. Everything else (RPCs, detokenizing, streaming) lives in the
engine, so this class is unit-tested, and can be stepped by a simulator, on its own.

Block moves in one plan go one way only (GPU->CPU or CPU->GPU): a block freed by a move
can be handed out again in the same plan, which is only safe if every copy out of a
tier runs before any copy into it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from itertools import chain

from scheduler.core.block_manager import BlockAllocator
from scheduler.core.config import SchedulerConfig, forced
from scheduler.core.prompt_sharing import prompt_blocks
from scheduler.core.stops import banned_tokens, check_stop
from scheduler.core.tier_moves import TierMoves
from scheduler.core.view import PolicyPort
from scheduler.types import (
    FinishReason,
    Request,
    SeqPlan,
    Status,
    StepPlan,
    Strategy,
    Tier,
)


class Scheduler(TierMoves):
    def __init__(
        self,
        config: SchedulerConfig,
        eos_token_ids: frozenset[int],
        policy: PolicyPort,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock  # the simulator steps a virtual one
        self.eos_token_ids = eos_token_ids
        self.gpu = BlockAllocator(config.num_gpu_blocks, "gpu")
        self.cpu = BlockAllocator(config.num_cpu_blocks, "cpu") if config.num_cpu_blocks else None
        self.placement = config.placement
        self.policy = policy
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self.step_id = 0
        self.num_preemptions = 0
        self.num_swap_outs = 0
        self.num_swap_ins = 0
        self.num_prompt_tokens_prefilled = 0  # prompt tokens computed (again, if preempted)
        self.num_prompt_tokens_shared = 0  # held from another sample's prompt blocks
        self._out: list[tuple[int, int]] = []
        self._in: list[tuple[int, int]] = []
        # GPU blocks free once GPU requests have grown to the end (None: not counted yet)
        self.future_free: int | None = None

    @property
    def requests(self) -> dict[str, Request]:
        """Every live request by id, derived from the queues (the engine keeps the one
        registry of live requests; this is for lookups by operators and tests)."""
        return {r.request_id: r for r in chain(self.waiting, self.running, self.swapped)}

    def set_policy(self, policy: PolicyPort) -> None:
        """Live switch: takes effect at the next schedule(); nothing running moves now.
        The profile's calibration carries over when the cost model stays the same."""
        if policy.cost is self.policy.cost:
            policy.calibration = self.policy.calibration
        self.policy = policy

    @property
    def cpu_attention(self) -> bool:
        """Whether CPU-tier requests decode (attention on the CPU) or only park there."""
        return self.cpu is not None and self.placement != "gpu" and self.policy.cpu_attention

    # -- intake ---------------------------------------------------------------------
    def add(self, req: Request) -> None:
        """Queue a new request (its id is unique: the engine's registry checks that)."""
        self.waiting.append(req)

    def queue_full(self) -> bool:
        return len(self.waiting) >= self.config.max_queue

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def alloc(self, tier: Tier) -> BlockAllocator:
        if tier is Tier.GPU:
            return self.gpu
        if self.cpu is None:
            raise RuntimeError("no CPU tier")
        return self.cpu

    def pin(self, request_id: str, tier: Tier) -> bool:
        """Operator lever: move this request's KV to `tier` when possible, and keep it there."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        if tier is Tier.CPU and self.cpu is None:
            raise ValueError("there is no CPU tier to migrate to")
        req.target_tier, req.pinned = tier, True
        return True

    # -- planning -------------------------------------------------------------------
    def schedule(self) -> StepPlan | None:
        """Every running request decodes one token; moves happen; new requests join."""
        self._out, self._in = [], []
        preempted: list[Request] = []
        decodes = self.grow_running(preempted)
        self.move_to_targets(decodes)
        self.future_free = None  # counted when swap-in or admission first needs it
        if not preempted:
            self.swap_in_when_room(decodes)
            if self.waiting and not self.swapped:
                self.spill_for_prompt(decodes)
        self.running = decodes
        # The plan shares each block table with its request: nothing changes a table
        # before the executor has run the plan, and the next schedule() makes new ones.
        feds = [r.tokens_from(r.num_computed) for r in decodes]  # one token, or a prompt
        budget = self.config.prefill_budget(sum(len(fed) <= 1 for fed in feds))
        seqs = []
        for r, fed in zip(decodes, feds, strict=True):
            if len(fed) > 1:  # the next chunk of a prompt (chunked prefill)
                fed = fed[: max(budget, 0)]
                budget -= len(fed)
                if not fed:
                    continue  # no room this iteration: it keeps its blocks and waits
            banned = banned_tokens(r, self.eos_token_ids) if r.sampling.min_tokens else ()
            seqs.append(SeqPlan(r, fed, r.num_computed, r.tier, r.block_table, banned))
        if not preempted and not self.swapped:
            seqs += self.admit(budget)
        if not seqs:
            return None
        seqs = self.policy.select(seqs)
        self.step_id += 1
        d = self.policy.choose(seqs)
        if self.config.strategy != "auto" and d.strategy is not Strategy.GPU_ONLY:
            d = forced(self.config.strategy, seqs)
        return StepPlan(
            self.step_id,
            seqs,
            preempted,
            self._out,
            self._in,
            d.strategy,
            d.pipeline_rows,
            d.predicted_s * self.policy.calibration.scale,
            d.predicted_s,
        )

    def grow_running(self, preempted: list[Request]) -> list[Request]:
        """Give each running request room for its next token, oldest first. On a full
        tier the newest request of that tier is evicted: to the CPU tier if it can take
        it (swap-out instead of recompute), else preempted for recompute."""
        bs = self.config.block_size
        room = 0  # the rows up to the first that needs a block (most rows, most steps)
        for req in self.running:  # num_tokens inlined: every row, every step
            if len(req.prompt_ids) + len(req.output_ids) > len(req.block_table) * bs:
                break
            room += 1
        decodes = self.running[:room]
        queue = deque(self.running[room:])
        while queue:
            req = queue.popleft()
            if req.num_tokens <= len(req.block_table) * bs:  # room already
                decodes.append(req)
                continue
            while True:
                alloc = self.alloc(req.tier)
                need = self.config.blocks_for(req.num_tokens) - len(req.block_table)
                if need <= alloc.num_free:
                    req.block_table += alloc.allocate(need)
                    decodes.append(req)
                    break
                victim = next((r for r in reversed(queue) if r.tier is req.tier), req)
                still_running = self.evict(victim, preempted)
                if victim is not req:
                    if not still_running:
                        queue.remove(victim)
                    continue
                if not still_running:
                    break
        return decodes

    def admit(self, budget: int) -> list[SeqPlan]:
        """New (and preempted) requests join, FCFS, prefilled on the GPU tier; the policy
        says where their KV goes next, or that they wait. Chunked, a prompt longer than
        the budget left starts with a chunk of it (its blocks are all taken now)."""
        cfg = self.config
        seqs: list[SeqPlan] = []
        admitted: list[Request] = []
        while self.waiting and len(self.running) < cfg.max_num_seqs:
            req = self.waiting[0]
            prefix = prompt_blocks(req, admitted, cfg.block_size)
            if prefix is None:
                break  # another sample of its prompt is prefilled now: it shares that
            start = len(prefix) * cfg.block_size
            n = req.num_tokens - start
            if cfg.chunked_prefill:
                if budget <= 0:
                    break
                n = min(n, budget)
            elif n > budget and budget < cfg.max_num_batched_tokens:
                break  # wait for the next iteration's budget; never starve a long prompt
            need = cfg.blocks_for(req.num_tokens) - len(prefix)
            if need > self.gpu.num_free:
                break
            target = req.target_tier if req.pinned else self.place(req, admitted)
            if target is None:
                break  # the policy holds it (and, FCFS, those behind it) back
            self.waiting.popleft()
            req.block_table = self.gpu.share(prefix) + self.gpu.allocate(need)
            req.tier = Tier.GPU
            req.status = Status.RUNNING
            req.target_tier = target if target is Tier.CPU else None
            self.running.append(req)
            admitted.append(req)
            fed = req.tokens_from(start)[:n]
            self.num_prompt_tokens_prefilled += max(0, len(req.prompt_ids) - start)
            self.num_prompt_tokens_shared += start
            banned = banned_tokens(req, self.eos_token_ids)
            seqs.append(SeqPlan(req, fed, start, Tier.GPU, req.block_table, banned))
            budget -= n
        return seqs

    def place(self, req: Request, admitted: list[Request]) -> Tier | None:
        """Where the request's KV goes after prefill: forced by --placement, else the
        policy's call (None: not now)."""
        if self.cpu is None or not self.cpu_attention:
            return Tier.GPU
        if self.placement == "cpu":
            return Tier.CPU
        return self.policy.place(self.view(self.running), req, admitted)

    def preempt(self, req: Request) -> None:
        """Free the request's blocks and requeue it first; its tokens are kept for recompute."""
        self.alloc(req.tier).free(req.block_table)
        if req.status is Status.SWAPPED:
            self.swapped.remove(req)
        req.block_table = []
        req.tier = Tier.GPU
        req.num_computed = 0
        req.status = Status.WAITING
        req.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # -- results --------------------------------------------------------------------
    def update(self, plan: StepPlan, tokens: list[int]) -> list[Request]:
        """Append each sampled token; returns the requests that got one (aborted ones skipped)."""
        now = self.clock()
        updated: list[Request] = []
        for seq, tok in zip(plan.seqs, tokens, strict=True):
            req = seq.request
            if req.finished:  # aborted while the step ran
                continue
            req.num_computed = seq.start_pos + len(seq.token_ids)
            if req.num_computed < req.num_tokens:
                continue  # a prompt chunk before the last: its draw is not kept
            req.output_ids.append(tok)
            if req.first_token_time is None:
                req.first_token_time = now
            reason, matched = check_stop(req, tok, self.eos_token_ids, self.config.max_model_len)
            if reason is not None:
                self.finish(req, reason, matched)
            updated.append(req)
        return updated

    def finish(self, req: Request, reason: FinishReason, matched: str = "") -> None:
        """End a request (stop, length, abort) and free its blocks at once."""
        if req.finished:
            return
        {Status.RUNNING: self.running, Status.WAITING: self.waiting, Status.SWAPPED: self.swapped}[
            req.status
        ].remove(req)
        self.alloc(req.tier).free(req.block_table)
        req.block_table = []
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.matched_stop = matched
        req.finish_time = self.clock()

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req, FinishReason.ABORTED)
        return req

    def requeue_running(self) -> list[Request]:
        """An executor lost its state: recompute everything that held KV."""
        lost = [*self.running, *self.swapped]
        for req in reversed(lost):
            if req.status is Status.RUNNING:
                self.running.remove(req)
            self.preempt(req)  # takes swapped requests off their list itself
        return lost
