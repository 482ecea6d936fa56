"""What a request reads of the configuration, built once per load and replaced whole on reload."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar import auth
from sidecar.config import Config
from sidecar.table import Match, Table


@dataclass(frozen=True, slots=True)
class State:
    """Everything a request reads from the configuration; replaced whole on reload."""

    config: Config
    table: Table
    keys: auth.KeyRing
    models_body: bytes
    created: int
    owners: dict[str, str]  # model group -> the provider of its first deployment

    @classmethod
    def of(cls, config: Config) -> State:
        table = Table(config.deployments)
        created = int(time.time())
        owners = {d.group: d.provider for d in reversed(config.deployments)}
        models = _listing(table.names, created, owners)
        return cls(config, table, auth.KeyRing(config.keys), models, created, owners)

    def models_for(self, key: auth.ClientKey) -> bytes:
        """GET /v1/models as this key sees it: only what it may use."""
        if key.models is None:
            return self.models_body
        names = (n for n in self.table.names if key.allows(n))
        return _listing(names, self.created, self.owners)

    def fallback_names(self, group: str) -> tuple[str, ...]:
        """The groups to try, in order, once `group` is exhausted."""
        router = self.config.router
        names = router.fallbacks.get(group, router.default_fallbacks)
        if not names:
            return ()
        return tuple(name for name in names if name != group)

    def fallbacks(self, names: tuple[str, ...]) -> Iterator[Match]:
        for name in names:
            found = self.table.lookup(name)
            if found is not None:
                yield found

    def model_object(self, model: str) -> bytes | None:
        found = self.table.lookup(model)
        if found is None:
            return None
        return orjson.dumps(_model(model, self.created, self.owners[found.group.name]))


def _model(name: str, created: int, owner: str) -> dict[str, Any]:
    """One model as GET /v1/models shows it, in the OpenAI API's shape."""
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def _listing(names: Iterable[str], created: int, owners: dict[str, str]) -> bytes:
    data = [_model(name, created, owners[name]) for name in names]
    return orjson.dumps({"object": "list", "data": data})
