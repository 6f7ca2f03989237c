"""`make package`'s last step: the depthcut installed from the built wheel (not this checkout)
answers --help and prunes a tiny model. Usage: python tests/package_smoke.py VENV"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tiny import save_tiny, words  # noqa: E402


def main(venv: Path) -> None:
    venv = venv.resolve()
    python, cli = venv / "bin" / "python", venv / "bin" / "depthcut"
    where = subprocess.run(
        [str(python), "-c", "import depthcut; print(depthcut.__file__)"],
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir(),
    ).stdout.strip()  # fmt: skip
    assert str(venv.resolve()) in str(Path(where).resolve()), f"not the wheel's: {where}"
    subprocess.run([str(cli), "--help"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_tiny(root / "model")
        (root / "text.txt").write_text("\n\n".join(words(200, seed=s) for s in range(10)))
        argv = [str(cli), "prune", str(root / "model"), "--out", str(root / "pruned")]
        argv += ["--calib", str(root / "text.txt"), "--n-samples", "8", "--seq-len", "32"]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
        assert done.returncode == 0, done.stderr
        assert (root / "pruned" / "model.safetensors").exists()
        assert (root / "pruned" / "plan.json").exists()
    print(f"depthcut package: the wheel installed in {venv} prunes a tiny model")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
