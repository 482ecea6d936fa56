"""The shared counter's arithmetic (sidecar/shared/tally.py), without Redis: minutes on
Redis's clock, what is sent and what comes back, a failed sync, the local share."""

from __future__ import annotations

from sidecar.shared.tally import Slot, Tally

T0 = 60.0 * 1000  # the start of minute 1000


def test_ours_and_everyones_counts_meet_at_the_limit() -> None:
    tally = Tally("key:a", 1000)
    for _ in range(3):
        tally.add(T0 + 1, 1, 10)
    assert not tally.full(T0 + 1, 5, None)
    sent = tally.outgoing()
    assert sent == [(1000, 3, 30)]
    # Redis answers with everyone's: our 3 and another instance's 2.
    tally.synced(1000, Slot(5, 50), Slot())
    assert tally.full(T0 + 2, 5, None)
    assert tally.full(T0 + 2, None, 50)
    assert not tally.full(T0 + 2, 6, 51)
    assert tally.outgoing() == []  # nothing new: nothing sent twice


def test_what_is_on_its_way_counts_until_redis_has_it() -> None:
    tally = Tally("key:a", 1000)
    tally.add(T0, 4, 0)
    tally.outgoing()  # sending, not yet answered
    assert tally.full(T0, 4, None)  # still counted while in flight, and after a failed sync
    assert tally.outgoing() == []  # the sync sends that batch again itself, never merged
    tally.add(T0, 1, 0)
    assert tally.outgoing() == [(1000, 1, 0)]
    tally.synced(1000, Slot(5, 0), Slot())  # Redis has both
    assert tally.full(T0, 5, None) and not tally.full(T0, 6, None)


def test_a_correction_never_takes_back_more_than_the_minute_holds_of_ours() -> None:
    tally = Tally("key:a", 1000)
    tally.add(T0 + 59, 1, 250_000)  # an estimate, in minute 1000
    tally.outgoing()
    tally.add(T0 + 61, 1, 500)  # another request, in minute 1001
    tally.add(T0 + 62, 0, -249_000)  # the first one's usage came in minute 1001
    assert tally.cur.own.tokens == 0
    assert tally.outgoing() == [(1001, 1, 0)]  # never a negative count for the others to see


def test_the_previous_minute_weighs_by_what_is_left_of_it() -> None:
    tally = Tally("key:a", 1000)
    tally.synced(1000, Slot(10, 0), Slot())
    # Half-way into the next minute, half of the previous minute's 10 still counts.
    assert tally.full(T0 + 90, 5, None)
    assert not tally.full(T0 + 90, 6, None)
    # Two minutes on, nothing of it does.
    assert not tally.full(T0 + 180, 1, None)


def test_redis_away_compares_ours_alone_with_our_share() -> None:
    tally = Tally("key:a", 1000)
    tally.synced(1000, Slot(8, 0), Slot())  # the others' 8, before Redis went away
    tally.add(T0 + 1, 2, 0)
    assert tally.full(T0 + 1, 10, None)  # everyone's: 10
    assert not tally.full(T0 + 1, 10, None, share=0.5)  # ours: 2 of our 5
    for _ in range(3):
        tally.add(T0 + 1, 1, 0)
    assert tally.full(T0 + 1, 10, None, share=0.5)


def test_a_late_answer_for_a_minute_gone_keeps_the_new_minute() -> None:
    tally = Tally("key:a", 1000)
    tally.add(T0 + 59, 1, 0)
    tally.outgoing()
    tally.add(T0 + 61, 2, 0)  # minute 1001 has begun meanwhile
    tally.synced(1000, Slot(7, 0), Slot())  # the answer, from minute 1000
    assert tally.minute == 1001
    assert tally.prev.synced == Slot(7, 0)
    assert tally.cur.pending == Slot(2, 0)


def test_a_correction_of_tokens_goes_with_the_next_sync() -> None:
    tally = Tally("key:a", 1000)
    tally.add(T0, 1, 100)
    tally.add(T0, 0, -60)  # the reply's usage: 40 tokens, not 100
    assert tally.outgoing() == [(1000, 1, 40)]
