"""unique_name: DNS-1123, bounded length, random suffix."""

from __future__ import annotations

import re

import pytest

from controller.testing.names import MAX_LENGTH, unique_name

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("cache", id="plain"),
        pytest.param("Test_Thing[param-1]", id="pytest-node-name"),
        pytest.param("x" * 100, id="too-long"),
        pytest.param("--a--", id="dashes"),
        pytest.param("", id="empty"),
        pytest.param("___", id="nothing-left"),
    ],
)
def test_unique_name_is_short_dns_label(prefix: str) -> None:
    name = unique_name(prefix)

    assert DNS_1123_LABEL.match(name), name
    assert len(name) <= MAX_LENGTH
    assert re.search(r"-[0-9a-f]{6}$", name)


def test_unique_name_keeps_readable_prefix() -> None:
    assert unique_name("Test_Thing").startswith("test-thing-")


def test_unique_name_differs_each_call() -> None:
    assert len({unique_name("same") for _ in range(100)}) == 100
