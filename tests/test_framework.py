"""service.framework: every BentoML and uvicorn internal seqserve relies on is there, pinned, and checked at start-up."""

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from service.framework.internals import INTERNALS, FrameworkChanged, Internal, check

ROOT = Path(__file__).resolve().parent.parent
PRIVATE = ("bentoml._internal", "_bentoml_impl", "_bentoml_sdk", "uvicorn.protocols", "uvicorn.config")


def test_every_internal_is_there_in_the_installed_versions():
    check()


def test_the_installed_versions_are_the_pinned_ones():
    pins = {Requirement(line).name: Requirement(line) for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in ("bentoml", "uvicorn", "starlette"):
        assert pins[name].specifier, f"{name} is not pinned to a tested range in pyproject.toml"
        installed = importlib.metadata.version(name)
        assert pins[name].specifier.contains(installed), f"{name} {installed} is outside the tested range {pins[name].specifier}"


def test_a_method_that_is_gone_is_named(monkeypatch):
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    monkeypatch.delattr(HttpToolsProtocol, "on_body")
    with pytest.raises(FrameworkChanged, match=r"^uvicorn\.protocols\.http\.httptools_impl\.HttpToolsProtocol has no 'on_body' any more; "
                                                r"seqserve is tested with the bentoml, uvicorn and starlette versions pinned"):
        check()


def test_a_module_that_moved_and_a_key_that_is_gone_are_named(monkeypatch):
    with pytest.raises(FrameworkChanged, match=r"^bentoml\._internal\.moved\.Thing cannot be imported \(No module named"):
        check((Internal("bentoml._internal.moved", "Thing"),))
    from uvicorn import config

    monkeypatch.delitem(config.WS_PROTOCOLS, "auto")
    with pytest.raises(FrameworkChanged, match=r"^uvicorn\.config\.WS_PROTOCOLS has no 'auto' any more"):
        check()


def test_a_missing_internal_stops_the_service_with_one_line():
    """What a bad upgrade does to `bentoml serve`: importing the service exits 1 with one line, no traceback."""
    breaking = "import uvicorn.config as c; del c.HTTP_PROTOCOLS['auto']; import service.app"
    done = subprocess.run([sys.executable, "-c", breaking], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "seqserve: cannot start: uvicorn.config.HTTP_PROTOCOLS has no 'auto' any more; seqserve is tested with the "
        "bentoml, uvicorn and starlette versions pinned in pyproject.toml (see service/framework/__init__.py)"
    )
    assert "Traceback" not in done.stderr


def test_no_module_outside_the_framework_imports_a_private_name():
    every = [path for package in ("service", "models") for path in sorted((ROOT / package).rglob("*.py"))]
    outside = [path for path in every if "framework" not in path.relative_to(ROOT).parts]
    for path in outside:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            private = [name for name in names if name.startswith(PRIVATE)]
            assert not private, f"{path.relative_to(ROOT)} imports {private[0]}: framework internals belong in service/framework"


def test_the_framework_docstring_names_every_internal_it_checks():
    import service.framework

    for internal in INTERNALS:
        named = internal.name or internal.module
        assert named.split(".")[-1] in service.framework.__doc__, f"{internal.where} is checked but not listed in service/framework"
