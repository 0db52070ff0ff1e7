"""Model groups: the name a client sends, mapped to weighted engine deployments (versions).

The traffic split of a rollout lives here: weights per engine, a sticky pick per caller (a hash of who is calling,
so a user does not flip between versions), an engine pin for evaluations, and a shadow engine that receives a
mirrored share of the requests.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from serving.config import AdmissionConfig, ModelGroupConfig
from serving.engines.base import Engine


class UnknownModel(LookupError):
    """The client named a model group that is not configured."""


class UnknownEngine(LookupError):
    """A request pinned an engine that is not in traffic in its model group."""


CALLER_KEY: ContextVar[str | None] = ContextVar("serving_caller_key", default=None)
"""Who is calling (set by the gateway per request): the key of sticky picks made anywhere on its behalf."""


def sticky_point(group: str, key: str) -> float:
    """A caller's fixed point in [0, 1) for a group (blake2b of group + key)."""
    digest = hashlib.blake2b(f"{group}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class ModelGroup:
    """A model group resolved to live engines, with cumulative weights for a weighted pick."""

    name: str
    engines: tuple[Engine, ...]
    weights: tuple[float, ...]
    sticky: bool = False
    shadow: Engine | None = None
    shadow_share: float = 0.0
    standby: tuple[Engine, ...] = ()  # members at weight 0: no traffic, reachable by a pin (a challenger's eval)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    _cumulative: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        total, acc = 0.0, []
        for w in self.weights:
            total += w
            acc.append(total)
        object.__setattr__(self, "_cumulative", tuple(acc))

    def capacity(self, engine_capacity: Mapping[str, int], default: int) -> int:
        """Requests the group can serve at once without any engine taking more than its capacity at the traffic
        weights (`engine_capacity`: engine -> sequences across its replicas; `default` for an engine not in it)."""
        total = sum(self.weights)
        if not self.engines or total <= 0:
            return default
        return max(1, int(min(engine_capacity.get(e.name, default) * total / w
                              for e, w in zip(self.engines, self.weights, strict=True))))

    def pick(self, key: str | None = None) -> Engine:
        """An engine chosen by weight (the only one, when the group has one). With `sticky` and a caller `key`,
        the choice is a fixed function of the key: engines own consecutive slices of [0, 1) in member order, so
        when the first engine's share grows (a canary step) its callers stay and only new ones join."""
        if len(self.engines) == 1:
            return self.engines[0]
        if self.sticky and key:
            point = sticky_point(self.name, key) * self._cumulative[-1]
            for engine, edge in zip(self.engines, self._cumulative, strict=True):
                if point < edge:
                    return engine
            return self.engines[-1]
        return random.choices(self.engines, cum_weights=self._cumulative, k=1)[0]

    def pinned(self, name: str) -> Engine:
        """The engine `name` of this group (in traffic or the shadow), for evaluations of one version."""
        for engine in (*self.engines, *self.standby, *((self.shadow,) if self.shadow else ())):
            if engine.name == name:
                return engine
        raise UnknownEngine(name)

    def mirror(self) -> Engine | None:
        """The shadow engine if this request is to be mirrored to it, else None."""
        if self.shadow is None or self.shadow_share <= 0:
            return None
        return self.shadow if random.random() < self.shadow_share else None


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
            standby = [m.engine for m in group.engines if m.weight <= 0]
            wanted = [m.engine for m in group.engines] + ([group.shadow.engine] if group.shadow else [])
            missing = [e for e in wanted if e not in engines]
            if missing:
                raise ValueError(f"model group {name!r} names engines that are not deployed: {missing}")
            shadow = engines[group.shadow.engine] if group.shadow else None
            table[name] = ModelGroup(
                name, tuple(engines[m.engine] for m in members), tuple(m.weight for m in members),
                sticky=group.sticky, shadow=shadow, shadow_share=group.shadow.percent / 100 if group.shadow else 0.0,
                standby=tuple(engines[e] for e in standby), admission=group.admission,
            )
        self.engines, self.groups = engines, table

    def group(self, model: str) -> ModelGroup:
        group = self.groups.get(model)
        if group is None:
            raise UnknownModel(model)
        return group

    def route(self, model: str, key: str | None = None, pin: str | None = None) -> tuple[ModelGroup, Engine]:
        """The group a client named and the engine that serves this request (`pin`: that engine of the group)."""
        group = self.group(model)
        return group, group.pinned(pin) if pin else group.pick(key if key is not None else CALLER_KEY.get())
