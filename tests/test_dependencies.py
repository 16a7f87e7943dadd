"""The client installs next to newer Pipecat releases, and CI tests the oldest one it claims."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pipecat_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in specs if Requirement(r).name == "pipecat-ai"]


def test_pipecat_is_a_compatible_range_not_a_pin():
    requirements = _pipecat_requirements()
    assert requirements
    for requirement in requirements:
        assert requirement.specifier.contains("1.14.0") and requirement.specifier.contains("1.27.1"), requirement
        assert not requirement.specifier.contains("2.0.0") and not requirement.specifier.contains("1.13.9"), requirement


def test_ci_installs_the_lower_bound():
    constraints = (ROOT / "scripts" / "lower-bounds.txt").read_text()
    assert re.search(r"^pipecat-ai==1\.14\.0$", constraints, re.M)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r'pip install .*-e "\.\[.*\]" .*-c scripts/lower-bounds\.txt', setup)
    # this environment is the one CI builds that way
    assert importlib.metadata.version("pipecat-ai") == "1.14.0"
