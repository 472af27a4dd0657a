"""The layout rules of the README's "Layout" map, checked on the source tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_every_module_imports_on_its_own():
    # Import cycles only show when a module is the first of its package to be
    # imported (a Ray actor unpickling a class imports exactly one module first).
    names = [
        _module_name(p) for p in _modules(*PRODUCT_PACKAGES, "scripts")
    ]
    code = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"names = {names!r}\n"
        f"ours = {(*PRODUCT_PACKAGES, 'scripts')!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for key in [k for k in sys.modules if k.split('.')[0] in ours]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        if 'tenseal' not in str(err):\n"
        "            failed.append(f'{name}: {err}')\n"
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


@pytest.mark.parametrize("entry", ["app.client_app", "app.server_app"])
def test_flower_apps_import_no_script_or_test_harness(entry):
    code = (
        f"import sys, {entry}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scripts'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
