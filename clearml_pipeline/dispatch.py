"""The streaming router's dispatch policy: which worker of a stage gets the next waiting row.

Two rules, each measured (bench, fixtures, 2 cores, replicas 1:1:2, 48 requests):
- whole batches: rows that arrive together (an upstream batch) go to one worker until its batch is full, not dealt
  out one by one, so each replica still gets whole batches. Dealt one by one, the two speech synthesis replicas
  ran batches of 4 at 0.28 CPU-s per item, against 0.17-0.19 for batches of 8.
- a worker holds at most `most` rows, the batch it is working on included (StreamingOptions.inbox_batches; 1 by
  default): the rest wait with the router for whichever worker frees first. Queued ahead in a busy replica's inbox,
  the last batch of a run waited there 0.3 s while the other replica had already finished, then ran alone for
  1.3 s with a core idle: one replica delivered 32 rows, the other 16.
"""

from __future__ import annotations

from collections.abc import Sequence

from clearml_pipeline.stream_records import Worker


def choose(ready: Sequence[Worker], filling: Worker | None, size: int, most: int) -> Worker | None:
    """The worker the next row goes to: `filling` (the worker the last row went to) until its batch of `size`
    rows is whole, then the one holding the fewest rows; None when that one already holds `most`."""
    if filling is None or filling not in ready or len(filling.held) % size == 0:
        filling = min(ready, key=lambda w: len(w.held), default=None)
    return filling if filling is not None and len(filling.held) < most else None
