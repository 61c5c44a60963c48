"""Which nodes belong to a LocalModelNodeGroup, and which of them are Ready.

A node group's members are the nodes its PV template's `nodeAffinity.required` selects, with
core/v1 NodeSelector semantics: terms are ORed; inside a term every `matchExpressions` (labels)
and `matchFields` (`metadata.name`) requirement must hold. As in Kubernetes, an empty term and a
term with an invalid requirement match nothing. Pure functions on API dicts; reading nodes and
groups from the informer stores is the reconcilers' business.
"""

from __future__ import annotations

import re
from typing import Any

NODE_NAME_FIELD = "metadata.name"

_INT64 = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class InvalidRequirement(ValueError):
    """Raised when a node selector requirement cannot be evaluated (Kubernetes rejects it too)."""


def node_matches_selector(node: dict[str, Any], selector: dict[str, Any] | None) -> bool:
    """Tell whether a core/v1 NodeSelector (`{"nodeSelectorTerms": [...]}`) selects `node`.

    No selector, or one without terms, selects nothing.
    """
    terms = (selector or {}).get("nodeSelectorTerms") or []
    return any(_term_matches(node, term or {}) for term in terms)


def node_in_group(node: dict[str, Any], node_group: dict[str, Any]) -> bool:
    """Tell whether `node` is a member of a LocalModelNodeGroup.

    Membership is `spec.persistentVolumeSpec.nodeAffinity.required`; a group without it has no
    members, as in KServe. `node_selector_problems` explains such a group for status messages.
    """
    return node_matches_selector(node, group_node_selector(node_group))


def group_node_selector(node_group: dict[str, Any]) -> dict[str, Any] | None:
    """The NodeSelector that defines a node group's members, or None when it has none."""
    pv_spec = (node_group.get("spec") or {}).get("persistentVolumeSpec") or {}
    return (pv_spec.get("nodeAffinity") or {}).get("required")


def node_selector_problems(selector: dict[str, Any] | None) -> list[str]:
    """List what is wrong with a NodeSelector, one message per problem; [] when all terms are sound.

    Covers a missing selector, missing or empty terms, and every invalid requirement (each of
    which makes its whole term match nothing).
    """
    terms = (selector or {}).get("nodeSelectorTerms") or []
    if not terms:
        return ["node selector has no nodeSelectorTerms, so it selects no node"]
    problems = []
    for index, term in enumerate(terms):
        term = term or {}
        if not term.get("matchExpressions") and not term.get("matchFields"):
            problems.append(f"nodeSelectorTerms[{index}] is empty and selects no node")
        for kind, check in (("matchExpressions", _check_label), ("matchFields", _check_field)):
            for position, requirement in enumerate(term.get(kind) or []):
                try:
                    check(requirement or {})
                except InvalidRequirement as error:
                    problems.append(f"nodeSelectorTerms[{index}].{kind}[{position}]: {error}")
    return problems


def is_node_ready(node: dict[str, Any]) -> bool:
    """Tell whether the node's `Ready` condition has status `"True"`."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _term_matches(node: dict[str, Any], term: dict[str, Any]) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    name = (node.get("metadata") or {}).get("name") or ""
    try:
        return all(_label_matches(labels, r or {}) for r in expressions) and all(
            _field_matches(name, r or {}) for r in fields
        )
    except InvalidRequirement:
        return False


def _label_matches(labels: dict[str, str], requirement: dict[str, Any]) -> bool:
    key, operator, values = _check_label(requirement)
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    # Gt and Lt: a label that is absent or not an integer does not match.
    actual = _parse_int64(labels.get(key))
    if actual is None:
        return False
    bound = int(values[0])  # _check_label has verified that it is an int64
    return actual > bound if operator == "Gt" else actual < bound


def _field_matches(node_name: str, requirement: dict[str, Any]) -> bool:
    operator, value = _check_field(requirement)
    return node_name == value if operator == "In" else node_name != value


def _check_label(requirement: dict[str, Any]) -> tuple[str, str, list[str]]:
    key = requirement.get("key") or ""
    operator = requirement.get("operator") or ""
    values = list(requirement.get("values") or [])
    if not _is_qualified_name(key):
        raise InvalidRequirement(f"key {key!r} is not a valid label key")
    if operator in ("In", "NotIn"):
        if not values:
            raise InvalidRequirement(f"operator {operator} needs at least one value")
        for value in values:
            if value != "" and not _is_label_name(value):
                raise InvalidRequirement(f"value {value!r} is not a valid label value")
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            raise InvalidRequirement(f"operator {operator} takes no values")
    elif operator in ("Gt", "Lt"):
        if len(values) != 1 or _parse_int64(values[0]) is None:
            raise InvalidRequirement(f"operator {operator} needs exactly one integer value")
    else:
        raise InvalidRequirement(f"unknown operator {operator!r}")
    return key, operator, values


def _check_field(requirement: dict[str, Any]) -> tuple[str, str]:
    key = requirement.get("key") or ""
    operator = requirement.get("operator") or ""
    values = list(requirement.get("values") or [])
    if key != NODE_NAME_FIELD:
        raise InvalidRequirement(f"field {key!r} is not supported, only {NODE_NAME_FIELD}")
    if operator not in ("In", "NotIn"):
        raise InvalidRequirement(f"operator {operator!r} is not supported for fields")
    if len(values) != 1:
        raise InvalidRequirement(f"operator {operator} on a field needs exactly one value")
    return operator, values[0]


def _parse_int64(text: str | None) -> int | None:
    if text is None or _INT64.fullmatch(text) is None:
        return None
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _is_label_name(text: str) -> bool:
    return len(text) <= 63 and _LABEL_NAME.fullmatch(text) is not None


def _is_qualified_name(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or _DNS_SUBDOMAIN.fullmatch(prefix) is None):
        return False
    return _is_label_name(name)
