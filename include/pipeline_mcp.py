"""MCP server for the pipeline (successor of the old `superset_mcp`), over stdio.

Tools: `inject_event`, `sync_leads_to_kafka`, `get_supabase_stats`, `pipeline_status`, `search_leads`. Inputs are
validated from their annotations by the SDK (bad types or ranges come back as tool errors naming the argument);
service errors propagate as tool errors too, never as a "success" carrying an error string.

Run: `.state/venv/bin/python -m include.pipeline_mcp` (see README for registering it in an MCP client).
"""

from __future__ import annotations

import math
from contextlib import closing
from typing import Annotated

from pydantic import Field

from mcp.server import MCPServer

server = MCPServer(
    "eventos-pipeline",
    instructions="Operate the Supabase -> Kafka -> Spark -> Postgres/Elasticsearch pipeline: inject events, "
                 "sync leads, read source statistics, check pipeline health and search leads.",
)

SEARCH_FIELDS = ("nome^3", "email^2", "nome_empresa^2", "nome_projeto", "interesse", "origem", "utm_campaign")


@server.tool()
def inject_event(
    evento: Annotated[str, Field(min_length=1, max_length=200, description="event name, e.g. 'page_view'")],
    valor: Annotated[float, Field(description="numeric value of the event")],
    usuario: Annotated[str, Field(min_length=1, max_length=200, description="who caused it")],
) -> dict:
    """Publish one generic event on topic `eventos`; the streaming job lands it in `eventos_raw`."""
    from include.extract.service import inject_event as publish

    if not math.isfinite(valor):
        raise ValueError("valor must be a finite number")
    return publish(evento.strip(), valor, usuario.strip())


@server.tool()
def sync_leads_to_kafka(
    limit: Annotated[int | None, Field(ge=1, le=1_000_000, description="at most this many leads")] = None,
    hours_ago: Annotated[float | None, Field(gt=0, le=24 * 366, description="re-publish leads changed in the "
                                                                           "last N hours")] = None,
) -> dict:
    """Publish leads changed since the extraction cursor (or in the last `hours_ago` hours) to Kafka."""
    from include.extract.service import sync_leads_to_kafka as sync

    return sync(limit=limit, hours_ago=hours_ago)


@server.tool()
def get_supabase_stats() -> dict:
    """Row counts of the Supabase source: total leads and chat sessions, and those updated in the last 24 h."""
    from include.extract.service import get_supabase_stats as stats

    return stats()


@server.tool()
def pipeline_status() -> dict:
    """Streaming job health (heartbeat, Kafka lag), rows per table vs documents per index, and the DQ verdict."""
    from include.status import pipeline_status as status

    return status()


@server.tool()
def search_leads(
    query: Annotated[str, Field(min_length=1, max_length=200, description="free text: name, e-mail, company…")],
    limit: Annotated[int, Field(ge=1, le=50)] = 10,
) -> dict:
    """Full-text search over the leads index in Elasticsearch, best matches first."""
    from elasticsearch import Elasticsearch

    from include.entities import LEAD
    from include.orchestration.config import StreamOpsConfig

    config = StreamOpsConfig.load()
    with closing(Elasticsearch(config.settings.es_url, request_timeout=30)) as es:
        response = es.search(index=LEAD.index_name(config.es_index_prefix), size=limit,
                             query={"multi_match": {"query": query, "fields": list(SEARCH_FIELDS),
                                                    "lenient": True}})
    hits = response["hits"]
    return {
        "total": hits["total"]["value"],
        "leads": [{"score": hit["_score"], **{k: hit["_source"].get(k) for k in
                                               ("id", "nome", "email", "nome_empresa", "status_lead", "updated_at")}}
                  for hit in hits["hits"]],
    }


def main() -> None:
    server.run()


if __name__ == "__main__":
    main()
