"""Hot-path reads and inserts in plain SQL that still deal in ordinary model instances.

The API's register endpoint is called by every CI pipeline run, and compiling a queryset costs 0.5 to 2 ms of CPU
per call, several times the database's own work for these primary-key and unique-key lookups. Here the SELECT
list for a model is built once per process from its _meta, and each row goes through the same converters and
`Model.from_db` the ORM uses, so what comes back is indistinguishable from a queryset's result. Inserts take their
values through each field's own get_db_prep_save, as Model.save does.

Write the rest of a query by hand, with `table(Model)` for its table and `columns(Model, alias)` for its SELECT list.
Keep the SQL portable (PostgreSQL and SQLite).
"""

from __future__ import annotations

from functools import cache, lru_cache

from django.db import connection
from django.db.models import AutoField, Model


@cache
def _shape(model: type[Model], alias: str) -> tuple[str, tuple[str, ...], int, tuple]:
    """(SELECT list, attribute names, index of the primary key, per-column (column, converters)) of `model` under
    the table alias `alias`."""
    quote = connection.ops.quote_name
    fields = model._meta.concrete_fields
    select = ", ".join(f"{quote(alias)}.{quote(field.column)}" for field in fields)
    steps = []
    for field in fields:
        column = field.get_col(alias)
        steps.append((column, tuple(connection.ops.get_db_converters(column) + column.get_db_converters(connection))))
    names = tuple(field.attname for field in fields)
    return select, names, names.index(model._meta.pk.attname), tuple(steps)


def table(model: type[Model]) -> str:
    """The quoted table name of `model`."""
    return connection.ops.quote_name(model._meta.db_table)


def columns(model: type[Model], alias: str) -> str:
    """The SELECT list of every concrete field of `model`, as `alias`.column."""
    return _shape(model, alias)[0]


def instance(model: type[Model], alias: str, values) -> Model | None:
    """A model instance from its columns in a row (as selected by `columns`); None when the primary key is NULL
    (the unmatched side of a LEFT JOIN)."""
    _, names, pk_index, steps = _shape(model, alias)
    if values[pk_index] is None:
        return None
    values = list(values)
    for index, (column, converters) in enumerate(steps):
        for convert in converters:
            values[index] = convert(values[index], column, connection)
    return model.from_db(connection.alias, names, values)


def fetch(sql: str, params, shapes: list[tuple[type[Model], str]]) -> list[tuple]:
    """Run `sql` and split each row into one instance per (model, alias) of `shapes`, in SELECT order."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    result = []
    for row in rows:
        start, objects = 0, []
        for model, alias in shapes:
            end = start + len(model._meta.concrete_fields)
            objects.append(instance(model, alias, row[start:end]))
            start = end
        result.append(tuple(objects))
    return result


def fetch_one(sql: str, params, shapes: list[tuple[type[Model], str]]) -> tuple | None:
    """The first row of `fetch`, or None."""
    rows = fetch(sql, params, shapes)
    return rows[0] if rows else None


def for_update() -> str:
    """The row-locking suffix where the database has one (PostgreSQL); SQLite serialises writers by itself."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""


@lru_cache(maxsize=256)  # shapes: a model and a row count up to INSERT_BATCH
def _insert_sql(model: type[Model], rows: int, suffix: str = "") -> tuple[str, tuple]:
    """(INSERT … RETURNING pk for `rows` rows of `model`, the fields in VALUES order); built once per shape."""
    fields = tuple(field for field in model._meta.concrete_fields if not isinstance(field, AutoField))
    quote = connection.ops.quote_name
    one_row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {table(model)} ({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES {', '.join([one_row] * rows)}{suffix} RETURNING {quote(model._meta.pk.column)}"
    )
    return sql, fields


def _values(obj: Model, fields: tuple) -> list:
    return [field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields]


def _saved(obj: Model, pk) -> None:
    obj.pk = pk
    obj._state.adding = False
    obj._state.db = connection.alias


INSERT_BATCH = 100  # rows per statement: far below the parameter limits of PostgreSQL (65535) and SQLite (32766)


def insert(objs: list[Model]) -> None:
    """INSERT `objs` (all of one model), a statement per INSERT_BATCH rows, and set their primary keys."""
    for start in range(0, len(objs), INSERT_BATCH):
        batch = objs[start : start + INSERT_BATCH]
        sql, fields = _insert_sql(type(batch[0]), len(batch))
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for obj in batch for value in _values(obj, fields)])
            keys = [row[0] for row in cursor.fetchall()]
        for obj, pk in zip(batch, keys, strict=True):
            _saved(obj, pk)


def insert_unless_exists(obj: Model, conflict_columns: list[str]) -> bool:
    """INSERT `obj` unless a row with the same `conflict_columns` exists (ON CONFLICT DO NOTHING): one statement,
    no savepoint. Sets obj.pk and returns True when it inserted."""
    quote = connection.ops.quote_name
    conflict = f" ON CONFLICT ({', '.join(quote(column) for column in conflict_columns)}) DO NOTHING"
    sql, fields = _insert_sql(type(obj), 1, conflict)
    with connection.cursor() as cursor:
        cursor.execute(sql, _values(obj, fields))
        row = cursor.fetchone()
    if row is None:
        return False
    _saved(obj, row[0])
    return True
