import re

from support.federation import REPO

from app.config import RunConfig


def test_every_run_config_key_is_documented():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", readme, flags=re.M))
    assert set(RunConfig.keys()) <= documented


def test_quickstart_has_exactly_the_two_commands():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("##", 1)[0]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    assert [line for line in block.strip().splitlines()] == ["make demo", "make test"]
