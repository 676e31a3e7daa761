"""``dispatcher.yielding.Yield``: the turns SES events get while the process is sending, on a
clock the test moves; and ``Slots.sending_within``, what "sending" means."""

from __future__ import annotations

import pytest

from dispatcher.sending import Slots
from dispatcher.yielding import Yield


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_waits_while_the_process_is_not_sending() -> None:
    pacing = Yield(lambda: False, rate=10, max_hold=1, clock=Clock())
    assert [pacing.turn() for _ in range(100)] == [0.0] * 100


def test_while_sending_turns_are_spaced_at_the_rate_in_arrival_order() -> None:
    clock = Clock()
    pacing = Yield(lambda: True, rate=10, max_hold=1, clock=clock)
    assert [pacing.turn() for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    clock.now += 0.25  # time passes: the next turn is 0.4 - 0.25 from now
    assert pacing.turn() == pytest.approx(0.15)


def test_no_turn_is_further_than_the_longest_hold() -> None:
    clock = Clock()
    pacing = Yield(lambda: True, rate=10, max_hold=0.5, clock=clock)
    waits = [pacing.turn() for _ in range(20)]
    assert waits[:6] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert waits[6:] == [0.0] * 14  # the hold is full: admitted at once, never refused
    assert max(waits) <= 0.5


def test_the_turns_follow_whether_the_process_sends() -> None:
    clock, sending = Clock(), [True]
    pacing = Yield(lambda: sending[0], rate=2, max_hold=5, clock=clock)
    assert [pacing.turn() for _ in range(3)] == pytest.approx([0.0, 0.5, 1.0])
    sending[0] = False
    assert pacing.turn() == 0.0


def test_rate_zero_never_holds() -> None:
    pacing = Yield(lambda: True, rate=0, max_hold=1, clock=Clock())
    assert [pacing.turn() for _ in range(10)] == [0.0] * 10


async def test_admit_waits_for_the_turn() -> None:
    clock = Clock()
    pacing = Yield(lambda: True, rate=1000, max_hold=1, clock=clock)
    await pacing.admit()  # the first turn is now
    await pacing.admit()  # the second 1 ms later: a real (short) wait
    assert pacing.turn() == pytest.approx(0.002)


async def test_slots_say_sending_from_the_first_taken_until_a_grace_after_the_last_given() -> None:
    slots = Slots(2)
    assert not slots.sending_within(10)  # never used
    assert slots.take_now(1) == 1
    assert slots.sending_within(0)
    await slots.take()
    slots.give(1)
    assert slots.sending_within(0)  # one still in flight
    slots.give(1)
    assert slots.sending_within(10)  # ended just now
    assert not slots.sending_within(0)
