from __future__ import annotations

from typing import Any

import pytest

from controller.manager.placement import (
    Placement,
    desired_entry,
    entries_with,
    entries_without,
    place,
)


def node(name: str, *, labels: dict[str, str], ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def group(label: str) -> dict[str, Any]:
    term = {"matchExpressions": [{"key": label, "operator": "Exists"}]}
    return {
        "spec": {
            "persistentVolumeSpec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [term]}}}
        }
    }


def cache(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "c1"}, "spec": {"sourceModelUri": "s3://b/m", **spec}}


def test_place_uses_the_first_matching_group_in_spec_order() -> None:
    nodes = [node("n1", labels={"a": "", "b": ""}), node("n2", labels={"b": ""})]
    placements = place(nodes, [("ga", group("a")), ("gb", group("b"))])
    assert placements == {
        "n1": Placement("n1", "ga", True),
        "n2": Placement("n2", "gb", True),
    }


def test_place_records_not_ready_nodes_and_skips_unmatched_ones() -> None:
    nodes = [node("n1", labels={"a": ""}, ready=False), node("n3", labels={})]
    assert place(nodes, [("ga", group("a"))]) == {"n1": Placement("n1", "ga", False)}


def test_place_matches_nothing_for_a_group_without_required_affinity() -> None:
    assert place([node("n1", labels={"a": ""})], [("g", {"spec": {}})]) == {}


@pytest.mark.parametrize(
    ("spec", "extra"),
    [
        pytest.param({}, {}, id="plain"),
        pytest.param({"serviceAccountName": "sa"}, {"serviceAccountName": "sa"}, id="sa"),
        pytest.param({"storage": {"key": "k"}}, {"storage": {"key": "k"}}, id="storage"),
    ],
)
def test_desired_entry_copies_credentials_only_when_set(spec: dict, extra: dict) -> None:
    entry = desired_entry(cache(**spec), "g")
    assert entry == {"modelName": "c1", "sourceModelUri": "s3://b/m", "nodeGroup": "g", **extra}


def test_entries_with_appends_a_new_model_and_keeps_others() -> None:
    other = {"modelName": "other", "sourceModelUri": "x"}
    mine = {"modelName": "c1", "sourceModelUri": "y", "nodeGroup": "g"}
    assert entries_with([other], mine) == [other, mine]


def test_entries_with_returns_none_when_nothing_changes() -> None:
    mine = {"modelName": "c1", "sourceModelUri": "y", "nodeGroup": "g"}
    assert entries_with([dict(mine)], mine) is None


def test_entries_with_replaces_in_place_and_drops_duplicates() -> None:
    old = {"modelName": "c1", "sourceModelUri": "y", "nodeGroup": "old"}
    other = {"modelName": "other", "sourceModelUri": "x"}
    new = {**old, "nodeGroup": "new"}
    assert entries_with([old, other, dict(old)], new) == [new, other]


def test_entries_with_ignores_a_namespace_cache_of_the_same_name() -> None:
    namespaced = {"modelName": "c1", "namespace": "ns", "sourceModelUri": "y"}
    mine = {"modelName": "c1", "sourceModelUri": "y", "nodeGroup": "g"}
    assert entries_with([namespaced], mine) == [namespaced, mine]


def test_entries_without_removes_only_the_cluster_cache_entry() -> None:
    namespaced = {"modelName": "c1", "namespace": "ns", "sourceModelUri": "y"}
    mine = {"modelName": "c1", "sourceModelUri": "y"}
    assert entries_without([mine, namespaced], "c1") == [namespaced]
    assert entries_without([namespaced], "c1") is None
