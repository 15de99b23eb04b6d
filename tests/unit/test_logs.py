"""JSON log lines carry the call and transfer ids of the context they were logged in."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from warmtransfer.server.logs import JsonFormatter, log_context


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_context_ids(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("outside")
    with log_context(call_id="c-1"):
        logger.info("in the call\nover two lines")
        with log_context(transfer_id="t-9"):
            logger.warning("in the transfer %s", 42, extra={"target": "sip:alice@x"})
        logger.info("back in the call")
    out = lines(stream)
    assert len(out) == 4  # the newline in a message did not split a line
    assert [(o["call_id"], o["transfer_id"]) for o in out] == [
        (None, None),
        ("c-1", None),
        ("c-1", "t-9"),
        ("c-1", None),
    ]
    assert out[1]["message"] == "in the call\nover two lines"
    assert out[2]["message"] == "in the transfer 42"
    assert out[2]["level"] == "WARNING" and out[2]["logger"] == "test.logs"
    assert out[2]["target"] == "sip:alice@x"
    assert str(out[0]["time"]).endswith("+00:00")


def test_an_exception_is_in_the_same_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    with log_context(call_id="c-2"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    (line,) = lines(stream)
    assert "RuntimeError: boom" in str(line["exception"]) and line["call_id"] == "c-2"


async def test_tasks_spawned_inside_the_context_carry_its_ids(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    gate = asyncio.Event()

    async def worker(name: str) -> None:
        await gate.wait()  # runs after the block below has exited
        logger.info(name)

    with log_context(call_id="c-a", transfer_id="t-a"):
        first = asyncio.create_task(worker("a"))
    with log_context(call_id="c-b"):
        second = asyncio.create_task(worker("b"))
    logger.info("main")
    gate.set()
    await asyncio.gather(first, second)
    by_message = {o["message"]: (o["call_id"], o["transfer_id"]) for o in lines(stream)}
    assert by_message == {"a": ("c-a", "t-a"), "b": ("c-b", None), "main": (None, None)}


async def test_text_lines_cannot_be_forged_through_what_they_quote() -> None:
    """`serve --log-format text`: the HTTP API logs the call id of a refused transfer, URL-
    decoded from the path; a %0A in it must not start a line of its own."""
    import httpx

    from tests.unit.test_http_api import ALLOW, AUTH, BRIEFING, TOKEN, MemoryService
    from warmtransfer.server.http import HttpApi
    from warmtransfer.server.logs import install_text_logging

    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = install_text_logging(logging.INFO, stream)
    api = await HttpApi(MemoryService(), token=TOKEN, plans={}, allow=ALLOW, port=0).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            response = await client.post(
                "/v1/calls/c1%0A2026-01-01 00:00:00,000 warmtransfer forged/transfers",
                headers=AUTH,
                json={"plan": {"targets": [{"uri": "sip:x@evil.example"}]}, "briefing": BRIEFING},
            )
        assert response.status_code == 403
        try:
            raise ValueError("boom\nforged too")
        except ValueError:
            logging.getLogger("test.text_logs").exception("failed")
    finally:
        await api.stop()
        root.removeHandler(handler)
        root.setLevel(level)
    refused = [line for line in stream.getvalue().splitlines() if "refused a transfer" in line]
    assert len(refused) == 1 and "c1\\n2026-01-01 00:00:00,000 warmtransfer forged" in refused[0]
    assert not any(line.startswith("2026-01-01") for line in stream.getvalue().splitlines())
    trace = stream.getvalue().split("failed\n", 1)[1].splitlines()
    assert trace and all(line.startswith("    ") for line in trace)  # none passes for a record
