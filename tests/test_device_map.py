"""Models across devices (accelerate device maps, ``--max-memory``): a map that offloads
blocks to disk scores, prunes and saves like the plain model; a model larger than
``--max-memory`` is streamed automatically and says so."""

import pytest
import torch

import depthcut as dc
from depthcut.cli import main
from depthcut.devices import memory_bytes, parse_max_memory
from depthcut.errors import ConfigError, UnsupportedModelError
from depthcut.models import load_model
from tiny import save_tiny, tiny_calib, words


def _offloaded(folder):
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    device_map |= {f"model.layers.{i}": "disk" if i in (2, 3) else "cpu" for i in range(6)}
    return load_model(str(folder), device_map=device_map)[0]


@pytest.mark.parametrize(
    "kw",
    [
        dict(units=("block",), importance="bi"),
        dict(units=("attention", "mlp"), importance="angular"),
    ],
    ids=["block", "sublayer"],
)
def test_disk_offloaded_map_scores_prunes_and_saves_like_the_plain_model(tmp_path, kw):
    save_tiny(tmp_path / "m")
    plain, mapped = load_model(str(tmp_path / "m"))[0], _offloaded(tmp_path / "m")
    assert any(p.is_meta for p in mapped.parameters())  # blocks 2 and 3 live on disk
    cfg, calib = dc.PruneConfig(**kw), tiny_calib()
    scores = dc.score(mapped, cfg, calib, progress=False)
    assert scores.unit_scores == dc.score(plain, cfg, calib, progress=False).unit_scores
    plan = dc.plan(scores, cfg, mapped)
    dc.save(dc.apply(mapped, plan), plan, tmp_path / "out")  # verified block by block
    ids = torch.arange(3, 25).unsqueeze(0)
    expected = dc.apply(plain, plan)(input_ids=ids).logits
    torch.testing.assert_close(dc.load(tmp_path / "out")[0](input_ids=ids).logits, expected)


def test_width_units_refuse_offloaded_weights(tmp_path):
    save_tiny(tmp_path / "m")
    cfg = dc.PruneConfig(units=("head",), heads=0.25)
    with pytest.raises(UnsupportedModelError, match="head / neuron units read every weight"):
        dc.score(_offloaded(tmp_path / "m"), cfg, tiny_calib(), progress=False)


def test_max_memory_flag():
    assert parse_max_memory("0=20GiB,cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert memory_bytes({0: "1GiB", "cpu": "2GiB", "disk": "9GiB"}) == 3 * 2**30
    with pytest.raises(ConfigError, match="give DEVICE=SIZE pairs"):
        parse_max_memory("lots")


def test_a_model_over_max_memory_is_streamed(tmp_path, capsys):
    save_tiny(tmp_path / "m")
    (tmp_path / "t.txt").write_text("\n\n".join(words(200, seed=s) for s in range(10)))
    argv = [
        "prune",
        tmp_path / "m",
        "--max-memory",
        "cpu=200KB",
        "--calib",
        tmp_path / "t.txt",
        "--n-samples",
        "8",
        "--seq-len",
        "32",
        "--out",
        tmp_path / "o",
    ]
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert "does not fit --max-memory" in err and "streamed: one block in memory" in err
    assert (tmp_path / "o" / "scores.json").exists()
    # --repair needs the whole model in memory: an automatically streamed one is refused
    assert main([str(a) for a in [*argv[:-1], tmp_path / "r", "--repair", "ls"]]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("depthcut: error:")]
    assert len(lines) == 1 and "--repair with --streaming (chosen or automatic)" in lines[0]
    assert not (tmp_path / "r").exists()
