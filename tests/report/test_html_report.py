"""depthcut report: a self-contained HTML page, rendered in headless Chromium."""

import base64
import json
import os
import re
import shutil
import subprocess

import pytest

from depthcut.report.html import SECTIONS, write_html
from support import prune_args, run
from tiny import words

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("r")
    text = tmp / "t.txt"
    text.write_text("\n\n".join(words(200, seed=s) for s in range(8)))
    out = tmp / "fine"
    argv = prune_args(tiny_dir, out, text, "--units", "fine", "--perplexity", "--max-windows", "2")
    from depthcut.cli import main

    assert main([str(a) for a in argv]) == 0
    return out


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_page_has_every_section_and_inline_pngs(capsys, run_dir, tiny_dir):
    code, stdout, _ = run(capsys, "report", run_dir, "--generate", "--base", tiny_dir)
    assert code == 0 and "report.html" in stdout
    page = (run_dir / "report.html").read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    pngs = images(page)
    assert len(pngs) == 3  # heatmap, structure, dense → pruned trade-off point
    assert all(p[:8] == PNG for p in pngs)
    samples = json.loads((run_dir / "generations.json").read_text())
    assert len(samples) >= 3 and all(s["before"] and s["after"] for s in samples)
    assert page.count("repeated 4-grams") == 2 * len(samples)
    assert 'src="http' not in page and "<link" not in page  # nothing fetched when opened


def test_report_of_a_sweep_includes_its_curves(run_dir, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    png = images(write_html(run_dir).read_text())[0]
    for name in ("sweep_ppl.png", "sweep_latency.png"):
        (sweep / name).write_bytes(png)
    page = write_html(run_dir, sweep).read_text()
    curves = page.split('<section id="curves">')[1].split("</section>")[0]
    assert len(images(curves)) == 2


def test_report_refuses_a_directory_without_a_run(capsys, tmp_path):
    code, _, err = run(capsys, "report", tmp_path)
    assert code == 2 and "no report.json or history.json" in err


def test_report_of_an_iterative_run_uses_its_history(tmp_path):
    from depthcut.report.html import load_report

    plan = {"actions": [], "model": {"model_type": "llama", "params_all": 100}}
    (tmp_path / "depthcut.json").write_text(json.dumps({"format": 2, "plans": [plan]}))
    rows = [
        {"params_all": 100, "params_non_embedding": 80},
        {"params_all": 70, "params_non_embedding": 50},
    ]
    (tmp_path / "history.json").write_text(json.dumps(rows))
    report = load_report(tmp_path)
    assert report["before"]["params_all"] == 100 and report["after"]["params_all"] == 70


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it (apt-get install chromium)")
        pytest.skip("no chromium on this machine")
    page = run_dir / "report.html"
    if not page.exists():
        write_html(run_dir)
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == PNG
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 2400)
    from PIL import Image

    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text and plots, not a blank page


def test_coarse_plan_structure_marks_removed_and_narrowed():
    from depthcut.planning.plan import Action, Plan
    from depthcut.report.structure import coarse_structure, structure_markdown

    actions = [
        Action("block", 1, "model.layers.1", 10),
        Action("mlp", 3, "model.layers.3.mlp", 5),
        Action("head", 2, "model.layers.2.self_attn", 2, None, (0,)),
    ]
    data = coarse_structure(Plan(actions, {"num_blocks": 4, "params_all": 100}))
    assert data["rows"] == ["attention", "mlp"]
    assert data["status"] == [
        ["kept", "removed", "narrowed", "kept"],
        ["kept", "removed", "kept", "removed"],
    ]
    assert "| attention | · | x | n | · |" in structure_markdown(data)
