"""Python's cyclic garbage collector around a command's start-up, where it finds nothing to free.

CPython collects its youngest generation after every 700 new container objects, and the whole heap
after every 100 of those (once the heap has grown by a quarter since the last full collection).
Starting a command imports Dagster and the code location (~2,400 modules) and opens the instance:
millions of objects, all alive until the process ends, which each full collection walks again.
Measured on a retrain with nothing new (5,700 faces): about 920 collections took 0.4-0.6 s before
its run began and 0.4 s more during it, while freeing almost nothing.

So a command starts with :func:`collect_less_often` (a collection every 50,000 new objects) and
calls :func:`collect_as_usual` when its start-up is over (a retrain or a recognition: once its
instance is open; any other command: once its module is imported, ``cli.main``): what is loaded by
then is frozen (moved out of the collector's sight, as ``gc.freeze`` does for long-lived servers)
and the usual thresholds come back. The run itself is collected as before, only without walking
the loaded modules: its collections took 0.1 s instead of 0.4 s, and its memory stays the same.
(Raised thresholds kept for a whole retrain held up to 58 MiB more at 10,000 photos: garbage in
reference cycles waited longer.) The code location freezes what it loaded
(:func:`freeze_what_is_loaded`) for the run workers and code servers that import it.
"""

from __future__ import annotations

import gc

STARTUP_THRESHOLDS = (50_000, 20, 20)

_usual: tuple[int, int, int] | None = None
"""The thresholds the process had before :func:`collect_less_often`."""


def collect_less_often() -> None:
    """For a command's start-up: raise the collector's thresholds until :func:`collect_as_usual`."""
    global _usual
    if _usual is None:
        _usual = gc.get_threshold()
    gc.set_threshold(*STARTUP_THRESHOLDS)


def freeze_what_is_loaded() -> None:
    """Keep every object alive now out of later collections: modules, classes, definitions.

    The young generations are collected first, so that recent garbage is not frozen with them (a
    full collection would also free older garbage, for the cost of walking everything once more).
    The collection right after finds nothing left to walk, and resets the collector's count of
    long-lived objects: CPython skips a full collection until a quarter as many again have been
    added since the last one, and that count still held the frozen millions (the run's cyclic
    garbage then waited: 37 MiB more at 10,000 photos).
    """
    gc.collect(1)
    gc.freeze()
    gc.collect()


def collect_as_usual() -> None:
    """The start-up is over: freeze what it loaded, and collect with the usual thresholds again."""
    global _usual
    freeze_what_is_loaded()
    if _usual is not None:
        gc.set_threshold(*_usual)
        _usual = None
