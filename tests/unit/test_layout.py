"""The layout rules of the README's "Layout" map, checked on the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from support.federation import REPO

PRODUCT_PACKAGES = ("app", "strategies", "models", "data")
MAX_FUNCTION_LINES = 80


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
        f"({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_function_longer_than_80_lines_in_the_product_packages():
    paths = _modules(*PRODUCT_PACKAGES)
    found = [hit for path in paths for hit in _long_functions(path)]
    assert not found, "split these functions:\n" + "\n".join(found)


def _defines_a_strategy(module: object) -> bool:
    from flwr.serverapp.strategy import Strategy

    return any(
        isinstance(obj, type)
        and issubclass(obj, Strategy)
        and obj.__module__ == module.__name__  # type: ignore[attr-defined]
        for obj in vars(module).values()
    )


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_strategies_folder_holds_only_strategies_and_their_helpers():
    import importlib

    files = [p for p in _modules("strategies") if p.name != "__init__.py"]
    strategies, others = [], []
    for path in files:
        module = importlib.import_module(_module_name(path))
        (strategies if _defines_a_strategy(module) else others).append(path)
    assert strategies, "no strategy found under strategies/"
    # A helper is a module that some strategy (or another helper) builds on.
    users = {name for path in files for name in _imported_names(path)}
    strays = [p.name for p in others if _module_name(p) not in users]
    assert not strays, f"not a strategy and used by no strategy: {strays}"


OURS = (*PRODUCT_PACKAGES, "scripts")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    base = package[: len(package) - node.level + (1 if _is_package(module) else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _is_package(module: str) -> bool:
    return (REPO / module.replace(".", "/") / "__init__.py").exists()


def _import_time_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements run when the module is imported (no function bodies, no
    ``if TYPE_CHECKING:`` blocks)."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out += _import_time_statements(node.orelse)
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.ClassDef):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    handler = isinstance(child, ast.excepthandler)
                    out += _import_time_statements(child.body if handler else [child])
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append(node)
    return out


def _import_graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import at import time."""
    paths = {_module_name(p): p for p in _modules(*OURS)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for node in _import_time_statements(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node)
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets | parents if t in paths and t != name}
    return graph


def _modules_in_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Members of every strongly connected component larger than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[str] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.extend([node, *component])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_import_graph_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _modules_in_cycles(graph) == ["a", "b", "c"]
    assert "app.client" in _import_graph()["app.client.cache"]


def test_every_module_imports_on_its_own():
    # Import cycles only show when a module is the first of its package to be
    # imported (a Ray actor unpickling a class imports exactly one module first).
    # Every module is imported once; each module on a cycle of import-time
    # imports (the static graph) is also imported first, in a state where none of
    # ours is loaded: the entry points where a cycle can fail.
    names = [_module_name(p) for p in _modules(*OURS)]
    entries = _modules_in_cycles(_import_graph())
    code = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"ours = {OURS!r}\n"
        "failed = []\n"
        "def load(name):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        if 'tenseal' not in str(err):\n"
        "            failed.append(f'{name}: {err}')\n"
        f"for name in {entries!r}:\n"
        "    for key in [k for k in sys.modules if k.split('.')[0] in ours]:\n"
        "        del sys.modules[key]\n"
        "    load(name)\n"
        f"for name in {names!r}:\n"
        "    load(name)\n"
        "print('\\n'.join(failed))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.stdout.strip() == "", out.stdout


# The Flower apps, and the modules they load when a message or a run comes.
APP_MODULES = (
    "app.client_app",
    "app.client.handlers",
    "app.server_app",
    "app.server.federation",
    "app.vertical.client",
    "app.vertical.server",
    "app.stats.server",
)


def test_flower_apps_import_no_script_or_test_harness():
    # One interpreter for both apps and what they import on the first message
    # or at the run's start (handlers, the server's paths): each entry's own
    # imports are printed before the next one.
    entries = APP_MODULES
    code = (
        "import importlib, sys\n"
        f"for entry in {entries!r}:\n"
        "    importlib.import_module(entry)\n"
        "    ours = sorted(m for m in sys.modules if m.split('.')[0] == 'scripts')\n"
        "    print(entry, ours)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()[-len(entries) :]
    assert lines == [f"{entry} []" for entry in entries], lines
