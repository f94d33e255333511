"""What does ``acheck()`` cost against ``check()`` on the same database, in the same run?

One database of N sequence-backed tables (bench_check.py's: serial and identity columns,
a few drifted). Timed, median of --repeat runs each, the baseline first:

(a) ``check()`` on a psycopg 3 connection (the baseline);
(b) ``await acheck()`` on an asyncpg connection, a psycopg ``AsyncConnection`` and a
    SQLAlchemy ``AsyncEngine`` (asyncpg dialect) -- the same engine in a worker thread,
    each statement on the event loop;

and prints each as a ratio to (a). The statements are the same by design (counted by
tests/test_async.py); asyncpg waits twice per statement (it prepares, then executes).
``--busy N`` runs N processes that keep a CPU busy meanwhile, as on a shared machine.

    python benchmarks/bench_async.py                  # N = 100 and 1000
    python benchmarks/bench_async.py --busy 2         # the same on a busy machine

It starts a throwaway PostgreSQL of its own unless --dsn is given.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import asyncpg
import psycopg
from bench_check import build, timed
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_seqdrift import acheck, check
from pytest_seqdrift.testbed import throwaway_server


async def timed_async(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    await fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def url_of(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    who = str(params["user"]) + (f":{params['password']}" if params.get("password") else "")
    return f"postgresql://{who}@{params['host']}:{params['port']}/{params['dbname']}"


async def measure_async(dsn: str, repeat: int) -> dict[str, tuple[float, int]]:
    url = url_of(dsn)
    out: dict[str, tuple[float, int]] = {}
    conn = await asyncpg.connect(url)
    try:
        findings = len((await acheck(conn)).findings)
        out["asyncpg"] = (await timed_async(lambda: acheck(conn), repeat), findings)
    finally:
        await conn.close()
    aconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        findings = len((await acheck(aconn)).findings)
        out["psycopg AsyncConnection"] = (
            await timed_async(lambda: acheck(aconn), repeat),
            findings,
        )
    finally:
        await aconn.close()
    engine = create_async_engine(url.replace("postgresql:", "postgresql+asyncpg:"))
    try:
        findings = len((await acheck(engine)).findings)
        out["SQLAlchemy AsyncEngine (asyncpg)"] = (
            await timed_async(lambda: acheck(engine), repeat),
            findings,
        )
    finally:
        await engine.dispose()
    return out


def measure(dsn: str, n: int, rows: int, repeat: int) -> None:
    build(dsn, n, rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        findings = len(check(conn).findings)
        base = timed(lambda: check(conn), repeat)
    print(f"\n{n} tables x {rows} rows ({findings} drifted), median of {repeat}:")
    print(f"  {'check() on psycopg 3 (baseline)':<36} {base * 1000:8.1f} ms   1.00x")
    for name, (seconds, found) in asyncio.run(measure_async(dsn, repeat)).items():
        same = "" if found == findings else f"  (found {found}, not {findings}!)"
        print(
            f"  {'acheck() on ' + name:<36} {seconds * 1000:8.1f} ms  {seconds / base:5.2f}x{same}"
        )


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy(n: int) -> Iterator[None]:
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for h in hogs:
        h.start()
    try:
        yield
    finally:
        for h in hogs:
            h.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing server (a schema 'bench' is created)")
    parser.add_argument("--tables", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rows", type=int, default=1000, help="rows per table")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--busy", type=int, default=0, help="CPU hogs to run meanwhile")
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, psycopg {psycopg.__version__}, "
        f"asyncpg {asyncpg.__version__}, busy processes: {args.busy}"
    )

    def run(dsn: str) -> None:
        with busy(args.busy):
            for n in args.tables:
                measure(dsn, n, args.rows, args.repeat)

    if args.dsn:
        run(args.dsn)
        return 0
    with throwaway_server("seqdrift_bench", "-c max_locks_per_transaction=1024") as dsn:
        run(dsn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
