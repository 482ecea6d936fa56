"""The keys clients present: general_settings.master_key and sidecar_settings.keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sidecar import auth
from sidecar.auth import ClientKey
from sidecar.config.values import resolve, secret
from sidecar.deployment import ConfigError


def all_keys(
    general: Mapping[str, Any], raw: Any, env: Mapping[str, str], warnings: list[str]
) -> list[ClientKey]:
    """The master key (general_settings, the rest of which this gateway ignores) first, then
    sidecar_settings.keys (`raw`); no two may share a secret."""
    keys: list[ClientKey] = []
    for key, value in general.items():
        if key == "master_key":
            if value is not None:
                master_key = secret(
                    resolve(value, env, "general_settings.master_key"),
                    "general_settings.master_key",
                )
                if not master_key:
                    raise ConfigError("general_settings.master_key", "must not be empty")
                keys.append(ClientKey("master", auth.digest(master_key)))
        else:
            warnings.append(f"general_settings.{key}: not used by this gateway; ignored")
    keys += client_keys(raw, env)
    seen: dict[bytes, str] = {}
    for client_key in keys:
        if client_key.digest in seen:
            raise ConfigError(
                "sidecar_settings.keys",
                f"'{client_key.name}' has the same secret as '{seen[client_key.digest]}'",
            )
        seen[client_key.digest] = client_key.name
    return keys


def client_keys(raw: Any, env: Mapping[str, str]) -> list[ClientKey]:
    """sidecar_settings.keys: [{name, key, models?, rpm?, tpm?, max_budget?,
    budget_duration?}, ...]."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(
            "sidecar_settings.keys", "must be a list of {name, key, models, rpm, tpm}"
        )
    keys = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"sidecar_settings.keys[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, "must be a mapping with name and key")
        for field_name in item:
            if field_name not in FIELDS:
                raise ConfigError(
                    f"{where}.{field_name}", f"unknown key (known: {', '.join(FIELDS)})"
                )
        name = item.get("name")
        if not isinstance(name, str) or not name or name == "master" or name in names:
            raise ConfigError(f"{where}.name", "must be a unique name other than 'master'")
        names.add(name)
        plain = secret(resolve(item.get("key"), env, f"{where}.key"), f"{where}.key")
        if len(plain) < 8:
            raise ConfigError(f"{where}.key", "must be at least 8 characters")
        models = item.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
        ):
            raise ConfigError(f"{where}.models", "must be a list of model names ('*' allowed)")
        limits = {}
        for limit in ("rpm", "tpm"):
            value = item.get(limit)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigError(f"{where}.{limit}", "must be a positive whole number")
            limits[limit] = value
        max_budget = _budget(item.get("max_budget"), f"{where}.max_budget")
        duration = item.get("budget_duration")
        if duration is not None:
            if max_budget is None:
                raise ConfigError(f"{where}.budget_duration", "needs max_budget beside it")
            duration = duration_seconds(duration, f"{where}.budget_duration")
        keys.append(
            ClientKey(
                name,
                auth.digest(plain),
                None if models is None else auth.patterns(models),
                limits["rpm"],
                limits["tpm"],
                tuple(models or ()),
                max_budget,
                duration,
            )
        )
    return keys


FIELDS = ("name", "key", "models", "rpm", "tpm", "max_budget", "budget_duration")
# LiteLLM's durations: a whole number and s, m (minutes), h or d; and 1mo, a calendar month
# (as 30d is: budgets.period_of).
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])|(1mo)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: Any, where: str) -> float:
    found = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ConfigError(where, "must be a duration as LiteLLM writes it: 30s, 10m, 1h, 30d, 1mo")
    if found.group(3):
        return 30 * 86400.0
    return float(int(found.group(1)) * _UNIT[found.group(2)])


def _budget(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # YAML reads 2e-05 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(where, "must be a number of USD above 0") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(where, "must be a number of USD above 0")
    if value == float("inf"):
        raise ConfigError(where, "must be a finite number of USD")
    return float(value)
