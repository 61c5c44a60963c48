"""Names, keys and labels shared by the manager and the agent (controller/api/naming.py)."""

from __future__ import annotations

import hashlib

import pytest

from controller.api import naming


def test_storage_key_is_first_16_hex_of_sha256_of_raw_uri():
    uri = "gs://kfserving-examples/models/sklearn/1.0/model"
    assert naming.storage_key(uri) == hashlib.sha256(uri.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        pytest.param("s3://foo", "83fbff445b51876f", id="no-slash"),
        pytest.param("s3://foo/", "e65e626ad747873c", id="trailing-slash"),
        pytest.param("", "e3b0c44298fc1c14", id="empty"),
    ],
)
def test_storage_key_of_known_uris(uri, key):
    # Pinned values (checked with `openssl dgst -sha256`): model directories already on nodes
    # are named by them, so they must never change.
    assert naming.storage_key(uri) == key


@pytest.mark.parametrize(
    ("first", "second", "equal"),
    [
        pytest.param("s3://foo", "s3://foo", True, id="same-uri-same-key"),
        pytest.param("s3://foo", "s3://foo/", False, id="trailing-slash-differs"),
        pytest.param("s3://foo", "S3://foo", False, id="case-differs"),
        pytest.param("s3://foo", " s3://foo", False, id="whitespace-not-trimmed"),
        pytest.param("hf://org/model", "hf://org/model2", False, id="different-uri"),
    ],
)
def test_storage_key_equal_only_for_identical_uris(first, second, equal):
    assert (naming.storage_key(first) == naming.storage_key(second)) is equal


def test_storage_key_is_16_lowercase_hex_characters():
    key = naming.storage_key("https://example.invalid/ünïcode model.tar.gz")
    assert len(key) == 16
    assert set(key) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    ("cached", "candidate", "matches"),
    [
        pytest.param("gs://b/model", "gs://b/model", True, id="exact"),
        pytest.param("gs://b/model", "gs://b/model/", True, id="candidate-trailing-slash"),
        pytest.param("gs://b/model/", "gs://b/model", True, id="cached-trailing-slash"),
        pytest.param("gs://b/model/", "gs://b/model/", True, id="both-trailing-slash"),
        pytest.param("gs://b/model", "gs://b/model/x/y.pt", True, id="sub-path"),
        pytest.param("gs://b/model/", "gs://b/model/x", True, id="sub-path-of-slashed-cache"),
        pytest.param("gs://b/model", "gs://b/model2", False, id="sibling-with-common-prefix"),
        pytest.param("gs://b/model", "gs://b/mod", False, id="shorter-candidate"),
        pytest.param("gs://b/model", "gs://b", False, id="parent"),
        pytest.param("gs://b/model", "s3://b/model", False, id="other-scheme"),
        pytest.param(
            "gs://b/model", "gs://b/model//", True, id="two-trailing-slashes-as-in-kserve"
        ),
        pytest.param("foo:bar:baz", "foo:bar:baz", True, id="non-uri-matches-itself"),
        pytest.param("foo:bar:baz", "foo:bar:baz2", False, id="non-uri-no-prefix-match"),
        pytest.param("foo:bar:baz", "foo:bar", False, id="non-uri-shorter"),
        pytest.param("", "", False, id="empty-cached-matches-nothing"),
        pytest.param("", "/etc/model", False, id="empty-cached-no-absolute-path"),
        pytest.param("/", "/models", False, id="root-slash-cached-is-empty"),
    ],
)
def test_match_storage_uri(cached, candidate, matches):
    assert naming.match_storage_uri(cached, candidate) is matches


@pytest.mark.parametrize(
    ("model", "namespace", "key"),
    [
        pytest.param("bert", None, "bert", id="cluster-none"),
        pytest.param("bert", "", "bert", id="cluster-empty"),
        pytest.param("bert", "team-a", "team-a/bert", id="namespaced"),
    ],
)
def test_status_key(model, namespace, key):
    assert naming.status_key(model, namespace) == key


@pytest.mark.parametrize(
    ("namespace", "pv", "pvc"),
    [
        pytest.param(None, "bert-gpu-download", "bert-gpu", id="cluster-cache"),
        pytest.param("team-a", "bert-gpu-team-a-download", "bert-gpu-team-a-download", id="ns"),
    ],
)
def test_download_volume_names(namespace, pv, pvc):
    assert naming.download_pv_name("bert", "gpu", namespace=namespace) == pv
    assert naming.download_pvc_name("bert", "gpu", namespace=namespace) == pvc


def test_serving_volume_names():
    assert naming.serving_pv_name("bert", "gpu", "team-b") == "bert-gpu-team-b"
    assert naming.serving_pvc_name("bert", "gpu") == "bert-gpu"


def test_download_pvc_of_cluster_cache_differs_from_its_pv():
    # The PVC is `<cache>-<group>` and the PV `<cache>-<group>-download` (KServe's shapes).
    assert naming.download_pvc_name("c", "g") != naming.download_pv_name("c", "g")


def test_model_subpath():
    assert naming.model_subpath("0123456789abcdef") == "models/0123456789abcdef"


def test_model_subpath_of_storage_key_round_trip():
    key = naming.storage_key("s3://bucket/model")
    assert naming.model_subpath(key).split("/") == ["models", key]


def test_job_generate_name():
    assert naming.job_generate_name("bert", "node-1") == "bert-node-1"


@pytest.mark.parametrize(
    ("namespace", "labels"),
    [
        pytest.param(None, {"model": "bert", "node": "n1"}, id="cluster"),
        pytest.param("", {"model": "bert", "node": "n1"}, id="cluster-empty-namespace"),
        pytest.param(
            "team-a", {"model": "bert", "node": "n1", "modelNamespace": "team-a"}, id="namespaced"
        ),
    ],
)
def test_job_labels(namespace, labels):
    assert naming.job_labels(model_name="bert", node_name="n1", model_namespace=namespace) == labels


@pytest.mark.parametrize(
    ("namespace", "selector"),
    [
        pytest.param(None, "model=bert,node=n1,!modelNamespace", id="cluster-excludes-namespaced"),
        pytest.param("team-a", "model=bert,node=n1,modelNamespace=team-a", id="namespaced"),
    ],
)
def test_job_label_selector(namespace, selector):
    result = naming.job_label_selector(model_name="bert", node_name="n1", model_namespace=namespace)
    assert result == selector


@pytest.mark.parametrize(
    ("labels", "key"),
    [
        pytest.param({"model": "bert", "node": "n1"}, "bert", id="cluster"),
        pytest.param({"model": "bert", "modelNamespace": "a"}, "a/bert", id="namespaced"),
        pytest.param({"model": "bert", "modelNamespace": ""}, "bert", id="empty-namespace"),
        pytest.param({"node": "n1"}, None, id="no-model-label"),
        pytest.param({"model": ""}, None, id="empty-model-label"),
        pytest.param(None, None, id="no-labels"),
    ],
)
def test_status_key_from_job_labels(labels, key):
    assert naming.status_key_from_job_labels(labels) == key


def test_job_labels_round_trip_to_status_key():
    labels = naming.job_labels(model_name="bert", node_name="n1", model_namespace="team-a")
    assert naming.status_key_from_job_labels(labels) == naming.status_key("bert", "team-a")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        pytest.param("bert", True, id="simple"),
        pytest.param("a", True, id="one-char"),
        pytest.param("Model_v1.2-final", True, id="mixed-allowed-chars"),
        pytest.param("a" * 63, True, id="63-chars"),
        pytest.param("a" * 64, False, id="64-chars"),
        pytest.param("", False, id="empty"),
        pytest.param("-bert", False, id="leading-dash"),
        pytest.param("bert.", False, id="trailing-dot"),
        pytest.param("_bert", False, id="leading-underscore"),
        pytest.param("team/bert", False, id="slash"),
        pytest.param("bert model", False, id="space"),
        pytest.param("node-1.example.com", True, id="short-fqdn"),
        pytest.param("ip-10-0-0-1." + "a" * 60 + ".internal", False, id="long-fqdn"),
    ],
)
def test_is_valid_label_value(value, valid):
    assert naming.is_valid_label_value(value) is valid


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("bert-gpu-download", True, id="simple"),
        pytest.param("a.b-c", True, id="dots"),
        pytest.param("a" * 253, True, id="253-chars"),
        pytest.param("a" * 254, False, id="254-chars"),
        pytest.param("Bert", False, id="uppercase"),
        pytest.param("bert_", False, id="underscore"),
        pytest.param("", False, id="empty"),
        pytest.param("-a", False, id="leading-dash"),
    ],
)
def test_is_valid_object_name(name, valid):
    assert naming.is_valid_object_name(name) is valid
