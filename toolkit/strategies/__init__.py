"""Strategies: where a plan's new vectors live until cutover and how they are swapped in.

`strategy_for(plan)` is the one question every phase asks; `places(plan, phase)` answers the
most common one ("which table and column holds which model now"). The implementations are
imported on first use, so phase modules can import this package without import cycles.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from toolkit.errors import BadInput
from toolkit.strategies.base import DropResult, IndexTarget, Place, Places, Strategy, Write

if TYPE_CHECKING:
    from toolkit.plan import Plan

# name -> "module:class"
_REGISTRY = {"column": "toolkit.strategies.column:ColumnStrategy", "copy": "toolkit.strategies.copy:CopyStrategy"}
_LOADED: dict[str, Strategy] = {}

__all__ = ["DropResult", "IndexTarget", "Place", "Places", "Strategy", "STRATEGIES", "Write", "places", "strategy_for",
           "strategy_named"]

STRATEGIES = tuple(_REGISTRY)


def strategy_named(name: str) -> Strategy:
    if name not in _REGISTRY:
        raise BadInput(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name not in _LOADED:
        module, _, cls = _REGISTRY[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def strategy_for(plan: "Plan") -> Strategy:
    return strategy_named(plan.strategy)


def places(plan: "Plan", phase: str) -> Places:
    """Which table and column holds which model's vectors for `plan` in `phase`."""
    return strategy_for(plan).places(plan, phase)
