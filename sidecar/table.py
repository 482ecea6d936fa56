"""Model name -> the deployments that serve it. Pure decisions; no I/O.

Exact names win over patterns; among patterns, the one with the longest literal part wins, so
'openai/gpt-*' beats 'openai/*', which beats '*'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.deployment import Deployment
from sidecar.routes import MODEL_ENDPOINTS, Endpoint


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    deployments: tuple[Deployment, ...]
    prefix: str = ""  # for patterns: the text before and after the '*'
    suffix: str = ""
    serves: frozenset[Endpoint] = MODEL_ENDPOINTS  # what at least one of its deployments serves

    @classmethod
    def of(
        cls, name: str, deployments: tuple[Deployment, ...], prefix: str = "", suffix: str = ""
    ) -> Group:
        serves = frozenset(e for d in deployments for e in d.endpoints)
        return cls(name, deployments, prefix, suffix, serves)

    def wildcard(self, model: str) -> str | None:
        """The part of `model` this pattern's '*' matched, or None when it does not match."""
        if len(model) <= len(self.prefix) + len(self.suffix):
            return None  # the '*' stands for at least one character
        if model.startswith(self.prefix) and model.endswith(self.suffix):
            return model[len(self.prefix) : len(model) - len(self.suffix)]
        return None


@dataclass(frozen=True, slots=True)
class Match:
    group: Group
    wildcard: str | None  # what a pattern's '*' matched; None for an exact name


class Table:
    """The routing table. Immutable: a reload builds a new one."""

    def __init__(self, deployments: Iterable[Deployment]) -> None:
        by_name: dict[str, list[Deployment]] = {}
        for d in deployments:
            by_name.setdefault(d.group, []).append(d)
        self.exact: dict[str, Match] = {}
        patterns: list[Group] = []
        for name, members in by_name.items():
            if "*" in name:
                prefix, _, suffix = name.partition("*")
                patterns.append(Group.of(name, tuple(members), prefix, suffix))
            else:
                self.exact[name] = Match(Group.of(name, tuple(members)), None)
        patterns.sort(key=lambda g: len(g.prefix) + len(g.suffix), reverse=True)
        self.patterns = tuple(patterns)
        self.names = tuple(by_name)

    def lookup(self, model: str) -> Match | None:
        found = self.exact.get(model)
        if found is not None:
            return found
        for group in self.patterns:
            part = group.wildcard(model)
            if part is not None:
                return Match(group, part)
        return None
