"""MkDocs hook: pages generated at build time, so none can go stale by hand.

* ``reference/cli.md`` from depthcut's argparse parser (every verb, every option);
* ``benchmarks/results.md`` from ``benchmarks/results/*.json`` (each with its command, commit,
  date and hardware) and the benchmark plots (``benchmarks/img/``);
* ``contributing.md`` and ``changelog.md`` from the files at the repository's root.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cli_reference() -> str:
    from depthcut.cli.parser import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    lines = ["# CLI reference", "", "Generated from the argparse parser at build time.", ""]
    for name, sub in verbs.choices.items():
        lines += [f"## `depthcut {name}`", "", sub.description or _help(verbs, name), ""]
        lines += ["```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _help(verbs, name: str) -> str:
    return next((a.help for a in verbs._choices_actions if a.dest == name), "") or ""


def results_page() -> str:
    lines = ["# Results files", "", "Every `benchmarks/results/*.json`, as the benchmark wrote it."]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        lines += ["", f"## `{path.name}`", ""]
        facts = [f"command `{data['command']}`" if "command" in data else "command not recorded"]
        facts += [f"{k} {data[k]}" for k in ("commit", "date") if k in data]
        if "hardware" in data:
            hw = data["hardware"]
            facts.append(f"hardware {hw.get('cpu')} × {hw.get('cores')} cores")
        lines += ["; ".join(facts) + ".", "", "```json", _rows(data), "```"]
    return "\n".join(lines) + "\n"


def _rows(data: dict) -> str:
    body = {k: v for k, v in data.items() if k not in ("command", "commit", "date", "hardware")}
    text = json.dumps(body, indent=1)
    return text if len(text) < 6000 else text[:6000] + "\n… (truncated: see the file)"


def on_files(files, config):
    generated = {
        "reference/cli.md": cli_reference(),
        "benchmarks/results.md": results_page(),
        "contributing.md": (ROOT / "CONTRIBUTING.md").read_text(),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(),
    }
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/img/{png.name}", abs_src_path=str(png)))
    return files
