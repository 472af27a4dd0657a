"""QueryReplies.parsed: every reply parsed, every hospital left out named once."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, RecordDict

from app.server.queries import QueryReplies


def test_parsed_keeps_good_replies_and_names_the_rest_once(caplog):
    def content(value):
        return RecordDict({"r": ConfigRecord({"v": value})})

    def parse(reply):
        value = reply.config_records["r"]["v"]
        if value < 0:
            raise ValueError("negative")
        return value

    asked = QueryReplies(
        replies={"a": content(1), "b": content(-1)}, failed={"c": "no reply"}
    )
    with caplog.at_level(logging.WARNING):
        values, failed = asked.parsed(parse, malformed="malformed x", label="X")
    assert values == {"a": 1}
    assert failed == {"b": "malformed x: negative", "c": "no reply"}
    assert asked.failed == {"c": "no reply"}  # the replies themselves untouched
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "X: b left out (malformed x: negative).",
        "X: c left out (no reply).",
    ]
