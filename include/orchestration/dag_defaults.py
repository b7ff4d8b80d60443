"""What every DAG of the pipeline shares, declared once: owner, start date, no catch-up, retries with backoff.

    @dag(..., **dag_arguments(tags=["streaming", "watchdog"], retry_delay=dt.timedelta(seconds=20)))

A DAG passes only what differs from these defaults, with a comment saying why. Imported at parse time: nothing
here touches a network, a connection or a secret.
"""

from __future__ import annotations

import datetime as dt

OWNER = "data-platform"
# Fixed and in the past: with catchup off, the first scheduled run is the latest interval, not a backlog.
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
}


def dag_arguments(*, tags: list[str], **task_defaults) -> dict:
    """Keyword arguments for `@dag`: the shared defaults, the DAG's tags, and `default_args` with overrides."""
    unknown = set(task_defaults) - {"retries", "retry_delay", "retry_exponential_backoff", "max_retry_delay",
                                    "execution_timeout"}
    if unknown:
        raise TypeError(f"dag_arguments: unsupported task defaults {sorted(unknown)}")
    return {"start_date": START_DATE, "catchup": False, "tags": tags,
            "default_args": {**DEFAULT_ARGS, **task_defaults}}
