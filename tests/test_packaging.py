"""An installed (non-editable) wheel carries the Lua scripts and the default config."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
import registry, registry.scripts as scripts, registry._resources as res
assert registry.__file__.startswith(sys.argv[1]), registry.__file__
assert str(scripts.lua_dir()).startswith(sys.argv[1]), scripts.lua_dir()
assert scripts.load("catalog_write").source.startswith("-- catalog_write.lua")
assert all("--! include" not in scripts.load(name).source for name in scripts.names())  # lib/ shipped
assert str(res.data_file("models.json")).startswith(sys.argv[1])
print(len(scripts.names()))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("registry-*.whl")
    return built


def test_the_wheel_holds_lua_and_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    lua = sorted(p.name for p in (ROOT / "lua").glob("*.lua"))
    assert lua
    assert all(f"registry/lua/{name}" in names for name in lua)
    assert "registry/data/models.json" in names
    assert "registry/data/models.schema.json" in names
    assert "registry/py.typed" in names


def test_an_installed_wheel_finds_its_scripts(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # -I: isolated mode, so neither the working directory nor PYTHONPATH shadows the wheel
    done = subprocess.run(
        [sys.executable, "-I", "-c", CHECK, str(target)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(list((ROOT / "lua").glob("*.lua")))
