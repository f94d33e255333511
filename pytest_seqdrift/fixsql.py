"""SQL that fixes a finding: a ``setval`` that never moves a sequence backwards.

Every statement is composed with psycopg's ``sql`` module, so names with quotes,
spaces, capitals or unicode come out quoted and cannot inject SQL. Pure: no I/O.
"""

from __future__ import annotations

from psycopg import sql

from pytest_seqdrift.model import (
    INT_RANGES,
    Bounds,
    Column,
    FindingKind,
    PgSequence,
    SequenceState,
    printable,
)


def _text(composed: sql.Composable) -> str:
    return composed.as_string(None)


def _number(value: int) -> sql.SQL:
    """An integer as the digits people read in a fix script: ``sql.Literal`` would be
    the driver's literal, which may carry a cast. Only ever an ``int``: never a text."""
    return sql.SQL(str(int(value)))


def seq_ident(seq: PgSequence) -> sql.Identifier:
    return sql.Identifier(seq.schema, seq.name)


def table_ident(column: Column) -> sql.Identifier:
    return sql.Identifier(column.schema, column.table)


def _escaped(text: str, quote: str) -> str | None:
    """``text`` as a Unicode-escape token (``U&"..."`` for a name, ``U&'...'`` for a
    string) when it holds a character that is not printable, else None. A script run by
    ``psql -f`` must not carry such characters raw: psql drops a carriage return before
    a line break, and the name would no longer match."""
    if all(ch.isprintable() or ch == " " for ch in text):
        return None
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append(quote * 2)
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) > 0xFFFF:
            out.append(f"\\+{ord(ch):06X}")
        else:
            out.append(f"\\{ord(ch):04X}")
    return f"U&{quote}{''.join(out)}{quote}"


def _name(*parts: str) -> sql.Composable:
    """A (qualified) name, quoted; escaped where it holds unprintable characters."""
    escaped = [_escaped(p, '"') for p in parts]
    if all(e is None for e in escaped):
        return sql.Identifier(*parts)
    return sql.SQL(".").join(
        sql.SQL(e) if e is not None else sql.Identifier(p)
        for p, e in zip(parts, escaped, strict=True)
    )


def _string(text: str) -> sql.Composable:
    escaped = _escaped(text, "'")
    return sql.Literal(text) if escaped is None else sql.SQL(escaped)


def setval_at_least(seq: PgSequence, value: int) -> str:
    """Make the next value lie beyond ``value`` in the sequence's direction, unless the
    sequence already stands further on. Reading ``last_value`` in the same statement
    means the script stays safe when run later: it can only move the sequence forward.

    ``setval(s, v)`` (is_called true) makes the next value ``v + increment``. When the
    sequence is further on but not yet called, this skips one value: a harmless gap.

    A CYCLE sequence whose next ``nextval`` wraps stands *before* MINVALUE (MAXVALUE),
    whatever its ``last_value`` says: then ``value`` itself is the way forward.
    """
    pick = "GREATEST" if seq.increment > 0 else "LEAST"
    target = sql.SQL("{pick}({value}, last_value)").format(pick=sql.SQL(pick), value=_number(value))
    if seq.cycle:
        # is_called and last_value + increment past the limit: the next call wraps
        if seq.increment > 0:
            wraps = sql.SQL("last_value > {}").format(_number(seq.max_value - seq.increment))
        else:
            wraps = sql.SQL("last_value < {}").format(_number(seq.min_value - seq.increment))
        target = sql.SQL("CASE WHEN is_called AND {wraps} THEN {value} ELSE {target} END").format(
            wraps=wraps, value=_number(value), target=target
        )
    return _text(
        sql.SQL("SELECT setval({seq}, {target}) FROM {ident};").format(
            seq=_string(seq.qualified), target=target, ident=_name(seq.schema, seq.name)
        )
    )


def _room_after(seq: PgSequence, column: Column, value: int) -> bool:
    """Is there a storable value after ``value`` for the sequence to hand out?"""
    after = value + seq.increment
    if not seq.min_value <= after <= seq.max_value:
        return False
    type_range = column.type_range
    return type_range is None or type_range[0] <= after <= type_range[1]


def collision_target(
    column: Column, seq: PgSequence, bounds: Bounds, *, margin: int = 0
) -> int | None:
    """The value to ``setval`` the sequence to so that its walk continues past every
    existing value; None when no value is left for it to hand out.

    That is the max existing value (the min, for a negative increment), plus ``margin``
    ids of headroom as far as the range leaves room for one more value. When no value is
    left past the max, and the increment is above 1, the max may be off the walk's grid:
    past the last existing value *on* the grid the walk is free (no headroom there).
    """
    top = bounds.top
    if top is None:  # a collision is with an existing value: never without one
        raise ValueError(f"no existing value in {column.label} to move {seq.qualified} past")
    if _room_after(seq, column, top):
        return _headroom(seq, column, top, margin)
    on_grid = bounds.last_on_grid
    if on_grid is not None and _room_after(seq, column, on_grid):
        return on_grid
    return None


def _headroom(seq: PgSequence, column: Column, value: int, margin: int) -> int:
    """``value`` moved ``margin`` ids on in the sequence's direction, but no further than
    the last value that leaves room for one more (``value`` itself leaves room)."""
    if margin <= 0:
        return value
    lo, hi = seq.min_value, seq.max_value
    type_range = column.type_range
    if type_range is not None:
        lo, hi = max(lo, type_range[0]), min(hi, type_range[1])
    if seq.increment > 0:
        return min(value + margin, hi - seq.increment)
    return max(value - margin, lo - seq.increment)


def for_collision(
    column: Column,
    seq: PgSequence,
    state: SequenceState,
    bounds: Bounds,
    *,
    after_wrap: bool,
    margin: int = 0,
) -> str:
    """The fix of a collision: a ``setval`` past the existing values (see
    ``collision_target``; ``margin`` ids of headroom), or, where none can help, the
    ``ALTER SEQUENCE`` to consider, commented out."""
    if after_wrap:
        limit = "MAXVALUE" if seq.increment > 0 else "MINVALUE"
        return comment(
            f"{seq.qualified} is CYCLE: past {limit} it wraps and hands out ids the table "
            "already holds; moving it forward cannot prevent that. Widen it instead:",
            _text(_widen(seq)),
        )
    target = collision_target(column, seq, bounds, margin=margin)
    if target is not None:
        return setval_at_least(seq, target)
    return comment(
        f"no value is left beyond the existing {bounds.top} in {seq.qualified}; widen it first:",
        _text(_widen(seq)),
    )


def comment(*lines: str) -> str:
    """SQL comment lines. A quoted name may hold a line break (PostgreSQL allows it):
    each line is made printable first, so no name can end the comment and run as SQL,
    nor reach the terminal of whoever reads the script."""
    return "\n".join("-- " + printable(line) for line in lines)


def _widen(seq: PgSequence) -> sql.Composed:
    """Commented-out advice: its names escaped as in the statements that run
    (``_name``), so that it names the right sequence once uncommented."""
    lo, hi = INT_RANGES["bigint"]
    bound = sql.SQL("MAXVALUE {}").format(_number(hi))
    if seq.increment < 0:
        bound = sql.SQL("MINVALUE {}").format(_number(lo))
    return sql.SQL("ALTER SEQUENCE {} AS bigint {};").format(_name(seq.schema, seq.name), bound)


def for_capacity(column: Column, seq: PgSequence, kind: FindingKind) -> str:
    """Overflow and exhaustion are not fixed by ``setval``: say what to do, commented."""
    steps: list[sql.Composable] = []
    if kind == "overflow" or column.data_type in ("smallint", "integer"):
        steps.append(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE bigint;").format(
                _name(column.schema, column.table), _name(column.column)
            )
        )
    if kind == "exhaustion" or seq.data_type != "bigint":
        steps.append(_widen(seq))
    if column.data_type == "bigint" and seq.data_type == "bigint" and kind == "exhaustion":
        limit = seq.max_value if seq.increment > 0 else seq.min_value
        if abs(limit) >= INT_RANGES["bigint"][1]:
            return comment(
                "the sequence is at the end of bigint: no wider type exists; re-key the table"
            )
    return comment(
        "not fixable by setval; widen the type instead:", *(_text(step) for step in steps)
    )
