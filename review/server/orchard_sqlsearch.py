"""A search engine for argilla-server 2.8 that uses the server's own SQL database as its index.

Runs INSIDE the Argilla server's venv (imports only argilla-server, its dependencies and the standard library).
Registered as ``ARGILLA_SEARCH_ENGINE=orchard_sql``. The SQL database (SQLite or PostgreSQL) already holds every
record, response, suggestion and vector, so the write hooks only invalidate the similarity cache; every read
(search, progress, metadata metrics) is one SQL query that filters, sorts and pages in the database, so the review
queue's cost does not grow with what the user never sees.

Semantics follow the Elasticsearch engine of argilla-server where the UI and the SDK depend on them:
- response status ``pending`` for a user means "this user has no response on the record";
- a text query is an AND of its words (``word*`` is a prefix), matched case-insensitively in the fields;
- sorting puts missing values last; response values sort by their average across the matching responses;
- without an explicit sort, records are ordered by the ``review_priority`` metadata (highest first, so the
  judge's hardest cases come first) when the dataset has that property, then by insertion order.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any, Dict, List, Optional, Union
from uuid import UUID

from sqlalchemy import Float, String, and_, cast, exists, false, func, literal, literal_column, not_, or_, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql import ColumnElement
from sqlalchemy import text as text_clause

from argilla_server.database import AsyncSessionLocal
from argilla_server.enums import MetadataPropertyType, RecordStatus, ResponseStatus, SimilarityOrder, SortOrder
from argilla_server.models import (
    Dataset,
    MetadataProperty,
    Question,
    Record,
    Response,
    Suggestion,
    User,
    Vector,
    VectorSettings,
)
from argilla_server.search_engine.base import (
    AndFilter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)

ENGINE_NAME = "orchard_sql"
PRIORITY_METADATA = "review_priority"
_RECORD_COLUMNS = {
    "id": Record.id,
    "external_id": Record.external_id,
    "status": Record.status,
    "inserted_at": Record.inserted_at,
    "updated_at": Record.updated_at,
}

# Similarity search needs every vector of a dataset; they are cached per vector settings and dropped whenever a
# write hook says records changed (the server process is the only one that searches).
_VECTOR_CACHE: Dict[UUID, tuple] = {}


def _invalidate_vectors() -> None:
    _VECTOR_CACHE.clear()


def _dialect() -> str:
    return AsyncSessionLocal.kw["bind"].dialect.name


_FULLTEXT: Dict[str, bool] = {}


def _has_fulltext() -> bool:
    """Whether the launcher created the FTS5 index (SQLite only); checked once per process."""
    if "ok" not in _FULLTEXT:
        _FULLTEXT["ok"] = False
        if _dialect() == "sqlite":
            from argilla_server.database import sync_engine

            with sync_engine.connect() as conn:
                _FULLTEXT["ok"] = bool(conn.execute(text_clause(
                    "SELECT 1 FROM sqlite_master WHERE name = 'orchard_records_fts'")).first())
    return _FULLTEXT["ok"]


def _field_values() -> ColumnElement:
    """A record's field values as one text, for LIKE: on PostgreSQL the decoded values (the stored JSON escapes
    non-ASCII characters, so "brûlée" would never match its text), elsewhere the JSON text itself."""
    if _dialect() == "postgresql":
        values = func.json_each_text(Record.fields).table_valued("value")
        return select(func.string_agg(values.c.value, " ")).select_from(values).scalar_subquery()
    return cast(Record.fields, String)


def _json_text(expr) -> ColumnElement:
    """A JSON sub-value as text, on SQLite and PostgreSQL alike (SQLite's json_extract keeps numbers numeric,
    and a number never equals a string there, hence the cast)."""
    return cast(expr.as_string(), String)


def _json_number(expr) -> ColumnElement:
    return expr.as_float()


def _record_value_condition(column, flt) -> ColumnElement:
    if isinstance(flt, TermsFilter):
        if column is Record.status:
            return column.in_([RecordStatus(v) for v in flt.values])
        if column is Record.id:
            return column.in_([UUID(str(v)) for v in flt.values])
        return column.in_([str(v) for v in flt.values])
    return _range(column, flt, is_date=column in (Record.inserted_at, Record.updated_at))


def _range(column, flt: RangeFilter, is_date: bool = False) -> ColumnElement:
    conds = []
    for bound, op in ((flt.ge, "ge"), (flt.le, "le")):
        if bound is None:
            continue
        value = _coerce_date(bound) if is_date else float(bound)
        conds.append(column >= value if op == "ge" else column <= value)
    return and_(*conds) if conds else false()


def _coerce_date(bound):
    from datetime import datetime, timezone

    if isinstance(bound, (int, float)):
        return datetime.fromtimestamp(bound, tz=timezone.utc).replace(tzinfo=None)
    parsed = datetime.fromisoformat(str(bound).replace("Z", "+00:00"))
    return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def _value_condition(json_expr, flt) -> ColumnElement:
    """A filter on a JSON scalar (metadata value, suggestion value, response value)."""
    if isinstance(flt, TermsFilter):
        return _json_text(json_expr).in_([str(v) for v in flt.values])
    if isinstance(flt, RangeFilter):
        return _range(_json_number(json_expr), flt)
    raise ValueError(f"Cannot process request for filter {flt}")


class _Query:
    """Builds WHERE and ORDER BY clauses over ``records`` for one dataset."""

    def __init__(self, dataset: Dataset, metadata_types: Dict[str, MetadataPropertyType]):
        self.dataset = dataset
        self.metadata_types = metadata_types

    # -- filters --------------------------------------------------------------------------------------------
    def filter(self, flt) -> ColumnElement:
        if isinstance(flt, AndFilter):
            return and_(true(), *[self.filter(f) for f in flt.filters])
        scope = flt.scope
        if isinstance(scope, RecordFilterScope):
            column = _RECORD_COLUMNS.get(scope.property)
            if column is None:
                raise ValueError(f"Cannot filter on record property {scope.property}")
            return _record_value_condition(column, flt)
        if isinstance(scope, MetadataFilterScope):
            return _value_condition(Record.metadata_[scope.metadata_property], flt)
        if isinstance(scope, SuggestionFilterScope):
            return exists(
                select(literal(1))
                .select_from(Suggestion)
                .join(Question, Question.id == Suggestion.question_id)
                .where(
                    Suggestion.record_id == Record.id,
                    Question.name == scope.question,
                    self._suggestion_condition(scope.property, flt),
                )
            )
        if isinstance(scope, ResponseFilterScope):
            return self._response_filter(scope, flt)
        raise ValueError(f"Cannot process request for search scope {scope}")

    @staticmethod
    def _suggestion_condition(prop: str, flt) -> ColumnElement:
        if prop == "value":
            if isinstance(flt, RangeFilter):
                return _range(_root_number(Suggestion.value), flt)
            return _root_text(Suggestion.value).in_([str(v) for v in flt.values])
        if prop == "score":
            if isinstance(flt, RangeFilter):
                return _range(_root_number(Suggestion.score), flt)
            return _root_text(Suggestion.score).in_([str(v) for v in flt.values])
        if prop == "agent":
            return Suggestion.agent.in_([str(v) for v in flt.values])
        if prop == "type":
            return cast(Suggestion.type, String).in_([str(v) for v in flt.values])
        raise ValueError(f"Cannot filter on suggestion property {prop}")

    @staticmethod
    def _response_filter(scope: ResponseFilterScope, flt) -> ColumnElement:
        mine = [Response.record_id == Record.id]
        if scope.user is not None:
            mine.append(Response.user_id == scope.user.id)
        if scope.question:
            value = Response.values[(scope.question, "value")]
            return exists(select(literal(1)).select_from(Response).where(*mine, _value_condition(value, flt)))
        if scope.property == "status" and isinstance(flt, TermsFilter):
            wanted = [str(v) for v in flt.values]
            conds = []
            if "pending" in wanted:  # no response (from this user) yet
                conds.append(not_(exists(select(literal(1)).select_from(Response).where(*mine))))
            statuses = [ResponseStatus(v) for v in wanted if v != "pending"]
            if statuses:
                conds.append(
                    exists(select(literal(1)).select_from(Response).where(*mine, Response.status.in_(statuses)))
                )
            return or_(false(), *conds)
        raise ValueError(f"Cannot process filter scope {scope}")

    # -- text query --------------------------------------------------------------------------------------------
    @staticmethod
    def text(query: Optional[Union[TextQuery, str]]) -> ColumnElement:
        if query is None:
            return true()
        if isinstance(query, str):
            query = TextQuery(q=query)
        tokens = [t for t in (w.strip("\"'") for w in query.q.lower().split()) if t.strip("*")]
        if not tokens:
            return true()
        if not query.field and _has_fulltext():
            # FTS5 query: every word must occur (AND), `word*` is a prefix; words are quoted so that no
            # user input is read as FTS syntax.
            match = " ".join(
                '"{}"{}'.format(t.rstrip("*").replace('"', '""'), "*" if t.endswith("*") else "") for t in tokens
            )
            hits = select(literal_column("rowid")).select_from(text_clause("orchard_records_fts")).where(
                text_clause("orchard_records_fts MATCH :fts_query").bindparams(fts_query=match)
            )
            return literal_column("records.rowid").in_(hits)
        haystack = func.lower(Record.fields[query.field].as_string() if query.field else _field_values())
        conds = []
        for token in tokens:
            token = token.rstrip("*")
            # Substring match of each word (AND), like ES's default_operator=AND on analysed text.
            escaped = token.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(haystack.like(f"%{escaped}%", escape="\\"))
        return and_(true(), *conds)

    # -- sort ----------------------------------------------------------------------------------------------------
    def sort_key(self, scope) -> ColumnElement:
        if isinstance(scope, RecordFilterScope):
            column = _RECORD_COLUMNS.get(scope.property)
            if column is None:
                raise ValueError(f"Cannot sort on record property {scope.property}")
            return column
        if isinstance(scope, MetadataFilterScope):
            return _metadata_sort_expr(scope.metadata_property, self.metadata_types.get(scope.metadata_property))
        if isinstance(scope, SuggestionFilterScope):
            if scope.property == "agent":
                col = Suggestion.agent
            elif scope.property == "value":
                col = _root_text(Suggestion.value)
            else:
                col = _root_number(Suggestion.score)
            return (
                select(col)
                .select_from(Suggestion)
                .join(Question, Question.id == Suggestion.question_id)
                .where(Suggestion.record_id == Record.id, Question.name == scope.question)
                .limit(1)
                .scalar_subquery()
            )
        if isinstance(scope, ResponseFilterScope):
            where = [Response.record_id == Record.id]
            if scope.user is not None:
                where.append(Response.user_id == scope.user.id)
            if scope.question:
                agg = func.avg(Response.values[(scope.question, "value")].as_float())
            else:
                agg = func.max(cast(getattr(Response, scope.property), String))
            return select(agg).select_from(Response).where(*where).scalar_subquery()
        raise ValueError(f"Cannot sort on {scope}")

    def order_by(self, sort: Optional[List[Order]]) -> list:
        clauses = []
        if sort:
            for order in sort:
                key = self.sort_key(order.scope)
                clauses.append((key.desc() if order.order == SortOrder.desc else key.asc()).nulls_last())
        elif PRIORITY_METADATA in self.metadata_types:
            key = _metadata_sort_expr(PRIORITY_METADATA, MetadataPropertyType.float)
            # SQLite already puts NULLs last in DESC order, and an explicit NULLS LAST would hide the index.
            clauses.append(key.desc() if _dialect() == "sqlite" else key.desc().nulls_last())
        clauses += [Record.inserted_at.asc(), Record.id.asc()]
        return clauses


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def _metadata_sort_expr(name: str, kind) -> ColumnElement:
    """A metadata value to sort on. On SQLite the JSON path is written literally (not bound), so that an
    expression index such as the launcher's on `review_priority` can serve the ORDER BY ... LIMIT."""
    if _dialect() == "sqlite" and _SAFE_NAME.match(name):
        return func.json_extract(Record.metadata_, literal_column(f"'$.{name}'"))
    expr = Record.metadata_[name]
    return expr.as_string() if kind == MetadataPropertyType.terms else expr.as_float()


def _pending_for_user(flt) -> Optional[tuple]:
    """(user, other filters) when `flt` asks for records a user has not answered yet (the review queue)."""
    if flt is None:
        return None
    filters = list(flt.filters) if isinstance(flt, AndFilter) else [flt]
    pending = [
        f for f in filters
        if isinstance(f, TermsFilter) and isinstance(f.scope, ResponseFilterScope) and f.scope.property == "status"
        and not f.scope.question and f.scope.user is not None and [str(v) for v in f.values] == ["pending"]
    ]
    if len(pending) != 1 or any(isinstance(f, AndFilter) for f in filters):
        return None
    return pending[0].scope.user, [f for f in filters if f is not pending[0]]


def _root_text(col) -> ColumnElement:
    """A whole JSON column holding a scalar, as text (suggestion values and scores are stored that way)."""
    if _dialect() == "sqlite":
        return cast(func.json_extract(col, "$"), String)
    return cast(col, JSONB).op("#>>")(literal_column("'{}'"))


def _root_number(col) -> ColumnElement:
    if _dialect() == "sqlite":
        return cast(func.json_extract(col, "$"), Float)
    return cast(_root_text(col), Float)


async def _metadata_types(db, dataset_id: UUID) -> Dict[str, MetadataPropertyType]:
    rows = await db.execute(
        select(MetadataProperty.name, MetadataProperty.settings).where(MetadataProperty.dataset_id == dataset_id)
    )
    return {name: MetadataPropertyType((settings or {}).get("type", "terms")) for name, settings in rows.all()}


def _cosine_scores(target: List[float], ids: list, matrix: list, norms: list) -> List[tuple]:
    tnorm = math.sqrt(sum(x * x for x in target)) or 1.0
    out = []
    for rid, vec, norm in zip(ids, matrix, norms):
        dot = sum(a * b for a, b in zip(target, vec))
        out.append(((1.0 + dot / (tnorm * norm)) / 2.0, rid))  # ES's cosine scale: (1 + cos) / 2
    return out


@SearchEngine.register(engine_name=ENGINE_NAME)
class OrchardSQLSearchEngine(SearchEngine):
    """See the module docstring."""

    @classmethod
    async def new_instance(cls) -> "OrchardSQLSearchEngine":
        return cls()

    async def close(self):
        pass

    async def ping(self) -> bool:
        async with AsyncSessionLocal() as db:
            await db.execute(select(1))
        return True

    async def info(self) -> dict:
        return {"engine": ENGINE_NAME, "backend": f"argilla-server SQL database ({_dialect()})"}

    # -- write hooks: the database is the index; only the vector cache must forget -------------------------------
    async def create_index(self, dataset: Dataset):
        pass

    async def delete_index(self, dataset: Dataset):
        _invalidate_vectors()

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty):
        pass

    async def configure_index_vectors(self, vector_settings: VectorSettings):
        pass

    async def index_records(self, dataset: Dataset, records):
        _invalidate_vectors()

    async def partial_record_update(self, record: Record, **update):
        pass

    async def delete_records(self, dataset: Dataset, records):
        _invalidate_vectors()

    async def update_record_response(self, response: Response):
        pass

    async def delete_record_response(self, response: Response):
        pass

    async def update_record_suggestion(self, suggestion: Suggestion):
        pass

    async def delete_record_suggestion(self, suggestion: Suggestion):
        pass

    # -- progress and metrics -------------------------------------------------------------------------------------
    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        async with AsyncSessionLocal() as db:
            rows = await db.execute(
                select(Record.status, func.count()).where(Record.dataset_id == dataset.id).group_by(Record.status)
            )
            counts = {str(status): n for status, n in rows.all()}
        return {"total": sum(counts.values()), **counts}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        async with AsyncSessionLocal() as db:
            rows = await db.execute(
                select(Response.status, func.count(Response.id))
                .join(Record, Record.id == Response.record_id)
                .where(Record.dataset_id == dataset.id, Response.user_id == user.id)
                .group_by(Response.status)
            )
            counts = {str(status): n for status, n in rows.all()}
        return {"total": sum(counts.values()), **counts}

    async def compute_metrics_for(self, metadata_property: MetadataProperty):
        value = Record.metadata_[metadata_property.name]
        where = [Record.dataset_id == metadata_property.dataset_id]
        async with AsyncSessionLocal() as db:
            if metadata_property.type == MetadataPropertyType.terms:
                text = value.as_string()
                rows = (
                    await db.execute(
                        select(text, func.count()).where(*where, text.is_not(None)).group_by(text)
                        .order_by(func.count().desc(), text.asc())
                    )
                ).all()
                return TermsMetrics(
                    total=sum(n for _, n in rows), values=[TermsMetrics.TermCount(term=t, count=n) for t, n in rows]
                )
            num = value.as_float()
            lo, hi = (await db.execute(select(func.min(num), func.max(num)).where(*where))).one()
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(min=None if lo is None else int(lo), max=None if hi is None else int(hi))
        return FloatMetadataMetrics(min=lo, max=hi)

    # -- search ---------------------------------------------------------------------------------------------------
    async def _where(self, db, dataset: Dataset, query, filter) -> tuple:
        q = _Query(dataset, await _metadata_types(db, dataset.id))
        where = [Record.dataset_id == dataset.id, q.text(query)]
        if filter is not None:
            where.append(q.filter(filter))
        return q, where

    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter=None,
        sort: Optional[List[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[UUID] = None,  # ES uses it as a random seed; our order is deterministic
        **_: Any,
    ) -> SearchResponses:
        async with AsyncSessionLocal() as db:
            q, where = await self._where(db, dataset, query, filter)
            total = await self._count(db, q, dataset, query, filter, where)
            ids = (
                await db.execute(select(Record.id).where(*where).order_by(*q.order_by(sort)).offset(offset).limit(limit))
            ).scalars().all()
        score = None if sort else 1.0
        return SearchResponses(items=[SearchResponseItem(record_id=i, score=score) for i in ids], total=total)

    @staticmethod
    async def _count(db, q: "_Query", dataset: Dataset, query, filter, where: list) -> int:
        queue = _pending_for_user(filter) if query is None else None
        if queue is None:
            return (await db.execute(select(func.count()).select_from(Record).where(*where))).scalar_one()
        # The review queue: "not answered by me" = all matching records minus those I answered (a user has at
        # most one response per record). Two index-friendly counts instead of a NOT EXISTS probe per record.
        user, rest = queue
        base = [Record.dataset_id == dataset.id] + [q.filter(f) for f in rest]
        # count(*) rather than count(id): SQLite then answers from the (dataset_id, status) index alone.
        everything = (await db.execute(select(func.count()).select_from(Record).where(*base))).scalar_one()
        # Driven from the user's responses (index on user_id), probing each record by primary key: touches the
        # records this user answered, not the whole dataset.
        answered = (
            await db.execute(
                select(func.count()).select_from(Response).where(
                    Response.user_id == user.id,
                    exists(select(literal(1)).select_from(Record).where(Record.id == Response.record_id, *base)),
                )
            )
        ).scalar_one()
        return everything - answered

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[List[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter=None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        target = value or record.vector_value_by_vector_settings(vector_settings)
        if not target:
            raise ValueError("Cannot find a vector value to apply with provided info")
        excluded = record.id if record else None

        async with AsyncSessionLocal() as db:
            cached = _VECTOR_CACHE.get(vector_settings.id)
            if cached is None:
                rows = (
                    await db.execute(
                        select(Vector.record_id, Vector.value).where(Vector.vector_settings_id == vector_settings.id)
                    )
                ).all()
                ids = [r for r, _ in rows]
                matrix = [v for _, v in rows]
                norms = [math.sqrt(sum(x * x for x in v)) or 1.0 for v in matrix]
                cached = (ids, matrix, norms)
                _VECTOR_CACHE[vector_settings.id] = cached
            allowed = None
            if query is not None or filter is not None:
                _, where = await self._where(db, dataset, query, filter)
                allowed = set((await db.execute(select(Record.id).where(*where))).scalars().all())

        # Scoring is CPU work: keep the event loop free for other requests.
        scored = await asyncio.to_thread(_cosine_scores, target, *cached)
        scored = [s for s in scored if s[1] != excluded and (allowed is None or s[1] in allowed)]
        scored.sort(key=lambda s: s[0], reverse=order == SimilarityOrder.most_similar)
        if threshold is not None:
            scored = [s for s in scored if s[0] >= threshold]
        scored = scored[:max_results]
        return SearchResponses(
            items=[SearchResponseItem(record_id=rid, score=score) for score, rid in scored], total=len(scored)
        )
