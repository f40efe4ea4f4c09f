"""TelaMalloc-style repair search: place greedily, evict what blocks, retry.

TelaMalloc (Maas et al., ASPLOS 2023) packs buffers under a fixed capacity
by placing them one at a time and *backtracking* when one does not fit.
:class:`RepairSearch` follows the shape of that search as a min-conflicts
repair loop:

- buffers wait in a queue, the most often evicted first ("squeaky wheel"),
  then in order of start time, longest lifetime and largest size first;
- a buffer goes into the lowest gap among its placed conflicting buffers
  that fits below the capacity;
- if none fits (a *minor backtrack*), it takes the candidate offset (0,
  flush on top of a blocker, flush under one) whose blockers weigh least,
  a blocker weighing its size times its lifetime (a long, large buffer is
  the hardest to put back); the blockers go back into the queue with one
  more eviction each, so contentious buffers rise in the order;
- one time in four a random candidate replaces the cheapest, which breaks
  the cycles a purely greedy repair falls into;
- after too many evictions in one round (a *major backtrack*) the packing
  is wiped and rebuilt in the new, eviction-weighted order.

:meth:`RepairSearch.lower` drives it downwards: capacities below the best
height known, a step that doubles after a success and halves after a
give-up. It is a heuristic (it proves nothing), and for a given seed it
makes the same choices every time (only the deadline cuts it short).
"""
from __future__ import annotations

import heapq
import random
import time
from bisect import bisect_left, bisect_right
from itertools import accumulate

from memplan.solvers.alloc_instance import PackingInstance, align_up

RANDOM_WALK = 0.25           # chance of a random repair instead of the cheapest one
ROUND_EVICTIONS = 4          # evictions per buffer before a round is wiped (major backtrack)


class RepairSearch:
    """Min-conflicts packing of one instance (see the module docstring).

    The random state and the descent step persist between calls, so
    :meth:`lower` can be run in slices that resume where the last one stopped.
    """

    def __init__(self, instance: PackingInstance, seed: int = 0, max_evictions: int = 10_000):
        self.instance = instance
        n = len(instance)
        size, lo, hi = instance.sizes, instance.lowers, instance.uppers
        self.tier = [(lo[i], lo[i] - hi[i], -size[i], i) for i in range(n)]
        self.weight = [size[i] * (hi[i] - lo[i]) for i in range(n)]
        self.max_evictions = max_evictions
        self.rng = random.Random(seed)
        self.step: int | None = None
        self.attempts = 0
        self.evictions = 0

    def pack(self, capacity: int, deadline: float) -> list[int] | None:
        """A packing of height ``<= capacity``, or None once the eviction budget or ``deadline`` runs out."""
        inst = self.instance
        n = len(inst)
        size, nbrs, alignment, tier = inst.sizes, inst.neighbours, inst.alignment, self.tier
        self.attempts += 1
        if any(s > capacity for s in size):
            return None
        evicted = [0] * n
        offsets = [-1] * n
        per_round = min(self.max_evictions, ROUND_EVICTIONS * n)
        spent = 0
        while True:
            queue = [(-evicted[i],) + tier[i] for i in range(n)]
            heapq.heapify(queue)
            round_spent = pops = 0
            while queue:
                entry = heapq.heappop(queue)
                i = entry[-1]
                if offsets[i] >= 0 or entry[0] != -evicted[i]:
                    continue                      # stale entry: placed or re-queued since
                pops += 1
                if pops % 256 == 0 and time.monotonic() > deadline:
                    self.evictions += spent + round_spent
                    return None
                s = size[i]
                taken = [(o, o + size[j], j) for j in nbrs[i] if (o := offsets[j]) >= 0]
                taken.sort()
                offset = _lowest_fit(taken, s, alignment)
                if offset + s > capacity:
                    offset = self._repair_offset(taken, s, capacity)
                    for a, b, j in taken:
                        if a < offset + s and offset < b:
                            offsets[j] = -1
                            evicted[j] += 1
                            heapq.heappush(queue, (-evicted[j],) + tier[j])
                            round_spent += 1
                    if spent + round_spent > self.max_evictions or time.monotonic() > deadline:
                        self.evictions += spent + round_spent
                        return None
                    if round_spent > per_round:
                        break                     # major backtrack: wipe and rebuild
                offsets[i] = offset
            spent += round_spent
            if not queue:
                self.evictions += spent
                return offsets
            offsets = [-1] * n

    def _repair_offset(self, taken: list[tuple[int, int, int]], s: int, capacity: int) -> int:
        """Where to force ``s`` bytes among the blockers ``taken``: under the lightest set to evict (or at random)."""
        alignment = self.instance.alignment
        if alignment == 1:
            candidates = {b for _, b, _ in taken if b + s <= capacity}
            candidates.update(a - s for a, _, _ in taken if a > s)
        else:
            candidates = {top for top in (align_up(b, alignment) for _, b, _ in taken) if top + s <= capacity}
            candidates.update(under for under in ((a - s) // alignment * alignment for a, _, _ in taken)
                              if under > 0)
        candidates.add(0)
        ordered = sorted(candidates)
        if self.rng.random() < RANDOM_WALK:
            return ordered[self.rng.randrange(len(ordered))]
        # weight of the blockers overlapping [c, c + s): those with a bottom below c + s minus those with a top <= c
        weight = self.weight
        by_top = sorted((b, weight[j]) for _, b, j in taken)
        bottoms, tops = [a for a, _, _ in taken], [b for b, _ in by_top]
        below_top = [0, *accumulate(weight[j] for _, _, j in taken)]
        below_bottom = [0, *accumulate(w for _, w in by_top)]
        best, best_key = 0, None
        for c in ordered:
            k0, k1 = bisect_left(bottoms, c + s), bisect_right(tops, c)
            key = (below_top[k0] - below_bottom[k1], k0 - k1, c)
            if best_key is None or key < best_key:
                best, best_key = c, key
        return best

    def lower(self, offsets: list[int], floor: int, stop_at: int, deadline: float,
              fixed_capacity: bool = False) -> tuple[list[int], list[str]]:
        """Packings lower than ``offsets`` until ``deadline``; returns the lowest and a log line per success.

        Each attempt packs below the best height so far by the current step,
        never below ``floor`` (a proven bound). It stops once the height is
        ``<= stop_at``. With ``fixed_capacity``, every attempt is at ``stop_at``.
        """
        inst = self.instance
        height = inst.height(offsets)
        log: list[str] = []
        if self.step is None:
            self.step = max((height - floor) // 16, 1)
        while height > max(stop_at, floor) and time.monotonic() < deadline:
            target = stop_at if fixed_capacity else max(floor, height - self.step)
            found = self.pack(target, deadline)
            if found is None:
                self.step = max(self.step // 2, 1)
                continue
            offsets, height = found, inst.height(found)
            log.append(f"repair packed in {height} <= {target} (attempt {self.attempts}, {self.evictions} evictions)")
            self.step *= 2
        return offsets, log


def _lowest_fit(taken: list[tuple[int, int, int]], s: int, alignment: int) -> int:
    """The lowest aligned offset where ``s`` bytes clear every interval of ``taken`` (sorted by bottom)."""
    cursor = 0
    if alignment == 1:
        for a, b, _ in taken:
            if cursor + s <= a:
                break
            if b > cursor:
                cursor = b
        return cursor
    for a, b, _ in taken:
        if align_up(cursor, alignment) + s <= a:
            break
        cursor = max(cursor, b)
    return align_up(cursor, alignment)
