"""Model groups: the name a client sends, mapped to weighted engine deployments (versions)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.config import ModelGroupConfig
from serving.engines.base import Engine


class UnknownModel(LookupError):
    """The client named a model group that is not configured."""


@dataclass(frozen=True)
class ModelGroup:
    """A model group resolved to live engines, with cumulative weights for a weighted pick."""

    name: str
    engines: tuple[Engine, ...]
    weights: tuple[float, ...]
    _cumulative: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        total, acc = 0.0, []
        for w in self.weights:
            total += w
            acc.append(total)
        object.__setattr__(self, "_cumulative", tuple(acc))

    def pick(self) -> Engine:
        """An engine chosen by weight (the only one, when the group has one)."""
        if len(self.engines) == 1:
            return self.engines[0]
        return random.choices(self.engines, cum_weights=self._cumulative, k=1)[0]


class GroupRouter:
    """Resolves model-group names to engines; swapped atomically on reconfigure."""

    def __init__(self, engines: Mapping[str, Engine], groups: Mapping[str, ModelGroupConfig]):
        self.engines = dict(engines)
        self.groups: dict[str, ModelGroup] = {}
        self.update(groups)

    def update(self, groups: Mapping[str, ModelGroupConfig], engines: Mapping[str, Engine] | None = None) -> None:
        """Replace the group table (e.g. new traffic weights) and, when given, the engine table (an engine added
        for a canary, a retired one removed); a group naming an unknown engine is an error and changes nothing."""
        engines = self.engines if engines is None else dict(engines)
        table = {}
        for name, group in groups.items():
            members = [m for m in group.engines if m.weight > 0]
            missing = [m.engine for m in members if m.engine not in engines]
            if missing:
                raise ValueError(f"model group {name!r} names engines that are not deployed: {missing}")
            table[name] = ModelGroup(name, tuple(engines[m.engine] for m in members), tuple(m.weight for m in members))
        self.engines, self.groups = engines, table

    def route(self, model: str) -> tuple[ModelGroup, Engine]:
        """The group a client named and the engine that serves this request."""
        group = self.groups.get(model)
        if group is None:
            raise UnknownModel(model)
        return group, group.pick()
