"""The package's import graph, read from the source with ``ast``, keeps its layers.

Every ``import`` and ``from ... import`` of every module under ``lerf_ros/`` counts, also those
inside functions (lazy imports) and under ``if TYPE_CHECKING``; relative imports are resolved.
Three rules:

(a) no import cycle between modules;
(b) ROS stays in ``lerf_ros/ros/``: no other module imports rclpy, rosidl, a ROS message package
    (``*_msgs``, ``*_srvs``, ``*_interfaces``, ...), ``lerf_ros.msg`` / ``lerf_ros.srv`` or any
    ``lerf_ros.ros`` module; only the top floor (``lerf_ros/commands/*``, ``lerf_ros/cli.py``) may
    import ``lerf_ros.ros`` modules, and only inside functions (lazily);
(c) no upward import: each top-level part of the package sits on a floor of ``FLOORS``
    (lowest first) and imports only from lower floors or from inside itself. Parts on the same
    floor are independent (neither imports the other). A new top-level part must be placed here.

When something imports upward, move the shared piece down rather than weakening a rule.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import pytest

PACKAGE = "lerf_ros"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

#: Floors, lowest first: the top-level parts of ``lerf_ros`` (sub-packages or modules). ``lerf_ros``
#: itself is its ``__init__``; ``bench`` is the benchmark package (or a single module).
FLOORS: Sequence[Tuple[str, ...]] = (
    ("lerf_ros",),  # the package __init__: nothing of its own
    ("config", "config_docs"),  # typed configuration; its documentation reader
    ("geometry",),  # poses, camera maths, image decoding
    ("data",),  # Frame and the posed-frame sources
    ("field", "teachers"),  # the neural field; the 2D teachers (side by side)
    ("mapping",),  # the mapping session
    ("query",),  # text in, points and grasps out
    ("sim",),  # physics checks of grasps (when present)
    ("bench",),  # the benchmark
    ("ros",),  # nodes, conversions, clients: the only rclpy users
    ("commands", "cli"),  # the lerf-ros command line
)
ROS_PART = "ros"
TOP_FLOOR = ("commands", "cli")
#: top-level Python packages that need a ROS install (plus the names ending in ROS_SUFFIXES)
ROS_PREFIXES = ("rclpy", "rosidl", "rcl_", "rmw", "ament_", "launch", "tf2", "cv_bridge", "message_filters", "rosgraph")
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces")
#: the package's own generated interfaces
GENERATED = (f"{PACKAGE}.msg", f"{PACKAGE}.srv")


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen from ``module`` (file ``path``, line ``line``)."""

    module: str
    target: str
    path: str
    line: int
    lazy: bool  # inside a function (runs when called, not when the module is imported)

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.target}{' (in a function)' if self.lazy else ''}"


# ------------------------------------------------------------------------------------------ reading
def module_files(package_dir: Path) -> List[Tuple[str, Path]]:
    """(dotted name, file) of every module of the package (``pkg/__init__.py`` is ``pkg``). While a
    module becomes a package, ``x.py`` and ``x/__init__.py`` share one name and both are read."""
    root = package_dir.parent
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def module_names(package_dir: Path) -> Set[str]:
    """Dotted names of the package's modules."""
    return {name for name, _ in module_files(package_dir)}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, path: str, known: Set[str]):
        self.module, self.is_package, self.path, self.known = module, is_package, path, known
        self.depth = 0
        self.found: List[Import] = []

    def _add(self, target: str, node: ast.AST) -> None:
        self.found.append(Import(self.module, target, self.path, node.lineno, self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.module, self.is_package, node)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod
            self._add(sub if sub in self.known else base, node)


def read_imports(package_dir: Path = PACKAGE_DIR) -> List[Import]:
    """Every import of every module of the package (see the module doc)."""
    known = module_names(package_dir)
    out: List[Import] = []
    for module, path in module_files(package_dir):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        c = _Collector(module, path.name == "__init__.py", str(path.relative_to(package_dir.parent)), known)
        c.visit(tree)
        out.extend(dict.fromkeys(c.found))  # ``from m import a, b``: one record per target
    return out


# ------------------------------------------------------------------------------------------ rules
def part_of(name: str) -> Optional[str]:
    """The top-level part of ``lerf_ros`` a dotted name belongs to (``lerf_ros`` for the package
    itself), or None outside the package."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else PACKAGE


def is_generated(name: str) -> bool:
    """Whether ``name`` is (inside) ``lerf_ros.msg`` or ``lerf_ros.srv``."""
    return any(name == g or name.startswith(g + ".") for g in GENERATED)


def is_ros(name: str) -> bool:
    """Whether importing ``name`` needs ROS (rclpy, generated interfaces, ROS Python packages)."""
    top = name.split(".")[0]
    return is_generated(name) or top.startswith(ROS_PREFIXES) or top.endswith(ROS_SUFFIXES)


def find_cycles(imports: Iterable[Import], modules: Iterable[str]) -> List[List[str]]:
    """Import cycles among ``modules`` (each as a closed path ``[a, b, ..., a]``), one per strongly
    connected component of more than one module (or a module importing itself)."""
    modules = set(modules)
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.module in modules and imp.target in modules:
            graph[imp.module].add(imp.target)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan, iterative over the successors
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, succ = work[-1]
            for w in succ:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1 or node in graph[node]:
                        components.append(comp)

    for m in sorted(graph):
        if m not in index:
            strongconnect(m)

    return [_cycle_through(min(comp), graph, set(comp)) for comp in components]


def _cycle_through(start: str, graph: Dict[str, Set[str]], members: Set[str]) -> List[str]:
    """A shortest closed import path ``[start, ..., start]`` inside one strongly connected component."""
    prev: Dict[str, str] = {}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for w in sorted(graph[u] & members):
            if w == start:
                path = [u]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w not in prev:
                prev[w] = u
                queue.append(w)
    raise AssertionError(f"{start} is in no cycle")  # cannot happen for a component of find_cycles


def ros_violations(imports: Iterable[Import]) -> List[str]:
    """Rule (b): ROS imports outside ``lerf_ros/ros/`` (the top floor: ``lerf_ros.ros`` lazily only)."""
    bad = []
    for imp in imports:
        part = part_of(imp.module)
        if part == ROS_PART:
            continue
        if is_ros(imp.target):
            bad.append(f"{imp.where()}: only lerf_ros/ros/ may import ROS")
        elif part_of(imp.target) == ROS_PART:
            if part not in TOP_FLOOR:
                bad.append(f"{imp.where()}: only lerf_ros/ros/ and the command line may use lerf_ros.ros")
            elif not imp.lazy:
                bad.append(
                    f"{imp.where()}: the command line imports lerf_ros.ros inside functions only "
                    "(so ROS-free commands and --help run without ROS)"
                )
    return bad


def floor_violations(imports: Iterable[Import], floors: Sequence[Tuple[str, ...]] = FLOORS) -> List[str]:
    """Rule (c): imports of a higher floor, of another part of the same floor, or by/of a part
    that has no floor."""
    level = {part: i for i, parts in enumerate(floors) for part in parts}
    bad = []
    for imp in imports:
        src, dst = part_of(imp.module), part_of(imp.target)
        if dst is None or src == dst or is_generated(imp.target):  # generated interfaces: rule (b)
            continue
        for part in (src, dst):
            if part not in level:
                bad.append(f"{imp.where()}: '{part}' has no floor; place it in FLOORS")
                break
        else:
            if level[dst] > level[src]:
                bad.append(f"{imp.where()}: upward import ({src} is below {dst})")
            elif level[dst] == level[src]:
                bad.append(f"{imp.where()}: {src} and {dst} sit side by side and must not import each other")
    return bad


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def imports() -> List[Import]:
    return read_imports()


def test_the_reader_sees_the_package(imports):
    modules = set(module_names(PACKAGE_DIR))
    assert {"lerf_ros.geometry.poses", "lerf_ros.ros.convert", "lerf_ros.commands.replay"} <= modules
    # a lazy import inside a function is read and marked lazy
    assert any(
        i.module == "lerf_ros.commands.replay" and i.target == "lerf_ros.ros.replay_node" and i.lazy for i in imports
    )


def test_no_import_cycle(imports):
    cycles = find_cycles(imports, module_names(PACKAGE_DIR))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_ros_only_in_the_ros_package(imports):
    bad = ros_violations(imports)
    assert not bad, "ROS outside lerf_ros/ros/:\n" + "\n".join(bad)


def test_no_upward_import(imports):
    bad = floor_violations(imports)
    assert not bad, f"floors (lowest first): {FLOORS}\n" + "\n".join(bad)


def test_the_checker_reports_what_it_should(tmp_path):
    """A synthetic package with a cycle, upward imports and misplaced ROS imports: every rule fires,
    names the module and the import, and leaves the allowed imports alone."""
    files = {
        "__init__.py": "",
        "config.py": "import os\n",
        "geometry/__init__.py": "",
        "geometry/a.py": "from . import b\n",
        "geometry/b.py": "from .c import thing\n",
        "geometry/c.py": "def f():\n    from lerf_ros.geometry.a import x\n",  # closes a -> b -> c -> a lazily
        "data/__init__.py": "",
        "data/reader.py": "from ..mapping.store import Store\nfrom lerf_ros.geometry import b\n",
        "field/__init__.py": "",
        "field/model.py": "from lerf_ros.teachers import base\n",
        "teachers/__init__.py": "",
        "teachers/base.py": "",
        "mapping/__init__.py": "",
        "mapping/store.py": "from lerf_ros.data.reader import load\n",  # a second cycle, across parts
        "query/__init__.py": "",
        "query/engine.py": "import rclpy\nfrom sensor_msgs.msg import Image\nimport numpy\n",
        "ros/__init__.py": "",
        "ros/node.py": "import rclpy\nfrom lerf_ros.srv import Query\nfrom lerf_ros.query import engine\n",
        "commands/__init__.py": "",
        "commands/good.py": "def run():\n    from lerf_ros.ros.node import main\n",
        "commands/eager.py": "from lerf_ros.ros import node\n",
        "sim2/__init__.py": "from lerf_ros.config import x\n",
        "bench.py": "from lerf_ros.query import engine\n",  # a module turning into a package:
        "bench/__init__.py": "from lerf_ros.ros import node\n",  # both files are read
    }
    pkg = tmp_path / PACKAGE
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    imports = read_imports(pkg)
    targets = {(i.module, i.target, i.lazy) for i in imports}
    assert ("lerf_ros.geometry.a", "lerf_ros.geometry.b", False) in targets  # from . import b
    assert ("lerf_ros.geometry.b", "lerf_ros.geometry.c", False) in targets  # from .c import thing
    assert ("lerf_ros.data.reader", "lerf_ros.mapping.store", False) in targets  # from ..mapping.store
    assert ("lerf_ros.geometry.c", "lerf_ros.geometry.a", True) in targets  # lazy
    assert {
        ("lerf_ros.bench", "lerf_ros.query.engine", False),
        ("lerf_ros.bench", "lerf_ros.ros.node", False),
    } <= targets

    cycles = find_cycles(imports, module_names(pkg))
    assert sorted(sorted(c[:-1]) for c in cycles) == [
        ["lerf_ros.data.reader", "lerf_ros.mapping.store"],
        ["lerf_ros.geometry.a", "lerf_ros.geometry.b", "lerf_ros.geometry.c"],
    ]
    edges = {(i.module, i.target) for i in imports}
    for c in cycles:
        assert c[0] == c[-1] and all((a, b) in edges for a, b in zip(c, c[1:])), c

    ros = "\n".join(ros_violations(imports))
    assert "lerf_ros/query/engine.py:1: lerf_ros.query.engine imports rclpy" in ros
    assert "lerf_ros.query.engine imports sensor_msgs.msg" in ros
    assert "lerf_ros/commands/eager.py:1: lerf_ros.commands.eager imports lerf_ros.ros.node" in ros
    assert "lerf_ros/bench/__init__.py:1: lerf_ros.bench imports lerf_ros.ros.node" in ros
    assert len(ros_violations(imports)) == 4  # not numpy, not the ros module, not the lazy command

    floors = "\n".join(floor_violations(imports))
    assert (
        "lerf_ros/data/reader.py:1: lerf_ros.data.reader imports lerf_ros.mapping.store: upward import "
        "(data is below mapping)" in floors
    )
    assert "lerf_ros.field.model imports lerf_ros.teachers.base: field and teachers sit side by side" in floors
    assert "lerf_ros.sim2 imports lerf_ros.config: 'sim2' has no floor" in floors
    assert "lerf_ros/bench/__init__.py:1: lerf_ros.bench imports lerf_ros.ros.node: upward import" in floors
    assert len(floor_violations(imports)) == 4  # downward imports (mapping -> data, bench -> query) pass

    # the real checks pass on a clean graph
    clean = [
        Import("lerf_ros.query.engine", "lerf_ros.geometry.camera", "q.py", 1, False),
        Import("lerf_ros.ros.node", "rclpy", "r.py", 1, False),
        Import("lerf_ros.cli", "lerf_ros.ros.client", "c.py", 9, True),
    ]
    assert not find_cycles(clean, {"lerf_ros.query.engine", "lerf_ros.geometry.camera"})
    assert not ros_violations(clean) and not floor_violations(clean)


def test_ros_names():
    for name in (
        "rclpy",
        "rclpy.node",
        "rosidl_runtime_py.convert",
        "sensor_msgs.msg",
        "std_srvs.srv",
        "rcl_interfaces.msg",
        "tf2_ros",
        "lerf_ros.msg",
        "lerf_ros.srv._query",
        "launch_ros.actions",
    ):
        assert is_ros(name), name
    for name in ("numpy", "rosbags.rosbag2", "lerf_ros.geometry.image", "torch", "lerf_ros.mapping.session"):
        assert not is_ros(name), name
