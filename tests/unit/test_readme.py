"""The README stays a front page: short, two-command quickstart, links that resolve."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from support.federation import REPO

README_MAX_BYTES = 12_000
# Written by the config docs generator from the code's key declarations; a link to
# it is fine even in a checkout where it has not been generated yet.
GENERATED = {Path("docs/configuration.md")}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _readme() -> str:
    return (REPO / "README.md").read_text()


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _relative_links(path: Path) -> list[str]:
    links = LINK.findall(path.read_text())
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_readme_is_a_front_page_of_at_most_12000_bytes():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/"


def test_quickstart_has_exactly_the_two_commands():
    quick = _readme().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    assert block.strip().splitlines() == ["make demo", "make test"]


def test_every_relative_link_and_its_anchor_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for link in _relative_links(page):
            target, _, anchor = link.partition("#")
            resolved = (page.parent / target).resolve() if target else page
            if resolved.relative_to(REPO.resolve()) in GENERATED:
                continue
            if not resolved.exists() or (anchor and anchor not in _anchors(resolved)):
                broken.append(f"{page.relative_to(REPO)}: {link}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_guide_is_linked_from_the_readme():
    linked = {
        (REPO / link.split("#", 1)[0]).resolve()
        for link in _relative_links(REPO / "README.md")
    }
    guides = {p.resolve() for p in (REPO / "docs").glob("*.md")}
    assert guides <= linked, sorted(str(p.name) for p in guides - linked)
    assert (REPO / "docs/configuration.md").resolve() in linked


def test_recipe_keys_exist_in_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    keys = set(pyproject["tool"]["flwr"]["app"]["config"])
    recipes = _readme().split("## Recipes", 1)[1].split("\n## ", 1)[0]
    used = set()
    for run_config in re.findall(r'--run-config "([^"]*)"', recipes):
        used |= {item.split("=", 1)[0] for item in run_config.split()}
    assert used, "no --run-config in the recipes"
    assert used <= keys, sorted(used - keys)


def test_paths_named_in_the_readme_and_guides_exist():
    # Backticked repository paths such as `app/server/` or `tests/unit/x.py`.
    pattern = re.compile(
        r"`((?:app|strategies|models|data|scripts|tests)/[A-Za-z0-9_./]*)`"
    )
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    missing = [
        f"{page.relative_to(REPO)}: {path}"
        for page in pages
        for path in pattern.findall(page.read_text())
        # `app/config` may be a module or a package.
        if not (REPO / path).exists() and not (REPO / f"{path}.py").exists()
    ]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)
