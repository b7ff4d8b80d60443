"""The benchmark's events: N mixed messages of about 1 KB on the `eventos` contract, generated once per run.

Leads and chat sessions come from the extraction's demo generator (the same shapes the Supabase stand-in
holds); generic events carry a context object of the size product analytics sends, so the mix averages ~1 KB.
A share of messages are updates: a newer version of an earlier lead or session, keyed like it, so every
measurement has to apply newest-wins. Each message is kept only as its encoded key and value; what every sink
must end up with (the newest version of each id) is tracked beside them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from include.contract import encode, record_message
from include.entities import CHAT_SESSION, ENTITIES, EVENTO, LEAD, SOURCE_POSITION, Entity
from include.extract.cdc import source_position
from include.extract.demo_data import USER_AGENTS, _Generator

# Shares of new records; the rest of the messages are updates of earlier leads and sessions.
NEW_SHARES = ((LEAD, 0.35), (CHAT_SESSION, 0.30), (EVENTO, 0.25))
UPDATE_SHARE = 1.0 - sum(share for _, share in NEW_SHARES)
UPDATABLE = (LEAD, CHAT_SESSION)
HISTORY_DAYS = 120  # how far back records were created

EVENT_NAMES = ("page_view", "clique_whatsapp", "simulacao_financiamento", "formulario_enviado", "download_tabela",
               "agendamento_visita", "chat_iniciado", "video_assistido")
PAGES = ("/", "/imoveis", "/imoveis/apartamentos", "/lancamentos", "/simulador-financiamento", "/contato",
         "/blog/como-usar-o-fgts", "/agendar-visita", "/imoveis/casas/jardim-das-flores")
REFERRERS = ("https://www.google.com/", "https://l.instagram.com/", "https://m.facebook.com/", "android-app://"
             "com.google.android.gm/", "https://www.bing.com/", None)
DEVICES = (("mobile", "Android", "Chrome Mobile"), ("mobile", "iOS", "Mobile Safari"),
           ("desktop", "Windows", "Chrome"), ("desktop", "macOS", "Safari"), ("tablet", "iPadOS", "Mobile Safari"))


@dataclass(frozen=True)
class Message:
    entity: str  # the entity's name in the registry
    key: bytes
    value: bytes


@dataclass
class Dataset:
    messages: list[Message]
    # entity name -> id -> newest version (the version column's ISO-8601 text).
    newest: dict[str, dict[str, str]]
    generation_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def distinct_ids(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.newest.items()}

    @property
    def bytes_total(self) -> int:
        return sum(len(m.value) for m in self.messages)

    def summary(self) -> dict:
        return {
            "events": len(self.messages),
            "by_kind": dict(self.counts),
            "distinct_ids": self.distinct_ids,
            "mean_value_bytes": round(self.bytes_total / max(1, len(self.messages))),
            "generation_s": round(self.generation_s, 2),
        }

    def head(self, count: int) -> Dataset:
        """The first `count` messages, with the newest versions among them."""
        return Dataset(self.messages[:count], newest_versions(self.messages[:count]))


def order_value(entity: Entity, text: str):
    """A message's order as a comparable value: its version's instant, or its source position (as text it sorts)."""
    return dt.datetime.fromisoformat(text) if entity.version_column else text


def newest_versions(messages: list[Message]) -> dict[str, dict[str, str]]:
    newest: dict[str, dict[str, str]] = {entity.name: {} for entity in ENTITIES}
    by_name = {entity.name: entity for entity in ENTITIES}
    for message in messages:
        entity = by_name[message.entity]
        body = json.loads(message.value)
        record_id, version = body[entity.key], body[entity.order_column]
        seen = newest[entity.name].get(record_id)
        if seen is None or order_value(entity, version) >= order_value(entity, seen):
            newest[entity.name][record_id] = version
    return newest


class EventGenerator:
    """Field values follow the seed; ids are random uuids, so two runs never collide."""

    # Updates pick among this many most recent leads and sessions: bounded memory for any N.
    UPDATE_POOL = 50_000

    def __init__(self, seed: int):
        self.now = dt.datetime.now(dt.timezone.utc)
        self.records = _Generator(seed, self.now, history_days=HISTORY_DAYS)
        self.rng = self.records.rng
        # (entity, last encoded value) of recent leads and sessions, so an update starts from the last version;
        # a ring: once full, a new record takes the oldest slot.
        self.updatable: list[tuple[Entity, bytes]] = []
        self.ring_cursor = 0
        self.leads = 0
        # Sessions are ordered by source position (include/entities.py): each message gets the next one.
        self.positions = itertools.count(0x1000)

    def _evento(self) -> dict:
        rng = self.rng
        kind, os_name, browser = rng.choice(DEVICES)
        occurred = self.now - dt.timedelta(seconds=rng.uniform(0, 30 * 86400))
        return {
            EVENTO.key: uuid.UUID(int=rng.getrandbits(128), version=4),
            "evento": rng.choice(EVENT_NAMES),
            "valor": round(rng.uniform(0, 950_000), 2) if rng.random() < 0.6 else None,
            "usuario": f"visitante-{rng.getrandbits(40):010x}",
            EVENTO.version_column: occurred,
            # Beyond the registry's fields: kept whole in eventos_raw.payload, as analytics events carry them.
            "contexto": {
                "pagina": rng.choice(PAGES), "referrer": rng.choice(REFERRERS),
                "sessao": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "dispositivo": {"tipo": kind, "sistema": os_name, "navegador": browser, "user_agent": rng.choice(USER_AGENTS),
                                "tela": rng.choice(("390x844", "412x915", "1920x1080", "1366x768", "820x1180"))},
                "utm": {"source": rng.choice(("google", "instagram", "facebook", "newsletter")),
                        "medium": rng.choice(("cpc", "social", "email", "organic")),
                        "campaign": rng.choice(("lancamento_residencial_aurora", "feirao_da_casa_propria",
                                                "minha_casa_minha_vida", "remarketing_q3"))},
                "geo": {"cidade": rng.choice(("São Paulo", "Belo Horizonte", "Recife", "Florianópolis")),
                        "uf": rng.choice(("SP", "MG", "PE", "SC")), "pais": "Brasil"},
                "experimentos": {f"exp_{n}": rng.choice(("controle", "variante_a", "variante_b")) for n in range(10)},
                "itens_vistos": [f"imovel-{rng.randint(1000, 99999)}" for _ in range(rng.randint(8, 20))],
                "web_vitals": {"ttfb_ms": rng.randint(40, 1800), "fcp_ms": rng.randint(300, 4000),
                               "lcp_ms": rng.randint(600, 8000), "inp_ms": rng.randint(20, 900),
                               "cls": round(rng.uniform(0, 0.5), 3)},
                "tempo_na_pagina_ms": rng.randint(300, 600_000),
                "rolagem_pct": rng.randint(0, 100),
            },
        }

    def _updated(self, index: int) -> tuple[Entity, dict]:
        """A newer version of a recent lead (a later timestamp) or session (the next position), with new counts."""
        entity, previous = self.updatable[index]
        row = json.loads(previous)
        if entity is LEAD:
            last = dt.datetime.fromisoformat(row[entity.version_column])
            # Up to a day later, but never past the generator's clock: the job refuses versions from the future.
            newer = last + dt.timedelta(seconds=min(self.rng.uniform(1, 86400), (self.now - last).total_seconds() / 2))
            row[entity.version_column] = newer
            row["score_qualificacao"] = min(100, (row["score_qualificacao"] or 0) + self.rng.randint(1, 20))
            row["last_interaction_at"] = newer
        else:
            row["total_messages"] = (row["total_messages"] or 0) + self.rng.randint(1, 5)
            row["is_active"] = False
        return entity, row

    def _new(self, entity: Entity) -> dict:
        if entity is LEAD:
            self.leads += 1
            return self.records.lead(self.leads)
        if entity is CHAT_SESSION:
            return self.records.session(self.records.lead(0))
        return self._evento()

    def next(self) -> tuple[str, Message, str]:
        """(kind, message, version): kind is the entity's name or `update`; version is the ISO text it carries."""
        slot = None
        if self.updatable and self.rng.random() < UPDATE_SHARE:
            slot = self.rng.randrange(len(self.updatable))
            entity, row = self._updated(slot)
            kind = "update"
        else:
            entity = self.rng.choices([e for e, _ in NEW_SHARES], weights=[s for _, s in NEW_SHARES])[0]
            row = self._new(entity)
            kind = entity.name
        if entity.ordered_by_position:
            row[SOURCE_POSITION] = source_position(next(self.positions), 0)
        message = record_message(entity, row, processado_em=self.now)
        # Members beyond the registry's fields (an event's context) ride along, as producers send them.
        message.update({name: value for name, value in row.items() if name not in message})
        value = encode(message)
        if entity in UPDATABLE:
            self._remember(entity, value, slot)
        version = row[entity.order_column]
        return (kind, Message(entity.name, str(row[entity.key]).encode(), value),
                version.isoformat() if isinstance(version, dt.datetime) else version)

    def stream(self, count: int) -> Iterator[tuple[str, Message, str]]:
        for _ in range(count):
            yield self.next()

    def _remember(self, entity: Entity, value: bytes, slot: int | None) -> None:
        if slot is None and len(self.updatable) < self.UPDATE_POOL:
            self.updatable.append((entity, value))
            return
        if slot is None:
            slot = self.ring_cursor
            self.ring_cursor = (self.ring_cursor + 1) % self.UPDATE_POOL
        self.updatable[slot] = (entity, value)


def generate(count: int, seed: int, progress=None) -> Dataset:
    """`count` messages held in memory, with the newest version of every id; `progress` is a tqdm-like bar."""
    started = time.perf_counter()
    generator = EventGenerator(seed)
    messages: list[Message] = []
    newest: dict[str, dict[str, str]] = {entity.name: {} for entity in ENTITIES}
    counts: dict[str, int] = {}
    for kind, message, version in generator.stream(count):
        messages.append(message)
        # Each version of an id is newer than the last (updates only move forward), so the last one wins.
        newest[message.entity][message.key.decode()] = version
        counts[kind] = counts.get(kind, 0) + 1
        if progress is not None:
            progress.update(1)
    return Dataset(messages, newest, time.perf_counter() - started, counts)
