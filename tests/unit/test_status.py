"""Status enums, node status mapping, copies and conditions (controller/api/status.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from controller.api.status import (
    CONDITION_READY,
    ModelStatus,
    NodeStatus,
    copies,
    find_condition,
    format_time,
    node_status_from_model_status,
    set_condition,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
EARLIER = "2026-01-01T00:00:00Z"


def stored(type: str, status: str, reason: str = "Stored") -> dict:
    """A condition as read back from the API server."""
    return {
        "type": type,
        "status": status,
        "reason": reason,
        "message": reason.lower(),
        "lastTransitionTime": EARLIER,
    }


def test_node_status_values_are_kserves():
    assert [status.value for status in NodeStatus] == [
        "",
        "NodeNotReady",
        "NodeDownloadPending",
        "NodeDownloading",
        "NodeDownloaded",
        "NodeDownloadError",
    ]


def test_model_status_values_are_kserves():
    assert [status.value for status in ModelStatus] == [
        "",
        "ModelDownloadPending",
        "ModelDownloading",
        "ModelDownloaded",
        "ModelDownloadError",
    ]


def test_status_enums_compare_and_serialise_as_plain_strings():
    assert NodeStatus.DOWNLOADED == "NodeDownloaded"
    assert f"{ModelStatus.DOWNLOAD_ERROR}" == "ModelDownloadError"
    assert {"n1": NodeStatus.DOWNLOADED} == {"n1": "NodeDownloaded"}


@pytest.mark.parametrize(
    ("model_status", "node_status"),
    [
        pytest.param("ModelDownloadPending", NodeStatus.DOWNLOAD_PENDING, id="pending"),
        pytest.param("ModelDownloading", NodeStatus.DOWNLOADING, id="downloading"),
        pytest.param("ModelDownloaded", NodeStatus.DOWNLOADED, id="downloaded"),
        pytest.param("ModelDownloadError", NodeStatus.DOWNLOAD_ERROR, id="error"),
        pytest.param(ModelStatus.DOWNLOADED, NodeStatus.DOWNLOADED, id="enum-member"),
        pytest.param("", NodeStatus.DOWNLOAD_PENDING, id="empty"),
        pytest.param(None, NodeStatus.DOWNLOAD_PENDING, id="absent"),
        pytest.param("SomethingElse", NodeStatus.DOWNLOAD_PENDING, id="unknown"),
    ],
)
def test_node_status_from_model_status(model_status, node_status):
    assert node_status_from_model_status(model_status) is node_status


@pytest.mark.parametrize(
    ("node_status", "expected"),
    [
        pytest.param({}, {"available": 0, "total": 0, "failed": 0}, id="no-nodes"),
        pytest.param(
            {"n1": "NodeDownloaded", "n2": "NodeDownloaded"},
            {"available": 2, "total": 2, "failed": 0},
            id="all-downloaded",
        ),
        pytest.param(
            {
                "n1": "NodeDownloaded",
                "n2": "NodeDownloadError",
                "n3": "NodeNotReady",
                "n4": "NodeDownloading",
                "n5": "NodeDownloadPending",
                "n6": "",
            },
            {"available": 1, "total": 6, "failed": 1},
            id="mixed-counts-every-node-in-total",
        ),
        pytest.param(
            {"n1": NodeStatus.DOWNLOAD_ERROR, "n2": NodeStatus.DOWNLOAD_ERROR},
            {"available": 0, "total": 2, "failed": 2},
            id="enum-values",
        ),
    ],
)
def test_copies(node_status, expected):
    assert copies(node_status) == expected


def test_set_condition_adds_a_new_condition():
    result = set_condition(
        [],
        type=CONDITION_READY,
        status="False",
        reason="Downloading",
        message="1 of 2 nodes have the model",
        observed_generation=3,
        now=T0,
    )
    assert result == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Downloading",
            "message": "1 of 2 nodes have the model",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 3,
        }
    ]


def test_set_condition_keeps_transition_time_when_status_unchanged():
    first = set_condition(
        None, type="Ready", status="False", reason="A", message="a", observed_generation=1, now=T0
    )
    second = set_condition(
        first, type="Ready", status="False", reason="B", message="b", observed_generation=2, now=T1
    )
    assert second == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "B",
            "message": "b",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
            "observedGeneration": 2,
        }
    ]


def test_set_condition_moves_transition_time_when_status_changes():
    first = set_condition(
        None, type="Ready", status="False", reason="A", message="a", observed_generation=1, now=T0
    )
    second = set_condition(
        first, type="Ready", status="True", reason="B", message="b", observed_generation=1, now=T1
    )
    assert second[0]["lastTransitionTime"] == "2026-01-02T03:09:05Z"
    assert second[0]["status"] == "True"


def test_set_condition_does_not_modify_its_input():
    original = [stored("Ready", "False"), stored("Other", "True")]
    snapshot = [dict(condition) for condition in original]
    result = set_condition(
        original,
        type="Ready",
        status="True",
        reason="B",
        message="b",
        observed_generation=None,
        now=T1,
    )
    assert original == snapshot
    assert result is not original
    assert result[1] is not original[1]


def test_set_condition_keeps_other_conditions_and_their_order():
    existing = [stored("Other", "True"), stored("Ready", "False"), stored("Third", "Unknown")]
    result = set_condition(
        existing,
        type="Ready",
        status="True",
        reason="B",
        message="b",
        observed_generation=4,
        now=T1,
    )
    assert [condition["type"] for condition in result] == ["Other", "Ready", "Third"]
    assert result[0] == existing[0]
    assert result[2] == existing[2]


def test_set_condition_collapses_duplicate_types():
    existing = [stored("Ready", "False", "First"), stored("Ready", "True", "Second")]
    result = set_condition(
        existing,
        type="Ready",
        status="False",
        reason="C",
        message="c",
        observed_generation=1,
        now=T1,
    )
    assert len(result) == 1
    assert result[0]["lastTransitionTime"] == EARLIER


def test_set_condition_without_observed_generation_omits_it():
    result = set_condition(
        [],
        type="Ready",
        status="Unknown",
        reason="Pending",
        message="",
        observed_generation=None,
        now=T0,
    )
    assert "observedGeneration" not in result[0]


def test_set_condition_is_idempotent():
    kwargs = dict(type="Ready", status="True", reason="Ready", message="ok", observed_generation=2)
    once = set_condition([], now=T0, **kwargs)
    twice = set_condition(once, now=T1, **kwargs)
    assert twice == once


def test_set_condition_cuts_overlong_messages():
    result = set_condition(
        [],
        type="Ready",
        status="False",
        reason="Failed",
        message="x" * 40000,
        observed_generation=1,
        now=T0,
    )
    assert len(result[0]["message"]) == 32768


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        pytest.param({"status": "true"}, "status", id="lowercase-status"),
        pytest.param({"status": "Yes"}, "status", id="unknown-status"),
        pytest.param({"reason": ""}, "reason", id="empty-reason"),
        pytest.param({"reason": "not ready"}, "reason", id="reason-with-space"),
        pytest.param({"reason": "1Bad"}, "reason", id="reason-leading-digit"),
        pytest.param({"type": ""}, "type", id="empty-type"),
        pytest.param({"type": "Ready!"}, "type", id="type-with-bang"),
        pytest.param({"now": datetime(2026, 1, 1)}, "timezone", id="naive-now"),
    ],
)
def test_set_condition_rejects_what_the_api_server_would(overrides, complaint):
    kwargs = dict(
        type="Ready", status="True", reason="Ready", message="", observed_generation=1, now=T0
    )
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=complaint):
        set_condition([], **kwargs)


def test_set_condition_accepts_prefixed_type():
    result = set_condition(
        [],
        type="serving.kserve.io/Capacity",
        status="True",
        reason="Fits",
        message="",
        observed_generation=1,
        now=T0,
    )
    assert result[0]["type"] == "serving.kserve.io/Capacity"


def test_find_condition():
    conditions = [{"type": "Other", "status": "True"}, {"type": "Ready", "status": "False"}]
    assert find_condition(conditions, "Ready") == {"type": "Ready", "status": "False"}
    assert find_condition(conditions, "Missing") is None
    assert find_condition(None, "Ready") is None


def test_format_time_converts_to_utc_seconds():
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 5, 6, 9, 30, 15, 987654, tzinfo=plus_two)
    assert format_time(moment) == "2026-05-06T07:30:15Z"
