"""Reads a Structured Streaming checkpoint: the last committed batch and its Kafka offsets.

Spark tracks its Kafka position in the checkpoint, not in a consumer group. `offsets/<n>` is written when batch n
is planned (a version line, a metadata line, then one JSON line per source: `{"topic": {"partition": offset}}`,
the offsets the batch reads up to); `commits/<n>` appears once the batch's sinks succeeded. The newest batch with
both is what the query has durably consumed, and the commit file's mtime is when that happened.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# topic -> partition -> next offset to read
Offsets = dict[str, dict[int, int]]


@dataclass(frozen=True)
class CommittedBatch:
    batch_id: int
    offsets: Offsets
    committed_at: dt.datetime


def _batch_ids(folder: Path) -> list[int]:
    # Spark writes `<n>` atomically via a hidden temp file and a rename; only bare numbers are complete.
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def parse_offset_file(text: str) -> Offsets:
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v"):
        raise ValueError(f"not a Spark offset log entry: {text[:80]!r}")
    offsets: Offsets = {}
    for line in lines[2:]:
        if not line.strip() or line.strip() == "-":
            continue
        for topic, partitions in json.loads(line).items():
            offsets.setdefault(topic, {}).update({int(p): int(o) for p, o in partitions.items()})
    return offsets


def last_committed_batch(location: Path) -> CommittedBatch | None:
    """The newest committed batch of the query checkpointed at `location`, or None if it never committed one."""
    committed = set(_batch_ids(location / "commits"))
    planned = [b for b in _batch_ids(location / "offsets") if b in committed]
    if not planned:
        return None
    batch_id = planned[-1]
    commit_file = location / "commits" / str(batch_id)
    return CommittedBatch(
        batch_id=batch_id,
        offsets=parse_offset_file((location / "offsets" / str(batch_id)).read_text()),
        committed_at=dt.datetime.fromtimestamp(commit_file.stat().st_mtime, dt.timezone.utc),
    )


def kafka_lag(topic: str, end_offsets: Mapping[int, int], committed: CommittedBatch | None) -> int | None:
    """Messages in `topic` the query has not committed yet; None when it never committed (start unknown)."""
    if committed is None:
        return None
    done = committed.offsets.get(topic, {})
    return sum(max(0, end - done.get(partition, 0)) for partition, end in end_offsets.items())
