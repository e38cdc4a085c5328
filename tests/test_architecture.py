"""The layering of docs/architecture.md, checked on the source: imports only point down, no import cycles, and importing
the package, the config layer or a script's `--help` loads no diffusers, timm or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prismatic"
HEAVY = ("transformers", "diffusers", "timm")

# Layer -> the prismatic layers it must never import (directly, at any place in a module, TYPE_CHECKING included).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "prismatic.util": ("prismatic.models", "prismatic.conf", "prismatic.training", "prismatic.preprocessing",
                       "prismatic.eval", "prismatic.demo", "prismatic.loader", "prismatic.assembly",
                       "prismatic.world_model"),
    "prismatic.overwatch": ("prismatic.models", "prismatic.conf", "prismatic.training", "prismatic.preprocessing",
                            "prismatic.loader", "prismatic.assembly"),
    "prismatic.models": ("prismatic.conf", "prismatic.training", "prismatic.preprocessing", "prismatic.eval",
                         "prismatic.demo", "prismatic.loader", "prismatic.assembly", "prismatic.world_model"),
    "prismatic.preprocessing": ("prismatic.training", "prismatic.conf", "prismatic.eval", "prismatic.loader",
                                "prismatic.assembly", "prismatic.world_model"),
    "prismatic.training": ("prismatic.conf", "prismatic.eval", "prismatic.loader", "prismatic.assembly",
                           "prismatic.world_model"),
    "prismatic.eval": ("prismatic.training", "prismatic.conf", "prismatic.assembly"),
    "prismatic.demo": ("prismatic.models", "prismatic.training", "prismatic.preprocessing", "prismatic.conf",
                       "prismatic.eval", "prismatic.loader", "prismatic.assembly"),
    "prismatic.conf": ("prismatic.loader", "prismatic.assembly"),
    # World-model training (the generative encoder's video model): data, objective; used by its script, not by the VLM.
    "prismatic.world_model": ("prismatic.conf", "prismatic.eval", "prismatic.loader", "prismatic.assembly",
                              "prismatic.demo"),
    # The top: exporting (scripts/export.py) over the Hugging Face formats over the loader; nothing imports them back.
    "prismatic.hf": ("prismatic.export", "prismatic.eval", "prismatic.demo", "prismatic.world_model"),
    "prismatic.export": ("prismatic.eval", "prismatic.demo", "prismatic.world_model"),
}  # fmt: skip
for _lower in ("prismatic.util", "prismatic.overwatch", "prismatic.models", "prismatic.preprocessing",
               "prismatic.training", "prismatic.eval", "prismatic.conf", "prismatic.world_model", "prismatic.demo"):
    FORBIDDEN[_lower] += ("prismatic.export", "prismatic.hf")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The prismatic modules a file imports (`top_level_only`: those executed at import time, so no imports inside
    functions or under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not top_level_only else _module_level(tree.body)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "prismatic"}


def _module_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, (ast.If, ast.Try)):
            yield from _module_level(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", []))
        yield node


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_only_point_down(layer: str) -> None:
    offences = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name == layer or name.startswith(layer + ".")
        for target in imports(path, top_level_only=False)
        if any(target == bad or target.startswith(bad + ".") for bad in FORBIDDEN[layer])
    ]
    assert not offences, "\n".join(offences)


def test_no_import_cycles() -> None:
    """Module-level imports form a DAG (a cycle would make import order matter)."""

    def resolve(target: str) -> str | None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    graph = {name: {resolve(t) for t in imports(path, top_level_only=True)} - {None, name}
             for name, path in MODULES.items()}  # fmt: skip
    # A package's __init__ importing its own submodules is not a cycle of the design; skip parent -> child edges.
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):  # type: ignore[arg-type]
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


CHEAP = [
    ["-c", "import prismatic"],
    ["-c", "import prismatic.overwatch, prismatic.conf.pretrain"],
    *[[str(REPO / "scripts" / f"{script}.py"), "--help"]
      for script in ("pretrain", "cache_features", "preprocess", "evaluate", "generate", "demo", "train_world_model",
                     "export")],
    [str(REPO / "infer.py"), "--help"],
]  # fmt: skip


@pytest.mark.parametrize("argv", CHEAP, ids=[" ".join(Path(a).name for a in argv) for argv in CHEAP])
def test_import_and_help_load_no_model_libraries(argv: list[str]) -> None:
    probe = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    exec(sys.argv[1]) if sys.argv[0] == '-c' else runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]
