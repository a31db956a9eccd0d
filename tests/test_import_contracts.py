"""The import contracts of pyproject.toml, checked by import-linter's own command.

The code keeps them; a copy of the package with one bad import added breaks the
contract that forbids it (an upward import, a cycle inside a package, a module in
no layer, a socket in pki), so ``pytest`` alone catches what ``lint-imports`` would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The one beside this Python (the venv running the tests), else the one on PATH.
_BESIDE = Path(sys.executable).with_name("lint-imports")
LINT_IMPORTS = str(_BESIDE) if _BESIDE.exists() else shutil.which("lint-imports") or "lint-imports"


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports in ``cwd`` (its pyproject.toml; its ``mtlskit`` comes first)."""
    args = [LINT_IMPORTS, "--no-logo", "--no-cache"]
    for contract in contracts:
        args += ["--contract", contract]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A folder with a copy of src/mtlskit and the project's pyproject.toml."""
    shutil.copytree(
        ROOT / "src" / "mtlskit",
        tmp_path / "mtlskit",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " BROKEN" not in result.stdout


def test_an_unchanged_copy_keeps_every_contract(package_copy: Path) -> None:
    # What the failing cases below change is all that breaks them.
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr


BAD_IMPORTS = {
    "pki imports the server": (
        "pki/names.py",
        "from mtlskit.server.config import ServerConfig\n",
        "layers",
        "mtlskit.pki.names -> mtlskit.server.config",
    ),
    "errors imports cli, inside a function": (
        "errors.py",
        "def _later() -> None:\n    import mtlskit.cli.group\n",
        "layers",
        "mtlskit.errors -> mtlskit.cli.group",
    ),
    "tls imports the client": (
        "tls.py",
        "import mtlskit.client\n",
        "layers",
        "mtlskit.tls -> mtlskit.client",
    ),
    "a module in no layer": (
        "helpers.py",
        "HELPERS = 1\n",
        "layers",
        "mtlskit.helpers",
    ),
    "a cycle inside server": (
        "server/engine.py",
        "from mtlskit.server import protocol\n",
        "acyclic",
        "mtlskit.server",
    ),
    "pki opens a socket": (
        "pki/store.py",
        "import socket\n",
        "pki-offline",
        "mtlskit.pki.store -> socket",
    ),
}


@pytest.mark.parametrize(
    ("module", "code", "contract", "reported"), BAD_IMPORTS.values(), ids=list(BAD_IMPORTS)
)
def test_a_bad_import_breaks_its_contract(
    package_copy: Path, module: str, code: str, contract: str, reported: str
) -> None:
    path = package_copy / "mtlskit" / module
    before = path.read_text() if path.exists() else ""
    path.write_text(before + "\n" + code)
    result = lint_imports(package_copy, contract)
    assert result.returncode != 0, result.stdout
    assert " BROKEN" in result.stdout
    assert reported in result.stdout, result.stdout


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support/ (fixtures registered in conftest.py)."""
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(
            ("from tests.test_", "import tests.test_", "from tests.conftest")
        )
    ]
    assert offenders == []
