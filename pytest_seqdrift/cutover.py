"""Cutovers: a target's sequences compared with the source it was copied from.

Logical replication, ``pg_dump --data-only --table`` and DMS-style copies move rows but
not sequence state. The target's own check sees a sequence behind its table's max; only
the source shows a sequence whose highest rows were deleted there, or one that feeds no
column at all (the application calls ``nextval()``). ``compare`` reads both, each in a
READ ONLY transaction of its own, the source first: a sequence only moves forward, so a
target found behind the source was behind a value the source had really reached, and
writes at the source while the target is read cannot make a false finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_seqdrift import checker, drift, fixsql
from pytest_seqdrift.db.adapters import open_session
from pytest_seqdrift.db.session import Session, error_line
from pytest_seqdrift.errors import CannotCheck, ReadFailure
from pytest_seqdrift.model import (
    Compared,
    Cutover,
    PgSequence,
    Report,
    SequenceState,
    Subscription,
)
from pytest_seqdrift.options import CheckOptions
from pytest_seqdrift.read.discovery import excluded_table
from pytest_seqdrift.read.reader import read_sequence_states

# every sequence in the user's schemas, readable or not (a sequence the role may not read
# is still there: it is reported as skipped, never as missing)
SEQUENCES = """
SELECT c.oid::int8, n.nspname::text, c.relname::text,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       quote_ident(n.nspname), quote_ident(c.relname), format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       s.seqcycle, has_sequence_privilege(c.oid, 'SELECT'),
       -- the tables that use it: its owner (serial, identity) and every default naming it
       ARRAY(SELECT DISTINCT tn.nspname::text || '.' || t.relname::text
             FROM pg_depend d
             LEFT JOIN pg_attrdef a ON d.classid = 'pg_attrdef'::regclass AND a.oid = d.objid
             JOIN pg_class t ON t.oid = CASE WHEN d.classid = 'pg_attrdef'::regclass
                                             THEN a.adrelid ELSE d.refobjid END
             JOIN pg_namespace tn ON tn.oid = t.relnamespace
             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                OR d.classid = 'pg_attrdef'::regclass
                   AND d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid)
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%'
  AND n.oid <> pg_my_temp_schema() AND NOT pg_is_other_temp_schema(n.oid)
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
ORDER BY 2, 3
"""

# the source's WAL position and its logical slots: how far a subscription lags
SOURCE_SLOTS = """
SELECT slot_name::text,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END, confirmed_flush_lsn)::int8
FROM pg_replication_slots
WHERE slot_type = 'logical' AND database = current_database()
"""

# PostgreSQL 19 publications FOR ALL SEQUENCES (to_jsonb: the column is absent before 19)
ALL_SEQUENCES_PUBLICATIONS = """
SELECT p.pubname::text FROM pg_publication p
WHERE coalesce((to_jsonb(p) ->> 'puballsequences')::boolean, false)
"""

# the target's subscriptions (subconninfo is not readable by every role: never read)
SUBSCRIPTIONS = """
SELECT s.subname::text, s.subenabled, s.subslotname::text, s.subpublications::text[],
       EXISTS (SELECT FROM pg_stat_subscription w
               WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL),
       (SELECT max(w.received_lsn)::text FROM pg_stat_subscription w
        WHERE w.subid = s.oid AND w.relid IS NULL),
       (SELECT max(w.last_msg_receipt_time)::text FROM pg_stat_subscription w
        WHERE w.subid = s.oid AND w.relid IS NULL),
       ARRAY(SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_subscription_rel r
             JOIN pg_class c ON c.oid = r.srrelid AND c.relkind IN ('r', 'p')
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE r.srsubid = s.oid ORDER BY 1),
       (SELECT count(*)::int FROM pg_subscription_rel r
        JOIN pg_class c ON c.oid = r.srrelid AND c.relkind IN ('r', 'p')
        WHERE r.srsubid = s.oid AND r.srsubstate <> 'r')
FROM pg_subscription s
WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY 1
"""

REFRESH_SEQUENCES_VERSION = 190000


def parse_schema_map(items: Iterable[str]) -> dict[str, str]:
    """``SOURCE=TARGET`` pairs, as ``--map-schema`` takes them; ValueError says why not."""
    mapping: dict[str, str] = {}
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise ValueError(f"expected SOURCE=TARGET (a schema on each side), not {item!r}")
        if source in mapping and mapping[source] != target:
            raise ValueError(
                f"schema {source!r} is mapped twice: to {mapping[source]!r} and {target!r}"
            )
        mapping[source] = target
    targets = list(mapping.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ValueError(f"two source schemas are mapped to {twice[0]!r}")
    return mapping


@dataclass(frozen=True)
class _Side:
    """One database's sequences, by (schema, name), with their states."""

    sequences: dict[tuple[str, str], PgSequence]
    states: dict[int, SequenceState | ReadFailure]
    denied: frozenset[int]  # the role may not read them
    quoted: dict[int, tuple[str, str]]  # schema and name, quoted where SQL needs it
    version: int
    users: dict[int, tuple[tuple[str, str], ...]]  # (schema, table) of the tables using it


def _read_side(session: Session, schemas: list[str] | None) -> _Side:
    rows = session.run(SEQUENCES, {"schemas": schemas})
    sequences: dict[tuple[str, str], PgSequence] = {}
    denied: set[int] = set()
    quoted: dict[int, tuple[str, str]] = {}
    users: dict[int, tuple[tuple[str, str], ...]] = {}
    for row in rows:
        oid, schema, name, qualified, q_schema, q_name, data_type, start, inc, lo, hi = row[:11]
        cycle, readable, tables = row[11:]
        seq = PgSequence(
            int(oid), schema, name, qualified, data_type, start, inc, lo, hi, bool(cycle)
        )
        sequences[(schema, name)] = seq
        quoted[seq.oid] = (q_schema, q_name)
        users[seq.oid] = tuple(_split_table(t) for t in tables or ())
        if not readable:
            denied.add(seq.oid)
    states = read_sequence_states(session, [s for s in sequences.values() if s.oid not in denied])
    return _Side(sequences, states, frozenset(denied), quoted, session._server_version(), users)


def _split_table(qualified: str) -> tuple[str, str]:
    schema, _, table = qualified.partition(".")
    return schema, table


def compare(
    target: Any,
    source: Any,
    options: CheckOptions,
    *,
    schema_map: Mapping[str, str] | None = None,
) -> Cutover:
    """The target's check, and each of its sequences compared with the source's.

    ``target`` and ``source`` are connections (any that ``check()`` takes). Sequences
    are matched by schema and name; ``schema_map`` maps a source schema to the target's
    name for it. ``options.schemas`` are the target's schemas (the source's are found
    through the map). Raises ``CannotCheck`` when the source has sequences but not one
    can be read."""
    mapping = dict(schema_map or {})
    inverse = {t: s for s, t in mapping.items()}
    source_schemas = (
        None if options.schemas is None else [inverse.get(t, t) for t in options.schemas]
    )
    with (
        open_session(source) as session,
        session.read_only(
            lock_timeout_ms=options.lock_timeout_ms,
            statement_timeout_ms=options.statement_timeout_ms,
        ),
    ):
        src = _read_side(session, source_schemas)
        unread: list[str] = []
        slot_rows = _optional(session, SOURCE_SLOTS, "the source's replication slots", unread)
        slots = {str(name): lag for name, lag in slot_rows}
        all_sequences = {
            str(r[0])
            for r in _optional(
                session, ALL_SEQUENCES_PUBLICATIONS, "the source's publications", unread
            )
        }
        source_label = _label(session)
        source_id = session.database_id()
    readable = [s for s in src.sequences.values() if s.oid not in src.denied]
    if src.sequences and not any(
        not isinstance(src.states.get(s.oid), ReadFailure) for s in readable
    ):
        raise CannotCheck(
            f"cannot read the source's sequences ({len(src.sequences)} there, none readable "
            "by this role: SELECT on them is needed)"
        )
    report = checker.run(target, options)
    with (
        open_session(target) as session,
        session.read_only(
            lock_timeout_ms=options.lock_timeout_ms,
            statement_timeout_ms=options.statement_timeout_ms,
        ),
    ):
        tgt = _read_side(session, None if options.schemas is None else list(options.schemas))
        subscriptions = _subscriptions(session, slots, all_sequences, tgt.version, unread)
        target_label = _label(session)
        if session.database_id() == source_id:
            raise CannotCheck(
                f"the source and the target are one database ({target_label}): "
                "--source names the database the target was copied from"
            )
        names = sorted({*mapping, *mapping.values()})
        quoted: dict[str, str] = dict(
            session.run("SELECT x, quote_ident(x) FROM unnest(%s::text[]) AS x", [names])
        )
    compared = _compare(
        src, tgt, mapping, inverse, _fed_columns(report), quoted, options.exclude_tables
    )
    return Cutover(report, compared, subscriptions, source_label, target_label, unread)


def _optional(session: Session, query: str, what: str, unread: list[str]) -> list[Any]:
    """Rows the comparison can do without (replication's state): where the role may
    not read them, say so in ``unread`` and go on."""
    try:
        with session.savepoint("seqdrift_optional"):
            return list(session.run(query))
    except session.Error as exc:
        unread.append(f"could not read {what}: {error_line(exc)}")
        return []


def _label(session: Session) -> str:
    ((db, host, port, user),) = session.run(
        "SELECT current_database()::text, coalesce(inet_server_addr()::text, 'local socket'),"
        " coalesce(inet_server_port(), 0), current_user::text"
    )
    where = host.split("/")[0] if port == 0 else f"{host.split('/')[0]}:{port}"
    return f"database {db} on {where} as {user}"


def _fed_columns(report: Report) -> dict[str, list[str]]:
    """The target's columns each sequence feeds, by its qualified name."""
    fed: dict[str, list[str]] = {}
    for c in report.checked:
        fed.setdefault(c.sequence.qualified, []).append(c.column.label)
    for s in report.skipped:
        fed.setdefault(s.sequence, []).append(f"{s.schema}.{s.table}.{s.column}")
    return {k: sorted(set(v)) for k, v in fed.items()}


def _compare(
    src: _Side,
    tgt: _Side,
    mapping: Mapping[str, str],
    inverse: Mapping[str, str],
    fed: Mapping[str, list[str]],
    quoted: Mapping[str, str],
    exclude_tables: Iterable[str] = (),
) -> list[Compared]:
    patterns = list(exclude_tables)

    def excluded(users: Iterable[tuple[str, str]], on_source: bool = False) -> bool:
        """A sequence every table of which ``exclude_tables`` leaves out is left out too
        (one that no table uses is compared: nothing excludes it). The patterns name the
        target's tables: a source table's schema is mapped first."""
        tables = [((target_schema(s) or s) if on_source else s, t) for s, t in users]
        return bool(patterns and tables) and all(excluded_table(s, t, patterns) for s, t in tables)

    def target_schema(schema: str) -> str | None:
        if schema in mapping:
            return mapping[schema]
        return None if schema in inverse else schema  # mapped onto: that one is compared

    def source_schema(schema: str) -> str | None:
        if schema in inverse:
            return inverse[schema]
        return None if schema in mapping else schema

    out: list[Compared] = []
    for (schema, name), s in src.sequences.items():
        to = target_schema(schema)
        if to is None:
            continue
        t = tgt.sequences.get((to, name))
        if excluded(tgt.users[t.oid]) if t is not None else excluded(src.users[s.oid], True):
            continue
        if t is None:
            q_schema, q_name = src.quoted[s.oid]
            qualified = f"{quoted.get(to, q_schema)}.{q_name}"
            out.append(
                Compared(
                    qualified,
                    s.qualified,
                    to,
                    name,
                    "missing on target",
                    source_next_value=_next(src, s),
                )
            )
            continue
        out.append(_one(s, t, src, tgt, tuple(fed.get(t.qualified, ()))))
    for (schema, name), t in tgt.sequences.items():
        back = source_schema(schema)
        if back is None or (back, name) in src.sequences or excluded(tgt.users[t.oid]):
            continue
        out.append(
            Compared(
                t.qualified,
                f"{quoted.get(back, tgt.quoted[t.oid][0])}.{tgt.quoted[t.oid][1]}",
                schema,
                name,
                "missing on source",
                next_value=_next(tgt, t),
                columns=tuple(fed.get(t.qualified, ())),
                target=t,
            )
        )
    out.sort(key=lambda c: (c.schema, c.name))
    return out


def _state(side: _Side, seq: PgSequence) -> SequenceState | str:
    """The sequence's state, or why it could not be read."""
    if seq.oid in side.denied:
        return f"permission denied: cannot SELECT from sequence {seq.qualified}"
    state = side.states.get(seq.oid)
    if state is None:
        return f"sequence {seq.qualified} was not read"
    if isinstance(state, ReadFailure):
        return state.message
    return state


def _next(side: _Side, seq: PgSequence) -> int | None:
    state = _state(side, seq)
    return None if isinstance(state, str) else drift.next_value(seq, state)


def _one(
    s: PgSequence, t: PgSequence, src: _Side, tgt: _Side, columns: tuple[str, ...]
) -> Compared:
    def entry(status: Any, **more: Any) -> Compared:
        return Compared(
            t.qualified, s.qualified, t.schema, t.name, status, columns=columns, target=t, **more
        )

    s_state, t_state = _state(src, s), _state(tgt, t)
    if isinstance(s_state, str):
        return entry("skipped", note=f"on the source: {s_state}")
    if isinstance(t_state, str):
        return entry("skipped", note=f"on the target: {t_state}")
    t_next = drift.next_value(t, t_state)
    s_next = drift.next_value(s, s_state)
    # an exhausted source has handed out everything up to its own limit
    beyond = (
        s_next
        if s_next is not None
        else (s.max_value if s.increment > 0 else s.min_value) + s.increment
    )
    numbers: dict[str, Any] = {
        "next_value": t_next,
        "source_next_value": s_next,
        "source_beyond": beyond,
        "target_state": t_state,
    }
    if (s.increment > 0) != (t.increment > 0):
        return entry(
            "skipped", note="the source and the target count in opposite directions", **numbers
        )
    notes = []
    if s.cycle:
        notes.append(
            "the source's sequence cycles: it may have handed out values past its next one"
        )
    if t_next is None:
        notes.append("the target's sequence is exhausted")
        return entry("ok", note="; ".join(notes), **numbers)
    if drift.forward(t, t_next) >= drift.forward(t, beyond):
        return entry("ok", note="; ".join(notes) or None, **numbers)
    value = source_target(t, beyond, 0)
    fix_sql = (
        fixsql.setval_at_least(t, value)
        if value is not None
        else fixsql.comment(
            f"the target's sequence {t.qualified} cannot reach the source's next value "
            f"{beyond}: its limit lies before it; consider ALTER SEQUENCE ... "
            f"{'MAXVALUE' if t.increment > 0 else 'MINVALUE'}"
        )
    )
    return entry(
        "behind",
        behind_by=abs(beyond - t_next),
        fix_sql=fix_sql,
        note="; ".join(notes) or None,
        **numbers,
    )


def source_target(seq: PgSequence, source_next: int, margin: int) -> int | None:
    """The value to ``setval`` the target's sequence to so that its next value is the
    source's next value, ``margin`` values further on (or as far as its range allows);
    None when its limit lies before the source's next value itself."""
    sign = 1 if seq.increment > 0 else -1
    if not seq.min_value <= source_next <= seq.max_value:
        return None
    # the next value it must hand out, at least: the margin as far as the range allows
    wanted = source_next + sign * margin
    wanted = min(wanted, seq.max_value) if sign > 0 else max(wanted, seq.min_value)
    value = wanted - seq.increment  # setval(v): the next value is v + increment
    # the wanted value lies within one increment of the range's start: setval to the
    # start makes the next value the start plus one increment, further on still
    return max(value, seq.min_value) if sign > 0 else min(value, seq.max_value)


def _subscriptions(
    session: Session,
    slots: Mapping[str, int | None],
    all_sequences: set[str],
    version: int,
    unread: list[str],
) -> list[Subscription]:
    out = []
    rows = _optional(session, SUBSCRIPTIONS, "the target's subscriptions", unread)
    for name, enabled, slot, pubs, running, received, last, tables, not_ready in rows:
        on_source = slot is not None and slot in slots
        out.append(
            Subscription(
                name=name,
                enabled=bool(enabled),
                worker_running=bool(running),
                tables=tuple(tables or ()),
                tables_not_ready=int(not_ready or 0),
                received_lsn=received,
                lag_bytes=slots[slot] if on_source else None,
                last_message_at=last,
                slot_on_source=on_source,
                refresh_sequences=version >= REFRESH_SEQUENCES_VERSION
                and bool(set(pubs or ()) & all_sequences),
            )
        )
    return out
