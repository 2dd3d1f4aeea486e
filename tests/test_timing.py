"""The one timer (rissole_trt.timing): comparisons run round by round, so that load hits every variant alike."""
from __future__ import annotations

from rissole_trt.timing import interleave, interleaved_medians, interleaved_within


def test_interleave_calls_each_step_once_per_round_in_turn():
    calls = []
    interleave(3, [lambda i: calls.append(("a", i)), lambda i: calls.append(("b", i))])
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_interleaved_medians_alternate_the_variants_after_their_warm_ups():
    order = []
    medians = interleaved_medians({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 4, warmups=2)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 4
    assert set(medians) == {"a", "b"} and all(seconds >= 0 for seconds in medians.values())


def test_interleaved_within_takes_at_least_its_minimum_of_rounds():
    counts = {"a": 0, "b": 0}

    def call(name):
        counts[name] += 1

    medians = interleaved_within({name: (lambda n=name: call(n)) for name in counts}, budget_s=0.0, min_repeats=3)
    assert set(medians) == {"a", "b"}
    assert counts == {"a": 5, "b": 5}  # one warm-up round, one sizing round, then the 3 timed rounds
