"""The search both int8 plans share: the fewest operations kept in float that meet an accuracy target."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def fewest_that_meet(ladder: Sequence[int], meets: Callable[[int], bool], most_first: bool) -> None:
    """Call ``meets(k)`` on values of ``ladder`` (ascending: how many operations stay float) to find the smallest
    that meets the target, by bisection: each call quantizes and scores the whole model, so a large model pays for
    every one. It assumes that keeping more in float never hurts.

    ``most_first`` tries the largest first, so that a target even it misses costs one call (int8-static on most
    models); otherwise the smallest first, so that a target met with nothing in float costs one call (ONNX Runtime
    int8 on most models). The caller records each call's result and keeps the best.
    """
    if not ladder:
        raise ValueError("an empty ladder")
    first, last = (len(ladder) - 1, 0) if most_first else (0, len(ladder) - 1)
    met_first = meets(ladder[first])
    if len(ladder) == 1 or met_first != most_first:
        return  # nothing in float meets it, or even the most in float misses it
    if meets(ladder[last]) == most_first:
        return  # the other end settles it: nothing in float meets, or the most in float misses
    low, high = 0, len(ladder) - 1  # ladder[low] misses, ladder[high] meets
    while high - low > 1:
        middle = (low + high) // 2
        if meets(ladder[middle]):
            high = middle
        else:
            low = middle
