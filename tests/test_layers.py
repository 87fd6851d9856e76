"""The house as the imports draw it: every module in one layer, imports pointing down, no circles.

Counted: every `import` and `from … import` anywhere in a module (inside functions too), except under
`if TYPE_CHECKING:`. The layer order is the one in README "Dive into the code" and docs/extending.md.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kinema"

# component -> rank; a module may import its own component, a lower rank, or an edge listed in ALLOWED.
LAYERS = {
    "kinema": 0,  # the package root: __version__ only
    "diffusion": 1, "models": 1, "data": 1,  # peers: none imports another
    "precision": 2,
    "config": 3,
    "checkpoint": 4,
    "build": 5,
    "sample": 6, "train": 6, "eval": 6,
    "cli": 7, "__main__": 8,
    "pretrained": 0,  # package data only
}
ALLOWED = {("train", "sample"), ("eval", "sample")}  # previews while training; eval draws its videos


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The kinema modules that module `name` imports, resolving relative imports."""
    tree = ast.parse(source)
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for child in node.body for n in ast.walk(child)}
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "kinema")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kinema":
                continue
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            found.update(subs or [target])
    return {_existing(m, known) for m in found} - {name}


def _existing(module: str, known: set[str]) -> str:
    while module not in known and "." in module:  # `from kinema.x import name` where x is a module
        module = module.rpartition(".")[0]
    return module


def graph(root: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kinema"


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(edges.items()):
        if component(module) not in LAYERS:
            out.append(f"{module} sits in no layer (add it to LAYERS, or move it into a layer's folder)")
            continue
        for target in sorted(targets):
            a, b = component(module), component(target)
            if a == b or (a, b) in ALLOWED or LAYERS.get(b, 99) < LAYERS[a]:
                continue
            out.append(f"{module} imports {target}: {a} (layer {LAYERS[a]}) may not import {b} "
                       f"(layer {LAYERS.get(b)})")
    return out


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by depth-first search, each as the path that closes it."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_sits_in_a_layer_and_imports_point_down():
    edges = graph()
    assert len(edges) > 30 and "kinema.sample.generation" in edges
    assert layer_violations(edges) == []


def test_no_import_circles_even_inside_functions():
    assert circles(graph()) == []


def test_the_checker_sees_function_level_imports_relative_imports_and_circles(tmp_path):
    """The checks above could pass vacuously; this one shows they catch what they are for."""
    pkg = tmp_path / "kinema"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("from .media import read\n")
    (pkg / "data" / "media.py").write_text("def read():\n    from ..build import build\n")
    (pkg / "build.py").write_text("from .data import media\nif TYPE_CHECKING:\n    from .cli import main\n")
    (pkg / "cli.py").write_text("import kinema.build\n")
    edges = graph(pkg)
    assert edges["kinema.data.media"] == {"kinema.build"}  # a function-level, relative import
    assert edges["kinema.build"] == {"kinema.data.media"}  # TYPE_CHECKING imports are not counted
    assert edges["kinema.cli"] == {"kinema.build"}
    assert layer_violations(edges) == ["kinema.data.media imports kinema.build: data (layer 1) may not import build "
                                       "(layer 5)"]
    assert ["kinema.build", "kinema.data.media", "kinema.build"] in circles(edges)
    (pkg / "pipeline.py").write_text("")
    assert any("kinema.pipeline sits in no layer" in v for v in layer_violations(graph(pkg)))


@pytest.mark.parametrize("peer", ["models", "diffusion"])
def test_peers_of_the_lowest_layer_do_not_import_each_other(peer):
    edges = {"kinema.data.folders": {f"kinema.{peer}.x"}}
    assert layer_violations(edges)
