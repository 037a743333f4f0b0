"""The temporal engine: any aggregate, or all of them, as of any time — bitemporal and vectorised.

- :mod:`.reducers`: declarative state fields (``Last``, ``First``, ``Sum``, ``Count``, ``Min``, ``Max``
  over ``Json``, ``Const`` and ``Column`` values) compiled to one DuckDB query;
- :mod:`.states`: ``states`` of every aggregate of a type (vectorised, or folded when a class declares no
  reducers);
- :mod:`.checkpoints`: columnar state checkpoints, so ``states`` at any time reads one checkpoint plus
  the events after it;
- :mod:`.history`: ``events_between``, ``system_state`` and ``diff``;
- :mod:`.bounds`: the bitemporal bounds and :class:`Watermark`.
"""

from __future__ import annotations

from .bounds import Bounds, Watermark, make_bounds
from .reducers import Column, Const, Count, First, Json, Last, Max, Min, Reducer, Reducers, Sum
from .states import PerformanceWarning

__all__ = [
    "Bounds",
    "Column",
    "Const",
    "Count",
    "First",
    "Json",
    "Last",
    "Max",
    "Min",
    "PerformanceWarning",
    "Reducer",
    "Reducers",
    "Sum",
    "Watermark",
    "make_bounds",
]
