"""Parts of the control plane harness that need no binaries: lookup, CRD files, ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.testing.controlplane import (
    ControlPlane,
    ControlPlaneError,
    MissingBinariesError,
    find_binaries,
    free_port,
    load_crds,
)

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions: [{name: v1, served: true, storage: true}]
"""


def test_find_binaries_names_dir_and_make_target_when_missing(tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)

    with pytest.raises(MissingBinariesError) as failure:
        find_binaries(tmp_path, names=["etcd", "kube-apiserver"])

    message = str(failure.value)
    assert str(tmp_path) in message
    assert "make binaries" in message
    assert f"{tmp_path}: kube-apiserver." in message


def test_find_binaries_uses_assets_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "etcd"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("LOCALMODEL_KUBE_ASSETS", str(tmp_path))

    assert find_binaries(None, names=["etcd"]) == {"etcd": binary}


def test_control_plane_start_fails_clearly_without_binaries(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "work", assets=tmp_path / "empty", crd_dirs=[])

    with pytest.raises(MissingBinariesError, match="make binaries"):
        plane.start()


def test_load_crds_splits_documents_and_ignores_other_kinds(tmp_path: Path) -> None:
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    (tmp_path / "all.yaml").write_text(f"{other}---\n{CRD}---\n")
    (tmp_path / "notes.txt").write_text(CRD)

    crds = load_crds([tmp_path])

    assert [crd["metadata"]["name"] for crd in crds] == ["widgets.example.com"]


def test_load_crds_rejects_crd_without_group(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(CRD.replace("group: example.com", "group: ''"))

    with pytest.raises(ControlPlaneError, match="bad.yaml"):
        load_crds([tmp_path])


def test_load_crds_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="does not exist"):
        load_crds([tmp_path / "nope"])


def test_load_crds_reads_project_crds() -> None:
    from controller.testing.controlplane import DEFAULT_CRD_DIR

    plurals = {crd["spec"]["names"]["plural"] for crd in load_crds([DEFAULT_CRD_DIR])}

    assert "localmodelcaches" in plurals


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(50)]

    assert len(set(ports)) == len(ports)
