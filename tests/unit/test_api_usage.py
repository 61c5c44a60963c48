"""Every Kubernetes API call the manager and the agent make, and checks that the list is complete.

`API_USES` is the contract between the code and the roles in manifests/install:
tests/integration/test_manifests.py asks the API server whether the shipped RBAC allows each
entry and denies everything else. The tests here read the code's syntax tree for client calls,
informers and owner references with blockOwnerDeletion, follow resources passed through helper
functions to their callers, and fail when a call is missing from the list or a listed call is
gone. A call the reader cannot resolve fails too, rather than being skipped.
"""

from __future__ import annotations

import ast
import importlib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.kube.resources import Resource

ROOT = Path(__file__).resolve().parents[2]
KSERVE_NAMESPACE = "kserve"
JOBS_NAMESPACE = "kserve-localmodel-jobs"
EVENTS_NAMESPACE = "default"  # Events about cluster-scoped objects
CONFIGMAP = "inferenceservice-config"


@dataclass(frozen=True)
class Use:
    """One permission a process needs: `verb` on `group`/`resource`[/`subresource`].

    `namespace` is empty for cluster-scoped resources; `name` is set when the role names the
    object (resourceNames).
    """

    component: str
    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def call(self) -> tuple[str, str, str, str, str]:
        return (self.component, self.verb, self.group, self.resource, self.subresource)


WATCH_VERBS = ("list", "watch")
SERVING = "serving.kserve.io"


def _list_watch(component: str, *, group: str, resource: str, namespace: str = "") -> list[Use]:
    return [Use(component, verb, group, resource, namespace=namespace) for verb in WATCH_VERBS]


API_USES: tuple[Use, ...] = (
    # manager: controller/manager/run.py, cache_reconciler.py, controller/config.py, kube/events.py
    Use("manager", "get", "", "configmaps", namespace=KSERVE_NAMESPACE, name=CONFIGMAP),
    *_list_watch("manager", group=SERVING, resource="localmodelcaches"),
    *_list_watch("manager", group=SERVING, resource="localmodelnodegroups"),
    *_list_watch("manager", group=SERVING, resource="localmodelnodes"),
    *_list_watch("manager", group="", resource="nodes"),
    *_list_watch("manager", group="", resource="persistentvolumes"),
    *_list_watch("manager", group="", resource="persistentvolumeclaims", namespace=JOBS_NAMESPACE),
    Use("manager", "patch", SERVING, "localmodelcaches"),  # finalizer
    Use("manager", "patch", SERVING, "localmodelcaches", "status"),
    Use("manager", "update", SERVING, "localmodelcaches", "finalizers"),  # blockOwnerDeletion
    Use("manager", "create", SERVING, "localmodelnodes"),
    Use("manager", "patch", SERVING, "localmodelnodes"),
    Use("manager", "create", "", "persistentvolumes"),
    Use("manager", "create", "", "persistentvolumeclaims", namespace=JOBS_NAMESPACE),
    Use("manager", "create", "", "events", namespace=EVENTS_NAMESPACE),
    # agent: controller/agent/run.py, node_reconciler.py, jobs.py, config.py, kube/events.py
    Use("agent", "get", "", "configmaps", namespace=KSERVE_NAMESPACE, name=CONFIGMAP),
    *_list_watch("agent", group=SERVING, resource="localmodelnodes"),
    *_list_watch("agent", group=SERVING, resource="localmodelnodegroups"),
    *_list_watch("agent", group="", resource="nodes"),
    *_list_watch("agent", group="batch", resource="jobs", namespace=JOBS_NAMESPACE),
    *_list_watch("agent", group="", resource="persistentvolumeclaims", namespace=JOBS_NAMESPACE),
    *_list_watch("agent", group="", resource="pods", namespace=JOBS_NAMESPACE),
    Use("agent", "create", "batch", "jobs", namespace=JOBS_NAMESPACE),
    Use("agent", "delete", "batch", "jobs", namespace=JOBS_NAMESPACE),
    Use("agent", "patch", SERVING, "localmodelnodes", "status"),
    Use("agent", "update", SERVING, "localmodelnodes", "finalizers"),  # blockOwnerDeletion
    Use("agent", "create", "", "events", namespace=EVENTS_NAMESPACE),
)

# All product code is read but the test helpers, the client itself and `__main__` (importing it
# runs the CLI). Components are told apart by directory; code elsewhere belongs to whichever
# component calls it.
COMPONENT_DIRS = {"controller/manager": "manager", "controller/agent": "agent"}
NOT_SCANNED = ("controller/testing/", "controller/kube/client.py", "controller/__main__.py")
CLIENT_VERBS = {
    "get": "get",
    "list": "list",
    "watch": "watch",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}
# Its calls use the informer's own resource; the `.informer(RESOURCE)` call sites stand for them.
INFORMER_MODULE = "controller.runtime.informer"
MAX_CALL_DEPTH = 5

ApiCall = tuple[str, str, str, str, str]  # component, verb, group, resource, subresource
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


class UnresolvedCall(AssertionError):
    """Raised when the reader cannot tell which resource or component an API call concerns."""


@dataclass(frozen=True)
class Function:
    path: str  # relative to the repository root
    module: types.ModuleType
    node: FunctionNode
    is_method: bool

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{getattr(node, 'lineno', self.node.lineno)}"

    @property
    def positional_params(self) -> list[str]:
        names = [a.arg for a in (*self.node.args.posonlyargs, *self.node.args.args)]
        return names[1:] if self.is_method else names

    @property
    def params(self) -> set[str]:
        return {*self.positional_params, *(a.arg for a in self.node.args.kwonlyargs)}


@dataclass(frozen=True)
class SourceFile:
    path: str
    module: types.ModuleType
    source: str


def source_files() -> list[SourceFile]:
    files = []
    for file in sorted((ROOT / "controller").rglob("*.py")):
        relative = file.relative_to(ROOT)
        if relative.as_posix().startswith(NOT_SCANNED):
            continue
        module = importlib.import_module(".".join(relative.with_suffix("").parts))
        files.append(SourceFile(relative.as_posix(), module, file.read_text()))
    return files


def own_nodes(function: FunctionNode) -> Iterator[ast.AST]:
    """The nodes of `function`'s body, without those of functions or classes nested in it."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                pending.append(child)


def functions_of(file: SourceFile) -> list[Function]:
    found: list[Function] = []

    def visit(node: ast.AST, *, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append(Function(file.path, file.module, child, is_method=in_class))
                visit(child, in_class=False)
            elif isinstance(child, ast.ClassDef):
                visit(child, in_class=True)

    visit(ast.parse(file.source), in_class=False)
    return found


def _is_client(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "client") or (
        isinstance(node, ast.Attribute) and node.attr == "client"
    )


def _is_resource(module: types.ModuleType, node: ast.expr | None) -> bool:
    """Whether `node` names a Resource: a verb called with one is an API call, whatever the
    receiver is called.
    """
    try:
        return node is not None and isinstance(_evaluate(module, node), Resource)
    except (UnresolvedCall, AttributeError):
        return False


def _evaluate(module: types.ModuleType, node: ast.expr) -> object:
    """The object a dotted name (`JOBS`, `kinds.LOCAL_MODEL_NODES`) refers to in `module`."""
    if isinstance(node, ast.Name):
        if node.id not in vars(module):
            raise UnresolvedCall(f"{node.id} is not a global of {module.__name__}")
        return vars(module)[node.id]
    if isinstance(node, ast.Attribute):
        return getattr(_evaluate(module, node.value), node.attr)
    raise UnresolvedCall(f"{ast.unparse(node)} is not a dotted name")


class CodeReader:
    """Finds the API calls of the scanned code, per component."""

    def __init__(self, files: list[SourceFile]) -> None:
        self.functions = [function for file in files for function in functions_of(file)]

    def api_calls(self) -> set[ApiCall]:
        calls: set[ApiCall] = set()
        for function in self.functions:
            for node in own_nodes(function.node):
                if isinstance(node, ast.Call):
                    calls |= self._calls_of(function, node)
                elif isinstance(node, ast.Dict):
                    calls |= self._owner_reference_calls(function, node)
        return calls

    def _calls_of(self, function: Function, call: ast.Call) -> set[ApiCall]:
        func = call.func
        if not isinstance(func, ast.Attribute):
            return set()
        if func.attr == "_request" and _is_client(func.value):
            raise UnresolvedCall(f"{function.where(call)}: raw request; use a typed client verb")
        resource = call.args[0] if call.args else _keyword(call, "resource")
        if func.attr in CLIENT_VERBS and (
            _is_client(func.value) or _is_resource(function.module, resource)
        ):
            if function.module.__name__ == INFORMER_MODULE:
                return set()
            verbs: tuple[str, ...] = (CLIENT_VERBS[func.attr],)
        elif func.attr == "informer":
            verbs = WATCH_VERBS
        else:
            return set()
        if resource is None:
            raise UnresolvedCall(f"{function.where(call)}: no resource argument")
        subresource = _keyword(call, "subresource")
        if subresource is not None and not isinstance(subresource, ast.Constant):
            raise UnresolvedCall(f"{function.where(call)}: subresource is not a literal")
        sub = subresource.value if isinstance(subresource, ast.Constant) else ""
        return {
            (component, verb, res.group, res.plural, sub or "")
            for component, res in self._resolve(function, resource, depth=0)
            for verb in verbs
        }

    def _owner_reference_calls(self, function: Function, node: ast.Dict) -> set[ApiCall]:
        """An owner reference with blockOwnerDeletion needs `update` on the owner's finalizers."""
        entries = {
            key.value: value
            for key, value in zip(node.keys, node.values, strict=True)
            if isinstance(key, ast.Constant)
        }
        block = entries.get("blockOwnerDeletion")
        if not (isinstance(block, ast.Constant) and block.value is True):
            return set()
        kind = entries.get("kind")
        if not (isinstance(kind, ast.Attribute) and kind.attr == "kind"):
            raise UnresolvedCall(f"{function.where(node)}: owner kind is not `<Resource>.kind`")
        return {
            (component, "update", owner.group, owner.plural, "finalizers")
            for component, owner in self._resolve(function, kind.value, depth=0)
        }

    def _resolve(
        self, function: Function, node: ast.expr, *, depth: int
    ) -> list[tuple[str, Resource]]:
        """(component, resource) pairs `node` stands for, following parameters to callers."""
        if depth > MAX_CALL_DEPTH:
            raise UnresolvedCall(f"{function.where(node)}: call chain too deep")
        if isinstance(node, ast.Name) and node.id in function.params:
            pairs = []
            for caller, call in self._callers(function):
                argument = _argument(call, function, param=node.id)
                if argument is None:
                    raise UnresolvedCall(f"{caller.where(call)}: {node.id} not passed")
                pairs += self._resolve(caller, argument, depth=depth + 1)
            if not pairs:
                raise UnresolvedCall(f"{function.where(node)}: no caller passes {node.id}")
            return pairs
        resource = _evaluate(function.module, node)
        if not isinstance(resource, Resource):
            raise UnresolvedCall(f"{function.where(node)}: {ast.unparse(node)} is no Resource")
        return [(c, resource) for c in self._components(function, depth=depth)]

    def _components(self, function: Function, *, depth: int) -> set[str]:
        for directory, component in COMPONENT_DIRS.items():
            if function.path.startswith(directory + "/"):
                return {component}
        if depth > MAX_CALL_DEPTH:
            raise UnresolvedCall(f"{function.where(function.node)}: call chain too deep")
        components: set[str] = set()
        for caller, _ in self._callers(function):
            components |= self._components(caller, depth=depth + 1)
        if not components:
            raise UnresolvedCall(f"{function.where(function.node)}: not called by any component")
        return components

    def _callers(self, function: Function) -> Iterator[tuple[Function, ast.Call]]:
        name = function.node.name
        for caller in self.functions:
            for node in own_nodes(caller.node):
                if isinstance(node, ast.Call) and _calls(
                    caller, node, function=function, name=name
                ):
                    yield caller, node


def _calls(caller: Function, call: ast.Call, *, function: Function, name: str) -> bool:
    """Whether `call` (in `caller`) calls `function`, judged by name and, where known, origin."""
    func = call.func
    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if called != name:
        return False
    try:
        target = _evaluate(caller.module, func)
    except (UnresolvedCall, AttributeError):
        return True  # e.g. `self.recorder.record`: the name is all we know
    return getattr(target, "__module__", None) == function.module.__name__


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _argument(call: ast.Call, function: Function, *, param: str) -> ast.expr | None:
    keyword = _keyword(call, param)
    if keyword is not None:
        return keyword
    positional = function.positional_params
    if param in positional and positional.index(param) < len(call.args):
        argument = call.args[positional.index(param)]
        return None if isinstance(argument, ast.Starred) else argument
    return None


def api_calls_in_code() -> set[ApiCall]:
    return CodeReader(source_files()).api_calls()


def _describe(calls: set[ApiCall]) -> str:
    return "\n".join(
        f"  {c}: {v} {g or 'core'}/{r}{'/' + s if s else ''}" for c, v, g, r, s in sorted(calls)
    )


def test_every_api_call_in_the_code_is_listed() -> None:
    missing = api_calls_in_code() - {use.call for use in API_USES}
    assert not missing, (
        "API calls missing from API_USES (add them there and grant them in manifests/install):\n"
        + _describe(missing)
    )


def test_every_listed_api_call_is_still_made_by_the_code() -> None:
    stale = {use.call for use in API_USES} - api_calls_in_code()
    assert not stale, (
        "API_USES lists calls the code no longer makes (remove them and their grants):\n"
        + _describe(stale)
    )


def _synthetic(path: str, source: str, **globals_: object) -> SourceFile:
    """A module made from `source`, as if it were the file at `path`."""
    module = types.ModuleType(path.removesuffix(".py").replace("/", "."))
    vars(module).update(globals_)
    exec(compile(source, path, "exec"), vars(module))
    return SourceFile(path, module, source)


def test_reader_follows_resources_through_helpers_and_owner_references() -> None:
    from controller.kube.resources import JOBS, PERSISTENT_VOLUMES

    helper = _synthetic(
        "controller/kube/synthetic_helpers.py",
        "async def remove(client, resource, name):\n"
        "    await client.delete(resource, name, subresource='status')\n",
    )
    caller = _synthetic(
        "controller/agent/synthetic_caller.py",
        "async def prune(self):\n    await helpers.remove(self.client, JOBS, 'x')\n",
        JOBS=JOBS,
        helpers=helper.module,
    )
    owner = _synthetic(
        "controller/manager/synthetic_owner.py",
        "def owner():\n    return {'kind': PERSISTENT_VOLUMES.kind, 'blockOwnerDeletion': True}\n",
        PERSISTENT_VOLUMES=PERSISTENT_VOLUMES,
    )
    renamed = _synthetic(
        "controller/manager/synthetic_renamed.py",
        "async def make(api):\n    await api.create(PERSISTENT_VOLUMES, {})\n",
        PERSISTENT_VOLUMES=PERSISTENT_VOLUMES,
    )
    calls = CodeReader([helper, caller, owner, renamed]).api_calls()
    assert calls == {
        ("agent", "delete", "batch", "jobs", "status"),
        ("manager", "update", "", "persistentvolumes", "finalizers"),
        ("manager", "create", "", "persistentvolumes", ""),
    }


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("async def f(client):\n    await client.get(pick(), 'x')\n", id="call"),
        pytest.param("async def f(client, r):\n    await client.get(r, 'x')\n", id="no-caller"),
        pytest.param("async def f(client):\n    await client._request('GET', '/')\n", id="raw"),
        pytest.param(
            "async def f(api):\n    await api.delete(JOBS, 'x', subresource=s)\n", id="sub"
        ),
    ],
)
def test_reader_refuses_calls_it_cannot_resolve(source: str) -> None:
    from controller.kube.resources import JOBS

    reader = CodeReader([_synthetic("controller/agent/synthetic.py", source, JOBS=JOBS)])
    with pytest.raises(UnresolvedCall):
        reader.api_calls()
