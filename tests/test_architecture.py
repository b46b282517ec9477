"""The shape of the code, held: app/'s packages and import floors, what the exporter takes from the service, and
one place that reads the settings."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOST_FLOORS = 9
MOST_ENTRIES = 10


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports anywhere (inside functions too), except under TYPE_CHECKING: those
    imports never run."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def floors(root: Path) -> dict[str, int]:
    """A module's floor: 1 + the highest floor among the modules of `root` it imports (its own package's __init__
    aside). An import cycle fails here."""
    found = modules(root)
    depends = {name: {d for d in imported(path, set(found)) if d != name and not name.startswith(d + ".")}
               for name, path in found.items()}
    floor: dict[str, int] = {}

    def of(name: str, trail: tuple[str, ...] = ()) -> int:
        assert name not in trail, "import cycle: " + " -> ".join((*trail, name))
        if name not in floor:
            floor[name] = 1 + max((of(d, (*trail, name)) for d in depends[name]), default=0)
        return floor[name]

    for name in found:
        of(name)
    return floor


def test_app_is_a_few_packages_on_few_import_floors():
    entries = [path.name for path in (REPO / "app").iterdir() if path.name != "__pycache__"]
    assert len(entries) <= MOST_ENTRIES, sorted(entries)
    levels = floors(REPO / "app")
    assert max(levels.values()) <= MOST_FLOORS, sorted(levels.items(), key=lambda item: -item[1])[:5]


def test_the_exporter_takes_from_the_service_only_what_the_two_must_share():
    shared = {"app.tasks.specs", "app.engine.packing", "app.serving.model_folder"}
    known = set(modules(REPO / "app"))
    for path in (REPO / "export").glob("*.py"):
        assert imported(path, known) <= shared, path.name


def test_only_the_settings_module_reads_roberta_variables():
    for path in (REPO / "app").rglob("*.py"):
        if path.name != "settings.py":
            assert "ROBERTA_" not in "".join(
                line for line in path.read_text().splitlines() if "environ" in line or "getenv" in line
            ), path
