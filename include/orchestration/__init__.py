"""Operating the streaming job: health classification, the driver lock, checkpoint purge, data-quality checks,
releases and supervision.

Pure decisions live in their own functions (health, purge planning, quality verdicts, failure causes, backoff)
so they are unit-tested without services; the I/O around them is kept thin. Nothing here is imported by a DAG
file at parse time except names and small dataclasses.
"""
