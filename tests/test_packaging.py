"""depthcut installs next to a user's own torch: ranges in pyproject, exact pins only in
constraints.txt, heavy parts optional and imported only where used."""

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PINS = {
    Requirement(line).name: Version(str(Requirement(line).specifier).removeprefix("=="))
    for line in (ROOT / "constraints.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}


def _requirements():
    extras = [
        r for name, rs in PROJECT["optional-dependencies"].items() if name != "dev" for r in rs
    ]
    return [Requirement(r) for r in [*PROJECT["dependencies"], *extras] if "depthcut" not in r]


def test_library_requirements_are_ranges_not_pins():
    assert not [r for r in PROJECT["dependencies"] if "==" in r]
    assert Requirement(next(r for r in PROJECT["dependencies"] if r.startswith("torch"))).specifier


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_each_requirement_is_pinned_in_constraints_within_its_range(req):
    assert req.name in PINS, f"{req.name} is not pinned in constraints.txt"
    assert req.specifier.contains(PINS[req.name]), f"{req.name}=={PINS[req.name]} vs {req}"


def test_optional_parts_are_not_imported_by_the_core():
    code = (
        "import sys, depthcut, depthcut.api, depthcut.cli, depthcut.jobs, depthcut.io\n"
        "print(sorted(m for m in ('lm_eval', 'peft', 'h5py', 'torchao', 'matplotlib', "
        "'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout  # even transformers loads only when used


def test_a_missing_extra_names_itself(monkeypatch):
    import importlib.util

    from depthcut.errors import ConfigError
    from depthcut.extras import require

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "peft" else real(n))
    with pytest.raises(ConfigError, match=re.escape("pip install 'depthcut[recover]'")):
        require("peft")


def test_import_depthcut_is_light():
    code = "import sys, depthcut; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_one_version_a_license_and_no_published_dev_extra():
    from depthcut.version import __version__

    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert build["dynamic"]["version"] == {"attr": "depthcut.version.__version__"}
    cff = (ROOT / "CITATION.cff").read_text()
    assert f"\nversion: {__version__}\n" in cff and "license: Apache-2.0" in cff
    assert PROJECT["license"] == "Apache-2.0" and (
        ROOT / "LICENSE"
    ).read_text().lstrip().startswith("Apache License")
    assert "dev" not in PROJECT["optional-dependencies"]
    assert (ROOT / "src" / "depthcut" / "py.typed").exists()
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_lazy_exports_are_visible_to_type_checkers_and_dir():
    import ast

    import depthcut

    tree = ast.parse((ROOT / "src" / "depthcut" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n))
    # (module, attribute, exported name): ``from m import a as name`` for "m:a"
    imported = {(i.module, a.name, a.asname or a.name) for i in guarded.body for a in i.names}
    table = {name: (*where.partition(":")[::2], name) for name, where in depthcut._EXPORTS.items()}
    assert imported == {(m, a or name, name) for m, a, name in table.values()}
    assert depthcut.__all__ == sorted(depthcut._EXPORTS)
    assert set(depthcut._EXPORTS) <= set(dir(depthcut))
    for name, (module, attr, _) in table.items():  # each name is what its module defines
        assert getattr(depthcut, name) is getattr(importlib.import_module(module), attr or name)


def test_recover_quantize_and_export_are_functions_at_the_top_level():
    import depthcut as dc
    import depthcut.formats.run
    import depthcut.quantization
    import depthcut.recovery.run

    # importing the implementing modules must not shadow the functions with submodules
    assert dc.recover is depthcut.recovery.run.recover
    assert dc.quantize is depthcut.quantization.quantize
    assert dc.export is depthcut.formats.run.export_run


def _undocumented(name: str, obj: object) -> list[str]:
    import inspect

    missing = [] if inspect.getdoc(obj) else [name]
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            target = member.fget if isinstance(member, property) else member
            target = getattr(target, "__func__", target)
            if not attr.startswith("_") and callable(target) and not target.__doc__:
                missing.append(f"{name}.{attr}")
    return missing


def test_every_name_of_the_public_api_has_a_docstring():
    """The Python reference is generated from these: every export of ``import depthcut`` and
    each public method or property of an exported class says what it does."""
    import depthcut

    missing = [m for n in depthcut.__all__ for m in _undocumented(n, getattr(depthcut, n))]
    assert missing == []
    assert _undocumented("X", type("X", (), {"f": lambda self: 0, "__doc__": "x"})) == ["X.f"]
