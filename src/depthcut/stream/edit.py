"""What a plan does to one block, realised on a block loaded from the shards: removed blocks
are skipped, removed sublayers bypassed (for running) or left out (for writing), heads /
neurons sliced out of the loaded block's projections by the in-memory width surgery, and
fine-grained units realised by the in-memory Prune(f) surgery on the block's graph."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from depthcut.kinds import Kind
from depthcut.methods.width.apply import prune_width
from depthcut.methods.width.surgery import layers_of
from depthcut.planning.plan import Plan
from depthcut.stream.source import BlockSource
from depthcut.units.bypass import bypassed
from depthcut.units.discover import discover_units


class PlanEdit:
    def __init__(self, source: BlockSource, plan: Plan):
        self.source = source
        self.drop = frozenset(plan.removed_blocks)
        sub = [a for a in plan.actions if a.kind in (Kind.ATTENTION, Kind.MLP)]
        sub = [a for a in sub if a.block not in self.drop]
        kinds = tuple(sorted({a.kind for a in sub}))
        wanted = {a.unit_id for a in sub}
        units = discover_units(source.model, source.structure, kinds) if kinds else []
        self.sublayers = [u for u in units if u.id in wanted]
        # module paths (as name prefixes) whose tensors go: the sublayers with their norms
        self.gone = tuple(m + "." for u in self.sublayers for m in u.modules)
        self.width = [a for a in plan.actions if a.kind.family == "width"]
        self.layers = layers_of(source.model, source.structure, self.width) if self.width else {}
        self.fine = self._fine_states(plan)

    def _fine_states(self, plan: Plan) -> dict:
        """{block: FineState} of the plan's fine actions, replayed on the block graph (checked
        against the plan's fingerprint, as in memory)."""
        actions = [a for a in plan.actions if a.kind is Kind.FINE]
        if not actions:
            return {}
        from depthcut.methods.fine.model import check_fingerprint
        from depthcut.stream.fine import stream_fine_model

        self.fm = stream_fine_model(self.source)
        check_fingerprint(plan.model.get("fine_graph"), self.fm.fingerprint())
        return {i: s for i, s in self.fm.replay(actions).items() if s.pruned}

    def edits(self, i: int) -> bool:
        """Whether block ``i``'s own tensors change (not only whole modules leaving)."""
        return bool(self.widths(i)) or i in self.fine

    def kept(self) -> list[int]:
        return [i for i in range(self.source.structure.num_blocks) if i not in self.drop]

    def widths(self, i: int) -> list:
        return [a for a in self.width if a.block == i]

    def slice(self, i: int) -> None:
        """Slice block ``i``'s removed heads / neurons out and realise its fine-grained units
        (the block must be loaded)."""
        from depthcut.methods.fine.surgery import materialize

        for action in self.widths(i):
            prune_width(self.source.model, self.layers[action.unit_id], list(action.members))
        if i in self.fine:
            materialize(self.fine[i], self.source.blocks[i])

    @contextmanager
    def running(self, i: int) -> Iterator[None]:
        """Block ``i`` (loaded) as the pruned model runs it: sliced, its removed sublayers
        bypassed, for the duration of the context."""
        self.slice(i)
        units = [u for u in self.sublayers if u.block == i]
        context = bypassed(self.source.model, self.source.structure, units) if units else None
        with context or nullcontext():
            yield
