"""Moving KV between the tiers: eviction when a tier runs short, moves to where
placement (or an operator) wants a request, swap-in when the GPU has room again, and
spilling GPU rows to the CPU tier so that a waiting prompt can be prefilled.

A mixin of `Scheduler`, split out for size: it reads and changes the scheduler's own
queues and allocators, and every move goes through `move()`, which records the block
copies of the plan (one direction per plan).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from scheduler.core.block_manager import BlockAllocator
from scheduler.core.config import SchedulerConfig
from scheduler.core.prompt_sharing import lends_prompt, prefilling
from scheduler.core.view import PolicyPort, SchedulerView
from scheduler.types import Request, Status, Tier


class TierMoves:
    config: SchedulerConfig
    gpu: BlockAllocator
    cpu: BlockAllocator | None
    policy: PolicyPort
    placement: str
    step_id: int
    clock: Callable[[], float]
    waiting: deque[Request]
    swapped: list[Request]
    future_free: int | None
    num_swap_outs: int
    num_swap_ins: int
    _out: list[tuple[int, int]]
    _in: list[tuple[int, int]]

    # Scheduler's own, declared for the type checker
    def alloc(self, tier: Tier) -> BlockAllocator: ...
    def preempt(self, req: Request) -> None: ...

    @property
    def cpu_attention(self) -> bool: ...

    def evict(self, victim: Request, preempted: list[Request]) -> bool:
        """Free the victim's blocks on its tier; True if it keeps decoding on the CPU."""
        victim.pinned, victim.target_tier = False, None
        movable = victim.tier is Tier.GPU and self.cpu is not None and not prefilling(victim)
        if movable and self.move(victim, Tier.CPU):
            if not self.cpu_attention:  # attention stays on the GPU: park it
                victim.status = Status.SWAPPED
                self.swapped.append(victim)
                return False
            return True
        self.preempt(victim)
        preempted.append(victim)
        return False

    def move_to_targets(self, decodes: list[Request]) -> None:
        """Requests placed (or pinned) on the other tier move there once it has room."""
        for req in [*decodes, *self.swapped]:
            if req.target_tier is None or req.target_tier is req.tier:
                continue
            if req.tier is Tier.GPU and (lends_prompt(req) or prefilling(req)):
                continue  # it moves once its prompt is in, and held by its other samples
            if self.move(req, req.target_tier) and req.status is Status.SWAPPED:
                self.resume(req, decodes)

    def swap_in_when_room(self, decodes: list[Request]) -> None:
        """Back to the GPU, oldest first, when its whole remaining future fits there."""
        if self.cpu is None or self.placement == "cpu" or self._out:
            return
        parked = [*self.swapped, *(r for r in decodes if r.tier is Tier.CPU and not r.pinned)]
        if not parked:
            return
        parked.sort(key=lambda r: r.arrival_time)
        if self.gpu.num_free < self.future_blocks(parked[0]):
            return  # what the GPU rows will still grow into only lowers this: no room
        self.count_future_free(decodes)
        for req in parked:
            future = self.future_blocks(req)
            if self.future_free < future or not self.move(req, Tier.GPU):
                break
            self.future_free -= future
            req.target_tier = None
            if req.status is Status.SWAPPED:
                self.resume(req, decodes)

    def resume(self, req: Request, decodes: list[Request]) -> None:
        self.swapped.remove(req)
        req.status = Status.RUNNING
        decodes.append(req)

    def move(self, req: Request, to: Tier) -> bool:
        """Move the request's KV to the other tier: new blocks there (room for the token
        this step adds), copies of the blocks holding KV, the old blocks freed."""
        if to is req.tier:
            return True
        if self._in if to is Tier.CPU else self._out:
            return False  # one direction per plan
        dst = self.alloc(to)
        need = self.config.blocks_for(req.num_tokens)
        if dst.num_free < need:
            return False
        new = dst.allocate(need)
        used = self.config.blocks_for(req.num_computed)
        pairs = list(zip(req.block_table[:used], new[:used], strict=True))
        if to is Tier.CPU:
            self._out += pairs
            self.num_swap_outs += 1
        else:
            self._in += pairs
            self.num_swap_ins += 1
        self.alloc(req.tier).free(req.block_table)
        req.block_table, req.tier = new, to
        req.migrations += 1
        return True

    def future_blocks(self, req: Request) -> int:
        return self.config.future_blocks(req)

    def count_future_free(self, running: list[Request]) -> None:
        """At most once per iteration: a block allocated for growth lowers the free count
        and the growth still to come alike, so from here only moves and admissions change
        it, and they keep `future_free` up to date themselves."""
        if self.future_free is None:
            self.future_free = self.gpu_future_free(running)

    def gpu_future_free(self, running: list[Request]) -> int:
        """Free GPU blocks less what the running GPU requests will still grow into."""
        growth = sum(
            self.future_blocks(r) - len(r.block_table)
            for r in running
            if r.tier is Tier.GPU and r.target_tier is not Tier.CPU
        )
        return self.gpu.num_free - growth

    def view(self, running: list[Request]) -> SchedulerView:
        """What a policy sees of the scheduler now (a CPU tier exists when it is asked)."""
        return SchedulerView(
            self.config, True, self.gpu.num_free, self.step_id, running, self.clock()
        )

    def spill_for_prompt(self, decodes: list[Request]) -> None:
        """The queue's head cannot be prefilled for want of GPU blocks: move the newest
        GPU rows to the CPU tier to make room, if the policy says the CPU can take them
        (apex: within its TPOT bound). Waiting for a GPU row to finish instead costs the
        head its TTFT, and every arrival behind it too."""
        head = self.waiting[0]
        short = self.config.blocks_for(head.num_tokens + 1) - self.gpu.num_free
        if short <= 0 or not self.cpu_attention or self.placement != "auto" or self._in:
            return
        if len(decodes) >= self.config.max_num_seqs:
            return  # it could not join anyway
        victims: list[Request] = []
        freed = 0
        for r in reversed(decodes):
            if freed >= short:
                break
            movable = r.tier is Tier.GPU and not r.pinned and r.status is Status.RUNNING
            if movable and not prefilling(r) and not lends_prompt(r):
                victims.append(r)
                freed += len(r.block_table)
        if freed < short:
            return
        cpu_free = self.alloc(Tier.CPU).num_free
        if sum(self.config.blocks_for(r.num_tokens) for r in victims) > cpu_free:
            return
        if not self.policy.spill(self.view(decodes), head, victims):
            return
        for r in victims:
            self.move(r, Tier.CPU)
