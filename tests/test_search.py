"""The bisection both int8 plans use to find the fewest operations kept in float that meet their target."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossonnx.exporter.search import fewest_that_meet


@given(
    ladder=st.lists(st.integers(0, 64), min_size=1, max_size=12, unique=True).map(sorted),
    threshold=st.integers(0, 70),
    most_first=st.booleans(),
)
def test_it_finds_the_fewest_that_meet_in_few_trials(ladder: list[int], threshold: int, most_first: bool) -> None:
    calls: list[int] = []

    def meets(keep: int) -> bool:
        calls.append(keep)
        return keep >= threshold

    fewest_that_meet(ladder, meets, most_first)
    meeting = [k for k in ladder if k >= threshold]
    if meeting:
        assert min(k for k in calls if k >= threshold) == meeting[0]  # the fewest that meets was tried
    else:
        assert calls == [ladder[-1]] if most_first else len(calls) <= 2  # a miss everywhere costs one or two
    assert len(calls) == len(set(calls)) and len(calls) <= 2 + math.ceil(math.log2(len(ladder)))


def test_the_first_trial_is_the_end_it_starts_from() -> None:
    for most_first, first in ((True, 9), (False, 0)):
        calls: list[int] = []
        fewest_that_meet([0, 3, 9], lambda k, calls=calls: calls.append(k) or True, most_first)
        assert calls[0] == first
    with pytest.raises(ValueError, match="empty"):
        fewest_that_meet([], lambda k: True, most_first=True)
