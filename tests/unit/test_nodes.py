"""Node selector semantics, node group membership and readiness (controller/api/nodes.py)."""

from __future__ import annotations

import pytest

from controller.api import nodes


def make_node(name: str = "n1", labels: dict | None = None, ready: str | None = "True") -> dict:
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready})
    return {
        "metadata": {"name": name, "labels": dict(labels or {})},
        "status": {"conditions": conditions},
    }


def expr(key: str, operator: str, *values: str) -> dict:
    requirement: dict = {"key": key, "operator": operator}
    if values:
        requirement["values"] = list(values)
    return requirement


def term(*expressions: dict, fields: list[dict] | None = None) -> dict:
    result: dict = {}
    if expressions:
        result["matchExpressions"] = list(expressions)
    if fields is not None:
        result["matchFields"] = fields
    return result


def selector(*terms: dict) -> dict:
    return {"nodeSelectorTerms": list(terms)}


LABELS = {"kserve/localmodel": "worker", "zone": "a", "gpus": "4", "kubernetes.io/hostname": "n1"}


@pytest.mark.parametrize(
    ("requirement", "matches"),
    [
        pytest.param(expr("zone", "In", "a"), True, id="in-single-hit"),
        pytest.param(expr("zone", "In", "b", "a"), True, id="in-several-hit"),
        pytest.param(expr("zone", "In", "b"), False, id="in-miss"),
        pytest.param(expr("rack", "In", "a"), False, id="in-absent-label"),
        pytest.param(expr("zone", "NotIn", "b"), True, id="notin-other-value"),
        pytest.param(expr("zone", "NotIn", "a", "b"), False, id="notin-listed-value"),
        pytest.param(expr("rack", "NotIn", "a"), True, id="notin-absent-label"),
        pytest.param(expr("zone", "Exists"), True, id="exists-present"),
        pytest.param(expr("rack", "Exists"), False, id="exists-absent"),
        pytest.param(expr("rack", "DoesNotExist"), True, id="doesnotexist-absent"),
        pytest.param(expr("zone", "DoesNotExist"), False, id="doesnotexist-present"),
        pytest.param(expr("gpus", "Gt", "3"), True, id="gt-greater"),
        pytest.param(expr("gpus", "Gt", "4"), False, id="gt-equal"),
        pytest.param(expr("gpus", "Gt", "-1"), True, id="gt-negative-bound"),
        pytest.param(expr("gpus", "Lt", "5"), True, id="lt-smaller"),
        pytest.param(expr("gpus", "Lt", "4"), False, id="lt-equal"),
        pytest.param(expr("rack", "Gt", "1"), False, id="gt-absent-label"),
        pytest.param(expr("zone", "Gt", "1"), False, id="gt-non-integer-label"),
        pytest.param(expr("zone", "Lt", "1"), False, id="lt-non-integer-label"),
        pytest.param(expr("kserve/localmodel", "In", "worker"), True, id="prefixed-key"),
    ],
)
def test_match_expression_operators(requirement, matches):
    node = make_node(labels=LABELS)
    assert nodes.node_matches_selector(node, selector(term(requirement))) is matches


@pytest.mark.parametrize(
    "requirement",
    [
        # Each of these would match LABELS if the requirement were not rejected as invalid.
        pytest.param(expr("rack", "NotIn"), id="notin-without-values"),
        pytest.param(expr("zone", "Exists", "a"), id="exists-with-values"),
        pytest.param(expr("rack", "DoesNotExist", "a"), id="doesnotexist-with-values"),
        pytest.param(expr("gpus", "Gt", "1", "9"), id="gt-two-values"),
        pytest.param(expr("gpus", "Lt", "1_0"), id="lt-python-only-integer"),
        pytest.param(expr("gpus", "Lt", " 10"), id="lt-padded-integer"),
        pytest.param(expr("gpus", "Lt", str(2**63)), id="lt-beyond-int64"),
        pytest.param(expr("zone", "in", "a"), id="operator-is-case-sensitive"),
        pytest.param(expr("", "DoesNotExist"), id="empty-key"),
        pytest.param(expr("bad key", "DoesNotExist"), id="invalid-key"),
        pytest.param(expr("/rack", "DoesNotExist"), id="empty-key-prefix"),
        pytest.param(expr("a/b/rack", "DoesNotExist"), id="two-slashes-in-key"),
        pytest.param(expr("zone", "NotIn", "bad value"), id="invalid-value"),
    ],
)
def test_invalid_requirement_matches_nothing(requirement):
    node = make_node(labels=LABELS)
    assert nodes.node_matches_selector(node, selector(term(requirement))) is False
    assert nodes.node_selector_problems(selector(term(requirement)))


@pytest.mark.parametrize(
    "requirement",
    [
        pytest.param(expr("zone", "In"), id="in-without-values"),
        pytest.param(expr("gpus", "Gt"), id="gt-without-value"),
        pytest.param(expr("gpus", "Lt", "ten"), id="lt-non-integer-bound"),
        pytest.param(expr("zone", "Matches", "a"), id="unknown-operator"),
        pytest.param(expr("zone", "Exists", "a"), id="exists-with-values"),
    ],
)
def test_invalid_requirement_is_reported_not_raised(requirement):
    node = make_node(labels=LABELS)
    assert nodes.node_matches_selector(node, selector(term(requirement))) is False
    assert len(nodes.node_selector_problems(selector(term(requirement)))) == 1


def test_invalid_term_does_not_spoil_a_valid_one():
    node = make_node(labels=LABELS)
    broken = term(expr("zone", "Exists", "a"))
    valid = term(expr("zone", "In", "a"))
    assert nodes.node_matches_selector(node, selector(broken, valid)) is True


def test_invalid_requirement_spoils_its_whole_term():
    node = make_node(labels=LABELS)
    mixed = term(expr("zone", "In", "a"), expr("zone", "Exists", "a"))
    assert nodes.node_matches_selector(node, selector(mixed)) is False


@pytest.mark.parametrize(
    ("field", "matches"),
    [
        pytest.param(expr("metadata.name", "In", "n1"), True, id="in-own-name"),
        pytest.param(expr("metadata.name", "In", "n2"), False, id="in-other-name"),
        pytest.param(expr("metadata.name", "NotIn", "n2"), True, id="notin-other-name"),
        pytest.param(expr("metadata.name", "NotIn", "n1"), False, id="notin-own-name"),
        pytest.param(expr("metadata.name", "In", "n1", "n2"), False, id="in-two-values-invalid"),
        pytest.param(expr("metadata.name", "Exists"), False, id="exists-unsupported"),
        pytest.param(expr("metadata.uid", "NotIn", "x"), False, id="unsupported-field"),
    ],
)
def test_match_fields(field, matches):
    node = make_node(name="n1", labels=LABELS)
    assert nodes.node_matches_selector(node, selector(term(fields=[field]))) is matches


def test_match_expressions_and_fields_are_anded_within_a_term():
    node = make_node(name="n1", labels=LABELS)
    both = term(expr("zone", "In", "a"), fields=[expr("metadata.name", "In", "n1")])
    label_miss = term(expr("zone", "In", "b"), fields=[expr("metadata.name", "In", "n1")])
    field_miss = term(expr("zone", "In", "a"), fields=[expr("metadata.name", "In", "n2")])
    assert nodes.node_matches_selector(node, selector(both)) is True
    assert nodes.node_matches_selector(node, selector(label_miss)) is False
    assert nodes.node_matches_selector(node, selector(field_miss)) is False


def test_match_expressions_are_anded_within_a_term():
    node = make_node(labels=LABELS)
    hit = term(expr("zone", "In", "a"), expr("gpus", "Gt", "2"))
    miss = term(expr("zone", "In", "a"), expr("gpus", "Gt", "8"))
    assert nodes.node_matches_selector(node, selector(hit)) is True
    assert nodes.node_matches_selector(node, selector(miss)) is False


@pytest.mark.parametrize(
    ("terms", "matches"),
    [
        pytest.param(
            [term(expr("zone", "In", "b")), term(expr("zone", "In", "a"))], True, id="2nd"
        ),
        pytest.param(
            [term(expr("zone", "In", "a")), term(expr("zone", "In", "b"))], True, id="1st"
        ),
        pytest.param(
            [term(expr("zone", "In", "b")), term(expr("rack", "Exists"))], False, id="none"
        ),
    ],
)
def test_terms_are_ored(terms, matches):
    node = make_node(labels=LABELS)
    assert nodes.node_matches_selector(node, selector(*terms)) is matches


@pytest.mark.parametrize(
    "node_selector",
    [
        pytest.param(None, id="no-selector"),
        pytest.param({}, id="no-terms-key"),
        pytest.param(selector(), id="empty-terms"),
        pytest.param(selector({}), id="empty-term"),
        pytest.param(selector(term(fields=[])), id="term-with-empty-lists"),
        pytest.param(selector(None), id="null-term"),
    ],
)
def test_empty_selector_or_term_matches_nothing(node_selector):
    node = make_node(labels=LABELS)
    assert nodes.node_matches_selector(node, node_selector) is False


def test_node_without_labels_matches_only_absence():
    node = {"metadata": {"name": "bare"}}
    assert nodes.node_matches_selector(node, selector(term(expr("zone", "DoesNotExist"))))
    assert not nodes.node_matches_selector(node, selector(term(expr("zone", "Exists"))))


def make_group(required: dict | None, *, with_affinity: bool = True) -> dict:
    pv_spec: dict = {"local": {"path": "/models"}, "capacity": {"storage": "10Gi"}}
    if with_affinity:
        pv_spec["nodeAffinity"] = {} if required is None else {"required": required}
    return {"metadata": {"name": "workers"}, "spec": {"persistentVolumeSpec": pv_spec}}


def test_node_in_group_uses_pv_template_required_affinity():
    group = make_group(selector(term(expr("kserve/localmodel", "In", "worker"))))
    assert nodes.node_in_group(make_node(labels=LABELS), group) is True
    assert nodes.node_in_group(make_node(labels={"zone": "a"}), group) is False


@pytest.mark.parametrize(
    "group",
    [
        pytest.param(make_group(None, with_affinity=False), id="no-node-affinity"),
        pytest.param(make_group(None), id="no-required"),
        pytest.param(make_group(selector()), id="required-without-terms"),
        pytest.param({"metadata": {"name": "g"}, "spec": {}}, id="no-pv-spec"),
        pytest.param({"metadata": {"name": "g"}}, id="no-spec"),
    ],
)
def test_group_without_required_affinity_has_no_members(group):
    assert nodes.node_in_group(make_node(labels=LABELS), group) is False


def test_group_node_selector_returns_the_required_selector():
    required = selector(term(expr("zone", "In", "a")))
    assert nodes.group_node_selector(make_group(required)) == required
    assert nodes.group_node_selector(make_group(None)) is None


def test_node_selector_problems_empty_for_sound_selector():
    sound = selector(
        term(expr("zone", "In", "a"), expr("gpus", "Gt", "1")),
        term(fields=[expr("metadata.name", "NotIn", "n9")]),
    )
    assert nodes.node_selector_problems(sound) == []


def test_node_selector_problems_name_the_broken_requirement():
    broken = selector(term(expr("zone", "In", "a")), term(expr("zone", "Exists", "a")))
    problems = nodes.node_selector_problems(broken)
    assert len(problems) == 1
    assert problems[0].startswith("nodeSelectorTerms[1].matchExpressions[0]:")
    assert "Exists" in problems[0]


@pytest.mark.parametrize(
    "node_selector",
    [
        pytest.param(None, id="none"),
        pytest.param(selector(), id="no-terms"),
        pytest.param(selector({}), id="empty-term"),
    ],
)
def test_node_selector_problems_report_selectors_that_select_nothing(node_selector):
    assert nodes.node_selector_problems(node_selector)


@pytest.mark.parametrize(
    ("node", "ready"),
    [
        pytest.param(make_node(ready="True"), True, id="ready-true"),
        pytest.param(make_node(ready="False"), False, id="ready-false"),
        pytest.param(make_node(ready="Unknown"), False, id="ready-unknown"),
        pytest.param(make_node(ready=None), False, id="no-ready-condition"),
        pytest.param({"metadata": {"name": "n"}}, False, id="no-status"),
        pytest.param({"metadata": {"name": "n"}, "status": {"conditions": None}}, False, id="null"),
    ],
)
def test_is_node_ready(node, ready):
    assert nodes.is_node_ready(node) is ready
