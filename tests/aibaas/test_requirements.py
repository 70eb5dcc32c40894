"""Production installs only requirements.txt: it must hold everything the served code imports
and none of the test and lint tools, which requirements-dev.txt adds on top."""

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ["aibaas", "accounts", "keys", "metering", "billing", "infra"]
# Run by tests, benchmarks or developers only, never by the production processes.
NOT_SERVED = ("tests", "aibaas/bench", "migrations")
DEV_TOOLS = {"pytest", "pytest-django", "selenium", "ruff", "import-linter", "schemathesis"}


def _pins(name: str) -> list[Requirement]:
    lines = (ROOT / name).read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and line[0] not in "#-"]


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions the pinned set installs: the pins and, recursively, what they need."""
    seen: set[tuple[str, frozenset]] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        extras = requirement.extras or {""}
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in extras
            ):
                todo.append(dependency)
    return {name for name, _ in seen}


def _served_imports() -> set[str]:
    names: set[str] = set()
    for package in PRODUCTION_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if any(part in relative for part in NOT_SERVED):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - set(PRODUCTION_PACKAGES)


def test_every_runtime_and_dev_requirement_is_pinned_exactly():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for requirement in _pins(name):
            assert str(requirement.specifier).startswith("=="), (name, str(requirement))


def test_dev_requirements_include_the_runtime_set_and_the_tools():
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev
    assert {r.name.lower() for r in _pins("requirements-dev.txt")} >= DEV_TOOLS


def test_runtime_requirements_hold_no_test_or_lint_tool():
    runtime = _closure(_pins("requirements.txt"))
    assert not DEV_TOOLS & runtime


def test_the_served_code_imports_only_what_requirements_txt_installs():
    runtime = _closure(_pins("requirements.txt"))
    distributions = metadata.packages_distributions()
    missing = {}
    for module in _served_imports():
        owners = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
        if not owners & runtime:
            missing[module] = sorted(owners)
    assert not missing, f"imported by served code but not installed by requirements.txt: {missing}"
