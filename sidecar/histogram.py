"""A Prometheus histogram with fixed buckets: an observation is a bisect and three additions."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

# Seconds: from a cached reply to a long generation.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


# OpenTelemetry's GenAI conventions' advised buckets: tokens, seconds to the first token, and
# seconds a request takes.
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 ... 67108864
FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


class Histogram:
    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[float]] = {}  # labels -> bucket counts, sum, count

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.bounds) + 3)
        series[bisect_left(self.bounds, value)] += 1
        series[-2] += value
        series[-1] += 1

    def samples(self) -> Iterator[tuple[tuple[str, ...], str, float]]:
        """(labels, le, cumulative count) for each bucket, then ('sum', ...) and ('count', ...)."""
        for labels, series in self.series.items():
            running = 0.0
            for bound, count in zip((*self.bounds, float("inf")), series, strict=False):
                running += count
                yield labels, "+Inf" if bound == float("inf") else repr(bound), running
            yield labels, "sum", series[-2]
            yield labels, "count", series[-1]


class PairHistogram(Histogram):
    """Two histograms of one kind under the same labels, observed together (a request's input
    and output tokens): one lookup for both. Its samples carry `kinds` as a last label."""

    __slots__ = ("kinds",)

    def __init__(self, bounds: tuple[float, ...], kinds: tuple[str, str]) -> None:
        super().__init__(bounds)
        self.kinds = kinds

    def observe_pair(self, labels: tuple[str, ...], first: float, second: float) -> None:
        series = self.series.get(labels)
        size = len(self.bounds) + 3
        if series is None:
            series = self.series[labels] = [0.0] * (2 * size)
        series[bisect_left(self.bounds, first)] += 1
        series[size - 2] += first
        series[size - 1] += 1
        series[size + bisect_left(self.bounds, second)] += 1
        series[-2] += second
        series[-1] += 1

    def samples(self) -> Iterator[tuple[tuple[str, ...], str, float]]:
        size = len(self.bounds) + 3
        for labels, both in self.series.items():
            for at, kind in enumerate(self.kinds):
                one = Histogram(self.bounds)
                one.series[(*labels, kind)] = both[at * size : (at + 1) * size]
                yield from one.samples()


def regrouped(histogram: Histogram, key: dict[str, str]) -> Histogram:
    """The same observations under other labels: each series' first label mapped by `key`
    (several may map to one, and are summed)."""
    out = Histogram(histogram.bounds)
    for labels, series in histogram.series.items():
        labels = (key.get(labels[0], labels[0]), *labels[1:])
        into = out.series.get(labels)
        if into is None:
            out.series[labels] = list(series)
        else:
            for i, count in enumerate(series):
                into[i] += count
    return out
