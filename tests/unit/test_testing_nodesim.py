"""Node simulator pieces that need no cluster: path mapping, node parsing, env values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from controller.testing.nodesim import (
    CannotRunPod,
    NodeSimulator,
    SimulatedNode,
    _env_value,
    _rewrite,
    parse_node,
)

MOUNTS = [("/mnt/models/sub", Path("/host/b")), ("/mnt/models", Path("/host/a"))]


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        pytest.param("/mnt/models", "/host/a", id="mount-path-itself"),
        pytest.param("/mnt/models/x/y.bin", "/host/a/x/y.bin", id="under-mount"),
        pytest.param("/mnt/models/sub/z", "/host/b/z", id="nested-mount-wins"),
        pytest.param("/mnt/modelsx", "/mnt/modelsx", id="prefix-is-not-parent"),
        pytest.param("--dest=/mnt/models/m", "--dest=/host/a/m", id="flag-value"),
        pytest.param("s3://bucket/mnt/models", "s3://bucket/mnt/models", id="uri-untouched"),
        pytest.param("-c", "-c", id="plain-arg"),
    ],
)
def test_rewrite_maps_container_paths_to_host(arg: str, expected: str) -> None:
    assert _rewrite(arg, MOUNTS) == expected


def test_parse_node_reads_labels() -> None:
    node = parse_node("sim-a,kserve/localmodel=worker,zone=a")

    assert node == SimulatedNode("sim-a", {"kserve/localmodel": "worker", "zone": "a"})


@pytest.mark.parametrize("text", [pytest.param(",a=b", id="no-name"), pytest.param("n,x", id="x")])
def test_parse_node_rejects_malformed(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_node(text)


def test_host_path_stays_under_node_root(tmp_path: Path) -> None:
    simulator = NodeSimulator(None, root=tmp_path, nodes=[SimulatedNode("n1")])  # type: ignore[arg-type]

    assert simulator.host_path("n1", "/models/a") == tmp_path / "n1" / "models" / "a"
    assert simulator.host_path("n1", "/../../etc/passwd") == tmp_path / "n1" / "etc" / "passwd"
    with pytest.raises(ValueError, match="not absolute"):
        simulator.host_path("n1", "models")
    with pytest.raises(KeyError, match="not simulated"):
        simulator.stop_heartbeats("n2")


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {"nodeName": "n1"}}


def test_env_value_supports_plain_values_and_common_field_refs() -> None:
    assert _env_value(POD, {"name": "A", "value": "1"}) == "1"
    node_ref = {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    assert _env_value(POD, node_ref) == "n1"


def test_env_value_rejects_secret_refs_clearly() -> None:
    secret = {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}

    with pytest.raises(CannotRunPod) as failure:
        _env_value(POD, secret)

    assert failure.value.reason == "UnsupportedEnv"
