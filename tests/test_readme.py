"""Every code block of the README runs: its depthcut commands and its Python on a tiny model
saved as ``./my-model`` (the README's own placeholder); its ``pip install`` and ``make`` lines
are checked against pyproject.toml and the Makefile (CI runs `make test` itself). The headline
table is the one generated from its results file."""

import re
import shlex
import sys
import tomllib
from pathlib import Path

from depthcut.cli import main
from tiny import save_tiny

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def commands(code: str) -> list[str]:
    """The block's command lines, comments dropped."""
    return [line.split("  #")[0].strip() for line in code.splitlines() if line.strip()]


def check_pip(line: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for arg in shlex.split(line)[2:]:
        name, _, rest = arg.partition("[")
        assert name == "depthcut", line
        for extra in filter(None, rest.rstrip("]").split(",")):
            assert extra in extras, f"{line}: no extra {extra!r}"


def test_the_readme_has_the_blocks_this_test_runs():
    assert [lang for lang, _ in BLOCKS] == ["bash", "bash", "python", "bash"]


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    save_tiny(tmp_path / "my-model")
    monkeypatch.chdir(tmp_path)
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    ran = 0
    for lang, code in BLOCKS:
        if lang != "bash":
            continue
        for line in commands(code):
            if line.startswith("pip install"):
                check_pip(line)
            elif line.startswith("make "):
                assert line.split()[1] in targets, line
            else:
                argv = shlex.split(line)
                assert argv[0] == "depthcut", line
                code_ = main(argv[1:])
                assert code_ == 0, (line, capsys.readouterr().err)
                ran += 1
    assert ran == 3 and "| my-model-25 | neuron by ls, ls repair |" in capsys.readouterr().out


def test_the_readme_python_runs(tmp_path, monkeypatch):
    save_tiny(tmp_path / "my-model")
    monkeypatch.chdir(tmp_path)
    (code,) = [code for lang, code in BLOCKS if lang == "python"]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    import depthcut as dc

    reloaded, _ = dc.load(tmp_path / "my-model-25")
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in namespace["model"].parameters()
    )
    assert namespace["plan"].run["config"]["repair"] == "ls"


def test_the_headline_table_is_generated_from_its_results_file():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from headline import table

    assert table() in README, "README's headline table is stale: python benchmarks/headline.py"
