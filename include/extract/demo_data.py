"""Demo data for the Supabase stand-in: Brazilian leads and the chat sessions that produced them.

`generate` fills the tables through COPY; `activity`
plays a few minutes of life in the CRM - a share of leads progress, sessions end, a few leads are erased
(with their sessions, as a data-erasure request would) and some new ones arrive - so an incremental run has
updates, inserts and deletions to find.

    python -m include.extract.demo_data --leads 25000
    python -m include.extract.demo_data --activity --update-share 0.1 --delete 5

Needs a psycopg 3 connection (COPY); column lists come from the entity registry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import random
import unicodedata
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from include.entities import CHAT_SESSION, LEAD, Entity
from include.schema import quote_ident

log = logging.getLogger(__name__)

FIRST_NAMES = (
    "João", "Maria", "José", "Ana", "Antônio", "Francisca", "Luíza", "Márcio", "Fábio", "Sérgio", "Cláudia",
    "Mônica", "Vinícius", "Júlia", "Letícia", "Caio", "Beatriz", "Gabriel", "Lúcia", "Otávio", "Thaís",
    "Débora", "Rogério", "Patrícia", "Íris", "Conceição", "Raimundo", "Sebastião", "Valéria", "Flávia",
    "André", "Inês", "Simão", "Bárbara", "Cecília", "Heloísa", "Matheus", "Rafaela", "Tânia", "Zé Carlos",
)
SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima", "Gomes",
    "Araújo", "Conceição", "Simões", "Magalhães", "Assunção", "Brandão", "Gonçalves", "Ribeiro", "Carvalho",
    "Damásio", "Estêvão", "Guimarães", "Falcão", "Nóbrega", "Sá", "Lopes", "Castro", "Macêdo", "Antunes",
)
EMAIL_DOMAINS = ("gmail.com", "hotmail.com", "outlook.com.br", "uol.com.br", "bol.com.br", "yahoo.com.br",
                 "terra.com.br", "icloud.com")
# (cidade, UF, DDD, latitude, longitude, CEP prefix, bairros)
CITIES = (
    ("São Paulo", "SP", 11, -23.5505, -46.6333, "01", ("Pinheiros", "Moema", "Tatuapé", "Vila Mariana", "Brás")),
    ("Rio de Janeiro", "RJ", 21, -22.9068, -43.1729, "20", ("Copacabana", "Tijuca", "Botafogo", "Méier")),
    ("Belo Horizonte", "MG", 31, -19.9167, -43.9345, "30", ("Savassi", "Pampulha", "Funcionários")),
    ("Salvador", "BA", 71, -12.9714, -38.5014, "40", ("Barra", "Pituba", "Itapuã", "Rio Vermelho")),
    ("Fortaleza", "CE", 85, -3.7319, -38.5267, "60", ("Aldeota", "Meireles", "Messejana")),
    ("Brasília", "DF", 61, -15.7939, -47.8828, "70", ("Asa Sul", "Asa Norte", "Águas Claras", "Lago Sul")),
    ("Curitiba", "PR", 41, -25.4284, -49.2733, "80", ("Batel", "Água Verde", "Santa Felicidade")),
    ("Porto Alegre", "RS", 51, -30.0346, -51.2177, "90", ("Moinhos de Vento", "Menino Deus", "Petrópolis")),
    ("Recife", "PE", 81, -8.0476, -34.8770, "50", ("Boa Viagem", "Casa Forte", "Graças")),
    ("Manaus", "AM", 92, -3.1190, -60.0217, "69", ("Adrianópolis", "Ponta Negra", "Flores")),
    ("Belém", "PA", 91, -1.4558, -48.4902, "66", ("Umarizal", "Nazaré", "Marco")),
    ("Goiânia", "GO", 62, -16.6869, -49.2648, "74", ("Setor Bueno", "Setor Marista", "Jardim Goiás")),
    ("Florianópolis", "SC", 48, -27.5954, -48.5480, "88", ("Lagoa da Conceição", "Trindade", "Jurerê")),
    ("São Luís", "MA", 98, -2.5307, -44.3068, "65", ("Renascença", "Ponta d'Areia", "Calhau")),
)
COMPANY_PREFIXES = ("Construtora", "Imobiliária", "Padaria", "Distribuidora", "Clínica", "Escritório", "Comércio",
                    "Transportadora", "Agropecuária", "Ótica", "Farmácia", "Consultoria")
COMPANY_NAMES = ("Horizonte", "São Jorge", "Boa Esperança", "Ipê Amarelo", "Três Irmãos", "Aurora", "Sol Nascente",
                 "Nossa Senhora Aparecida", "Jequitibá", "Canaã", "Vitória", "Pão de Açúcar", "Araucária")
COMPANY_SUFFIXES = ("Ltda", "ME", "EIRELI", "S.A.", "& Filhos", "")
PROJECTS = ("Residencial Jardim das Flores", "Loteamento Vila Nova", "Reforma da loja", "Ampliação do galpão",
            "Edifício Mirante do Vale", "Condomínio Recanto das Águas", "Sede própria", "Casa de praia",
            "Apartamento na planta", "Sala comercial no centro", None)
INTERESTS = ("apartamento", "casa", "terreno", "investimento", "financiamento", "consórcio", "imóvel comercial",
             "aluguel", "lançamento", "uso do FGTS", "permuta")
STATUSES = ("novo", "contatado", "qualificado", "proposta", "negociação", "convertido", "perdido")
ORIGINS = ("site", "whatsapp", "instagram", "facebook", "google", "indicação", "chatbot", "feirão")
# (utm_source, utm_medium); None: arrived without UTM tags.
UTM = (("google", "cpc"), ("facebook", "social"), ("instagram", "social"), ("newsletter", "email"),
       ("google", "organic"), ("tiktok", "social"), None)
CAMPAIGNS = ("lancamento_residencial_aurora", "black_friday_2025", "remarketing_q3", "feirao_da_casa_propria",
             "minha_casa_minha_vida", "dia_das_maes", "verao_litoral")
USER_AGENTS = (
    "Mozilla/5.0 (Linux; Android 14; SM-A546E) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1",
    "Mozilla/5.0 (Linux; Android 13; moto g54 5G) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 Mobile",
)
# Address blocks of large Brazilian ISPs, so session IPs look like the user's traffic.
IP_BLOCKS = tuple(ipaddress.ip_network(block)
                  for block in ("177.0.0.0/10", "189.0.0.0/11", "201.0.0.0/12", "187.0.0.0/11", "191.0.0.0/12"))
PAGES = ("/", "/imoveis", "/imoveis/apartamentos", "/imoveis/casas", "/lancamentos", "/simulador-financiamento",
         "/contato", "/sobre", "/blog/como-usar-o-fgts", "/blog/documentacao-para-financiar", "/agendar-visita")
QUESTIONS = ("Qual o valor da entrada?", "Aceita FGTS?", "Tem vaga de garagem?", "Qual a previsão de entrega?",
             "Posso agendar uma visita?", "Aceita permuta?", "Quanto fica a parcela?", "O condomínio é caro?",
             "Fica perto do metrô?", "Tem área de lazer para crianças?", "Vocês financiam pela Caixa?")
INTENTS = ("compra", "informação", "agendamento de visita", "negociação", "suporte", "simulação de financiamento")
INTEREST_LEVELS = ("baixo", "médio", "alto")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace(" ", "")


@dataclass(frozen=True)
class DemoSize:
    leads: int
    # Average sessions per lead (each lead gets 0..2*average, uniformly).
    sessions_per_lead: float = 1.5
    # Rows inserted with one identical updated_at, as a bulk import in one statement produces.
    shared_updated_at: int = 0
    # How far back leads were created; 0 makes them all new, created and updated now.
    history_days: float = 120


class _Generator:
    def __init__(self, seed: int | None, now: dt.datetime, history_days: float):
        self.rng = random.Random(seed)
        self.now = now
        self.history_s = history_days * 86400

    def _after(self, moment: dt.datetime, at_most_s: float) -> dt.datetime:
        """A random time after `moment`, at most `at_most_s` later and never in the future."""
        room = min(at_most_s, (self.now - moment).total_seconds())
        return moment + dt.timedelta(seconds=self.rng.uniform(0, room))

    def lead(self, number: int) -> dict:
        rng = self.rng
        first, last, second_last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES), rng.choice(SURNAMES)
        city, uf, ddd, lat, lng, cep, districts = rng.choice(CITIES)
        utm = rng.choice(UTM)
        created = self._after(self.now - dt.timedelta(seconds=self.history_s), self.history_s)
        updated = self._after(created, 30 * 86400)
        return {
            # Ids are never seeded: generating twice with one seed must not collide.
            "id": uuid.uuid4(),
            "nome": f"{first} {last} {second_last}",
            "email": f"{_ascii(first)}.{_ascii(second_last)}{number}@{rng.choice(EMAIL_DOMAINS)}",
            "telefone": f"+55 ({ddd}) 9{rng.randint(6000, 9999)}-{rng.randint(0, 9999):04d}",
            "nome_empresa": (f"{rng.choice(COMPANY_PREFIXES)} {rng.choice(COMPANY_NAMES)} "
                             f"{rng.choice(COMPANY_SUFFIXES)}").strip() if rng.random() < 0.6 else None,
            "nome_projeto": rng.choice(PROJECTS),
            "localizacao": {
                "cidade": city, "estado": uf, "pais": "Brasil", "bairro": rng.choice(districts),
                "cep": f"{cep}{rng.randint(0, 999):03d}-{rng.randint(0, 999):03d}",
                "lat": round(lat + rng.uniform(-0.08, 0.08), 6), "lng": round(lng + rng.uniform(-0.08, 0.08), 6),
            },
            "interesse": rng.sample(INTERESTS, rng.randint(1, 3)),
            "score_qualificacao": rng.randint(0, 100),
            "status_lead": rng.choice(STATUSES),
            "origem": rng.choice(ORIGINS),
            "utm_source": utm and utm[0],
            "utm_medium": utm and utm[1],
            "utm_campaign": utm and rng.choice(CAMPAIGNS),
            "created_at": created,
            "updated_at": updated,
            "last_interaction_at": updated if rng.random() < 0.8 else None,
        }

    def session(self, lead: dict) -> dict:
        rng = self.rng
        started = self._after(lead["created_at"], 10 * 86400)
        duration = rng.randint(20, 3600)
        ended = started + dt.timedelta(seconds=duration)
        # A session still open now, or one the visitor left open (about 5 %), has no end yet.
        active = ended > self.now or rng.random() < 0.05
        block = rng.choice(IP_BLOCKS)
        return {
            "id": uuid.uuid4(),
            "lead_id": lead["id"],
            "session_token": f"{rng.getrandbits(128):032x}",
            "user_agent": rng.choice(USER_AGENTS),
            "ip_address": str(block[rng.randrange(1, block.num_addresses - 1)]),
            "total_messages": rng.randint(1, 40),
            "duration_seconds": None if active else duration,
            "pages_visited": rng.sample(PAGES, rng.randint(1, 5)),
            "perguntas_feitas": rng.sample(QUESTIONS, rng.randint(0, 4)),
            "intencao_detectada": rng.choice(INTENTS),
            "nivel_interesse": rng.choice(INTEREST_LEVELS),
            "started_at": started,
            "ended_at": None if active else ended,
            "is_active": active,
        }


@contextmanager
def _copy_rows(cursor, entity: Entity, schema: str):
    """Yields a function writing one row dict of the entity into its table through COPY."""
    from psycopg.types.json import Jsonb

    names = entity.field_names
    json_fields = {f.name for f in entity.fields if f.type == "jsonb"}
    columns = ", ".join(quote_ident(name) for name in names)
    with cursor.copy(f"COPY {quote_ident(schema)}.{quote_ident(entity.source_table)} ({columns}) FROM STDIN") as copy:
        yield lambda row: copy.write_row(tuple(Jsonb(row[n]) if n in json_fields else row[n] for n in names))


def generate(connection, size: DemoSize, schema: str = "public", seed: int | None = None,
             now: dt.datetime | None = None) -> dict:
    """Insert `size.leads` leads and their sessions in one transaction; returns the counts."""
    generator = _Generator(seed, now or dt.datetime.now(dt.timezone.utc), size.history_days)
    shared_moment = generator.now - dt.timedelta(hours=1)
    sessions = 0
    with connection.cursor() as cursor:
        leads = []
        with _copy_rows(cursor, LEAD, schema) as write:
            for number in range(size.leads):
                lead = generator.lead(number)
                if number < size.shared_updated_at:
                    lead["updated_at"] = shared_moment
                write(lead)
                leads.append(lead)
        with _copy_rows(cursor, CHAT_SESSION, schema) as write:
            for lead in leads:
                for _ in range(generator.rng.randint(0, round(2 * size.sessions_per_lead))):
                    write(generator.session(lead))
                    sessions += 1
    connection.commit()
    log.info("generated %s leads and %s chat sessions in %s", size.leads, sessions, schema)
    return {"leads": size.leads, "chat_sessions": sessions}


def activity(connection, schema: str = "public", update_share: float = 0.1, delete: int = 5, insert: int = 20,
             seed: int | None = None) -> dict:
    """Update a share of leads and sessions, erase `delete` leads with their sessions, add `insert` leads."""
    if not 0 <= update_share <= 1:
        raise ValueError(f"update_share must be within 0..1, got {update_share}")
    leads_table = f"{quote_ident(schema)}.{quote_ident(LEAD.source_table)}"
    sessions_table = f"{quote_ident(schema)}.{quote_ident(CHAT_SESSION.source_table)}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [random.Random(seed).uniform(-1, 1)])
        # updated_at is moved by the source's trigger, as in Supabase.
        cursor.execute(
            f"""UPDATE {leads_table}
                SET score_qualificacao = LEAST(100, coalesce(score_qualificacao, 0) + 5 + floor(random() * 20)::int),
                    status_lead = (%(statuses)s::text[])[1 + floor(random() * cardinality(%(statuses)s::text[]))::int],
                    last_interaction_at = clock_timestamp()
                WHERE random() < %(share)s""",
            {"statuses": list(STATUSES), "share": update_share},
        )
        updated_leads = cursor.rowcount
        cursor.execute(
            f"""UPDATE {sessions_table}
                SET is_active = false, total_messages = total_messages + 1 + floor(random() * 5)::int,
                    ended_at = coalesce(ended_at, clock_timestamp())
                WHERE random() < %(share)s""",
            {"share": update_share},
        )
        updated_sessions = cursor.rowcount
        key = quote_ident(LEAD.key)
        cursor.execute(
            f"""WITH erased AS (
                    DELETE FROM {leads_table}
                    WHERE {key} IN (SELECT {key} FROM {leads_table} ORDER BY random() LIMIT %(delete)s)
                    RETURNING {key}),
                erased_sessions AS (
                    DELETE FROM {sessions_table} WHERE lead_id IN (SELECT {key} FROM erased) RETURNING 1)
                SELECT (SELECT count(*) FROM erased), (SELECT count(*) FROM erased_sessions)""",
            {"delete": delete},
        )
        deleted_leads, deleted_sessions = cursor.fetchone()
    connection.commit()
    inserted = generate(connection, DemoSize(leads=insert, history_days=0), schema=schema, seed=seed)
    result = {"updated_leads": updated_leads, "updated_chat_sessions": updated_sessions, "deleted_leads": deleted_leads,
              "deleted_chat_sessions": deleted_sessions, "inserted_leads": inserted["leads"],
              "inserted_chat_sessions": inserted["chat_sessions"]}
    log.info("demo activity in %s: %s", schema, result)
    return result


def main(argv: list[str] | None = None) -> None:
    from include.connections import pg_session
    from include.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=1000, help="leads to generate (default 1000)")
    parser.add_argument("--sessions-per-lead", type=float, default=1.5)
    parser.add_argument("--shared-updated-at", type=int, default=0, help="leads sharing one updated_at")
    parser.add_argument("--activity", action="store_true", help="update/delete/insert instead of generating")
    parser.add_argument("--update-share", type=float, default=0.1)
    parser.add_argument("--delete", type=int, default=5)
    parser.add_argument("--insert", type=int, default=20)
    parser.add_argument("--schema", default="public")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings()
    with pg_session(settings, settings.pg_source_db) as connection:
        if args.activity:
            print(activity(connection, args.schema, args.update_share, args.delete, args.insert, args.seed))
        else:
            print(generate(connection, DemoSize(args.leads, args.sessions_per_lead, args.shared_updated_at),
                           args.schema, args.seed))


if __name__ == "__main__":
    main()
