"""The call trace: which channels a view of a module output selects, how a fused projection's
channels split, and that tracing leaves no hook behind."""

import pytest
import torch
from torch import nn

from depthcut.graph.capture import channel_segments, trace_calls, view_channels, whole_runs
from tiny import tiny_phi3


@pytest.fixture
def base():
    return torch.arange(2 * 3 * 12, dtype=torch.float32).view(2, 3, 12)


def test_view_channels_reads_slices_splits_and_per_head_chunks(base):
    assert view_channels(base[..., 4:8], base) == (4, 5, 6, 7)
    assert view_channels(base.split([6, 3, 3], dim=-1)[2], base) == (9, 10, 11)
    k = base.view(2, 3, 2, 6).chunk(3, dim=-1)[1]  # GPT-NeoX: per head [q k v]
    assert view_channels(k, base) == (2, 3, 8, 9)
    assert view_channels(k.transpose(1, 2), base) == (2, 3, 8, 9)
    assert view_channels(base[..., ::2], base) == tuple(range(0, 12, 2))
    assert view_channels(base.view(2, 36)[:, 10:14], base) is None  # crosses rows


def test_channel_segments_partition_or_refuse():
    q, k, v = tuple(range(0, 8)), tuple(range(8, 12)), tuple(range(12, 16))
    halves = tuple(c for h in range(4) for c in range(h * 4, h * 4 + 2))  # RoPE half heads
    assert channel_segments([q, k, v, halves], 16, run=4) == [q, k, v]
    assert channel_segments([halves], 16, run=4) == [tuple(range(16))]
    assert channel_segments([tuple(range(0, 10)), tuple(range(6, 16))], 16) is None
    assert whole_runs((4, 5, 6, 7, 12, 13, 14, 15), 4) and not whole_runs(halves, 4)


def test_trace_records_views_of_a_fused_projection_and_removes_its_hooks():
    model = tiny_phi3(layers=2)
    ids = torch.tensor([[5, 9, 3, 17]])
    calls = trace_calls(model, lambda: model(input_ids=ids, use_cache=False))
    qkv = next(c for c in calls if c.path.endswith("0.self_attn.qkv_proj"))
    sizes = {len(v) for v in qkv.views}
    assert {32, 16} <= sizes  # q: 4 heads × 8; k, v: 2 KV heads × 8 (and RoPE half-heads)
    assert channel_segments(qkv.views, 64, run=8) == [
        tuple(range(0, 32)),
        tuple(range(32, 48)),
        tuple(range(48, 64)),
    ]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_are_removed_when_the_run_fails():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def boom():
        model(torch.zeros(1, 4))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        trace_calls(model, boom)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
