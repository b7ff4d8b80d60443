"""The MCP server as a subprocess over stdio, driven by the SDK's real client against the local stack.

The server gets databases, a topic and an index prefix of the test's own through its settings, so its tools act
on nothing but what this test created."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from kafka import KafkaConsumer
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from include.entities import LEAD
from include.extract.demo_data import DemoSize, generate
from include.settings import REPO_ROOT

TOOLS = {"inject_event", "sync_leads_to_kafka", "get_supabase_stats", "pipeline_status", "search_leads"}


@pytest.fixture
def seeded(settings, isolated_stack, pg_connect):
    """The isolated stack with 40 demo leads in its source database."""
    generate(pg_connect(isolated_stack["PIPELINE_PG_SOURCE_DB"]), DemoSize(leads=40), seed=7)
    return isolated_stack


def _structured(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content.get("result", result.structured_content)
    return json.loads(result.content[0].text)


async def _session(environment: dict, calls):
    # The SDK passes only a minimal environment to the server: hand it every setting of this run explicitly.
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "include.pipeline_mcp"],
                                       env={**os.environ, **environment}, cwd=str(REPO_ROOT))
    async with Client(parameters, read_timeout_seconds=120) as client:
        return await calls(client)


def test_mcp_tools_against_the_local_stack(settings, seeded):
    async def calls(client):
        listed = {tool.name for tool in (await client.list_tools()).tools}
        stats = _structured(await client.call_tool("get_supabase_stats", {}))
        synced = _structured(await client.call_tool("sync_leads_to_kafka", {"limit": 25}))
        event = _structured(await client.call_tool("inject_event", {"evento": "clique_botao", "valor": 12.5,
                                                                    "usuario": "joão@exemplo.com.br"}))
        bad_range = await client.call_tool("sync_leads_to_kafka", {"limit": 0})
        bad_type = await client.call_tool("inject_event", {"evento": "x", "valor": "muito", "usuario": "u"})
        status = _structured(await client.call_tool("pipeline_status", {}))
        return listed, stats, synced, event, bad_range, bad_type, status

    listed, stats, synced, event, bad_range, bad_type, status = asyncio.run(_session(seeded, calls))

    assert listed == TOOLS
    assert stats["total_leads"] == 40
    assert synced["status"] == "success" and synced["total_processed"] == 25
    assert event["evento"] == "clique_botao" and event["tipo_evento"] == "evento"
    assert bad_range.is_error and "limit" in bad_range.content[0].text
    assert bad_type.is_error and "valor" in bad_type.content[0].text
    # Nothing was streamed into this test's warehouse: the verdict must say so, not pass.
    assert status["dq_passed"] is False and status["dq_reasons"]
    assert {row["entity"] for row in status["counts"]} == {"lead", "chat_session", "evento"}
    lead_counts = next(row for row in status["counts"] if row["entity"] == "lead")
    assert lead_counts["source_rows"] == 40 and lead_counts["postgres_rows"] == 0
    # Validator errors are a count of their own, apart from the dead letters of bad messages.
    assert status["validator_errors"] == status["dead_letters_by_reason"].get("validator_error", 0)

    consumer = KafkaConsumer(seeded["PIPELINE_KAFKA_TOPIC"], bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=20_000, group_id=None)
    published = []
    for message in consumer:
        published.append(json.loads(message.value))
        if len(published) == 26:
            break
    consumer.close()
    assert sorted(m["tipo_evento"] for m in published) == ["evento"] + ["lead"] * 25


def test_search_leads_finds_accented_names(isolated_stack, es):
    index = f"{isolated_stack['PIPELINE_STREAM_ES_INDEX_PREFIX']}_{LEAD.index}"
    es.index(index=index, id="11111111-1111-1111-1111-111111111111",
             document={"id": "11111111-1111-1111-1111-111111111111", "nome": "Conceição Araújo",
                       "email": "conceicao@exemplo.com.br", "nome_empresa": "Padaria Pão Quente"})
    es.index(index=index, id="22222222-2222-2222-2222-222222222222",
             document={"id": "22222222-2222-2222-2222-222222222222", "nome": "Marcos Lima"})
    es.indices.refresh(index=index)

    async def calls(client):
        return (_structured(await client.call_tool("search_leads", {"query": "Conceição", "limit": 5})),
                await client.call_tool("search_leads", {"query": ""}))

    found, empty = asyncio.run(_session(isolated_stack, calls))
    assert found["total"] == 1
    assert found["leads"][0]["nome"] == "Conceição Araújo"
    assert empty.is_error and "query" in empty.content[0].text
