"""Databases handed to a test as async objects (an asyncpg connection, a SQLAlchemy
``AsyncEngine`` or ``AsyncSession`` ...): they can only be used on the event loop the
test runs on, and only while it runs. pytest-asyncio and anyio both run a test by
calling ``item.obj`` on their loop, so for the call the test function is wrapped: its
set-up's check runs first and its probe after the body, in the test's own coroutine --
its loop, its task, its connection and its uncommitted rows. The plugin's synchronous
code runs in a worker thread meanwhile (``db.adapters.in_thread``), never a loop of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from pytest_seqdrift.db.adapters import is_async_object, open_async_session
from pytest_seqdrift.plugin.locate import Located


def asynchronous(databases: list[Located]) -> list[Located]:
    return [d for d in databases if is_async_object(d.connection)]


def wrappable(item: pytest.Item) -> bool:
    """The test is a coroutine function, run by pytest-asyncio or anyio."""
    obj = getattr(item, "obj", None)
    return inspect.iscoroutinefunction(obj) and not hasattr(obj, "hypothesis")


def in_sync_test(located: Located) -> str:
    return (
        f"{located.source} returned an async object ({type(located.connection).__name__}) "
        "to a test that is not a coroutine: it is checked only in async tests "
        "(pytest-asyncio or anyio)"
    )


async def with_sessions(databases: list[Located], work: Callable[[list[Located]], Any]) -> Any:
    """``work`` on each database as a session, in a worker thread: every statement runs
    on this (the test's) loop."""
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            Located(
                await stack.enter_async_context(open_async_session(d.connection)),
                d.source,
                d.test_database,
            )
            for d in databases
        ]
        return await asyncio.to_thread(work, sessions)


@contextlib.contextmanager
def wrapped_body(
    item: Any,
    before: Callable[[], Awaitable[None]],
    after: Callable[[], Awaitable[None]],
) -> Iterator[None]:
    """For the call: ``item.obj`` awaits ``before()``, the test's body, then
    ``after()`` (not when the body raised: there is no probe after a failed body)."""
    original = item.obj

    @functools.wraps(original)
    async def body(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        await before()
        result = await original(*args, **kwargs)
        await after()
        return result

    item.obj = body
    try:
        yield
    finally:
        item.obj = original
