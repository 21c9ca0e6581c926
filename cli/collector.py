"""Python's cyclic garbage collector, set for processes that load Dagster and the code location.

CPython starts a collection of the youngest generation after every 700 new container objects, and
a full collection after every 100 of those. A process that imports Dagster and the code location
(~2,400 modules) and then builds a run over thousands of faces creates millions of long-lived
objects, and each full collection walks all of them again: measured on a retrain with nothing new
(5,700 faces), 930 collections took 0.9-1.0 s of its 7-8 s, while finding almost nothing to free.

:func:`collect_less_often` collects the youngest generation after every :data:`YOUNG_THRESHOLD`
new objects instead (mypy does the same, for the same reason): 9 collections, 0.2 s, on that retrain.
Objects without reference cycles (arrays, images, tables) are still freed the moment their last
reference goes; only garbage in cycles waits, for at most that many allocations.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 20)


def collect_less_often() -> None:
    """Raise the collector's thresholds, unless the process already set a higher first one."""
    if gc.get_threshold()[0] < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
