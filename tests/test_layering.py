"""The layering the project promises, read from the source (no import runs):
agents → pipecat_nvasr → protocol ← services ← modal_deploy, no cycle between the packages of
services/, protocol-level errors defined once, one tiny-model builder, public Starlette API."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> dict[str, ast.Module]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = (path, ast.parse(path.read_text()))
    return out


def _imports(name: str, path: Path, tree: ast.Module) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from .. import redaction`: the names are modules
                    found.update(f"{target}.{alias.name}" for alias in node.names)
                    continue
            else:
                target = node.module or ""
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _unit(module: str) -> str:
    """The layer a module belongs to: a top-level package, or a first-level part of services/."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" and len(parts) > 1 else parts[0]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for package in ("services", "pipecat_nvasr", "agents"):
        for name, (path, tree) in _modules(package).items():
            for target in _imports(name, path, tree):
                if target.split(".")[0] in ("services", "pipecat_nvasr", "agents", "modal_deploy"):
                    if _unit(target) != _unit(name):
                        graph[_unit(name)].add(_unit(target))
    return graph


def test_dependencies_point_one_way():
    graph = _graph()
    assert not {t for t in graph["pipecat_nvasr"] if t.startswith(("services", "agents", "modal_deploy"))}
    for unit, targets in graph.items():
        if unit.startswith("services"):
            assert not {t for t in targets if t.startswith(("agents", "modal_deploy"))}, unit


def test_no_import_cycle_between_the_parts_of_services():
    graph = _graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(u for u in graph if u.startswith("services.") and reaches(u, u, set()))
    assert not cycles, {u: sorted(graph[u]) for u in cycles}
    assert "services.segmenter" not in graph["services.batch"]  # the cycle issue 18 found


def _defined(name: str, kind=ast.ClassDef) -> list[str]:
    where = []
    for package in ("services", "pipecat_nvasr", "tools"):
        for module, (_, tree) in _modules(package).items():
            if any(isinstance(n, kind) and n.name == name for n in tree.body):
                where.append(module)
    return where


def test_protocol_level_errors_live_in_one_module():
    assert _defined("Overloaded") == ["services.errors"]
    assert _defined("RateLimited") == ["services.errors"]
    defining = [m for m, (_, tree) in _modules("services").items()
                if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "FATAL_CLOSE" for t in n.targets)
                       for n in tree.body)]
    assert defining == []  # the close codes of fatal errors are the protocol's (pipecat_nvasr/protocol.py)


def test_one_tiny_model_builder():
    for function in ("model_config", "train_tokenizer", "build_model"):
        assert "services.tiny_model" in _defined(function, ast.FunctionDef)
    recipe = (ROOT / "tools" / "tiny_model" / "model.py").read_text()
    assert "services import tiny_model" in recipe and "ConformerEncoder" not in recipe  # no second config
    assert "SentencePieceTrainer" not in recipe


def test_the_server_uses_public_starlette_api_only():
    for path in (ROOT / "services").rglob("*.py"):
        assert not re.search(r"\.(_receive|_send)\b", path.read_text()), path  # Starlette's private channel
