"""The daemon's layering and the module tables of docs/architecture.md, checked from the source.

Layers (folders of server/buildd_server/) import at run time only the layers
below them and the core modules; a lower layer may name a higher one in type
hints only. Every module has a row in the table of its folder, so the tables
cannot fall behind the tree. The client imports nothing of the server.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server" / "buildd_server"
CLIENT = ROOT / "client" / "buildd_client"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

CORE = ("errors", "error_details", "events", "config", "metrics")
# Bottom to top.
LAYERS = (
    "sources",
    "artifacts",
    "hooks",
    "environments",
    "pool",
    "service",
    "access",
    "wire",
    "daemon",
)


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def _runtime_imports(path: Path) -> set[str]:
    """Names of buildd_server's modules (and their members) imported outside TYPE_CHECKING."""
    where = ["buildd_server", *path.relative_to(SERVER).parts[:-1]]  # the module's package
    tree = ast.parse(path.read_text())
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = where[: len(where) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "buildd_server":
                target = node.module.split(".")
            else:
                continue
            found.add(".".join(target))
            found.update(".".join([*target, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "buildd_server")
    return found


def _layer(dotted: str) -> int | None:
    """The layer's position, -1 for core, None for a name that is no module of ours."""
    parts = dotted.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if parts[1] in CORE:
        return -1
    return None


@pytest.mark.parametrize("path", _modules(SERVER), ids=lambda p: str(p.relative_to(SERVER)))
def test_a_layer_imports_only_layers_below_it(path: Path) -> None:
    rel = path.relative_to(SERVER)
    own = LAYERS.index(rel.parts[0]) if len(rel.parts) > 1 else -1
    upward = sorted(
        name
        for name in _runtime_imports(path)
        if (layer := _layer(name)) is not None and layer > own
    )
    assert not upward, f"{rel} imports {upward} at run time, a layer above its own"


def test_every_server_folder_is_a_known_layer() -> None:
    folders = {p.name for p in SERVER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    top = {p.stem for p in SERVER.glob("*.py")} - {"__init__", "__main__"}
    assert folders == set(LAYERS)
    assert top == set(CORE)


def _sections(text: str) -> dict[str, str]:
    """The architecture page's daemon and client tables, by folder."""
    daemon = text[text.index("### Daemon (") : text.index("### Client (")]
    client = text[text.index("### Client (") :].split("\n## ", 1)[0]
    sections = {"client": client}
    for chunk in re.split(r"^#### ", daemon, flags=re.M)[1:]:
        heading, _, body = chunk.partition("\n")
        match = re.match(r"`(\w+)/`", heading)
        sections[match.group(1) if match else ""] = body
    return sections


def _named(body: str) -> set[str]:
    cells = [line.split(" | ")[0] for line in body.splitlines() if line.startswith("| `")]
    return {name for cell in cells for name in re.findall(r"`([\w/]+\.py)`", cell)}


def test_every_module_has_a_row_in_the_architecture_tables() -> None:
    sections = _sections(ARCHITECTURE.read_text())
    missing = []
    for path in _modules(SERVER):
        rel = path.relative_to(SERVER)
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        if path.name not in _named(sections.get(folder, "")):
            missing.append(str(rel))
    for path in _modules(CLIENT):
        if path.name not in _named(sections["client"]):
            missing.append(f"client: {path.name}")
    assert not missing, f"docs/architecture.md has no row for {missing}"


def test_the_tables_name_no_module_that_is_gone() -> None:
    sections = _sections(ARCHITECTURE.read_text())
    gone = []
    for folder, body in sections.items():
        root = CLIENT if folder == "client" else SERVER / folder
        gone += [f"{folder}/{name}" for name in _named(body) if not (root / name).is_file()]
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"


def test_the_client_imports_nothing_of_the_server() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules(CLIENT)
        if _runtime_imports_any(path, "buildd_server")
    ]
    assert not offenders


def _runtime_imports_any(path: Path, package: str) -> bool:
    """Whether ``path`` imports ``package`` anywhere, type hints included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] == package:
                return True
        elif isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == package for a in node.names
        ):
            return True
    return False
