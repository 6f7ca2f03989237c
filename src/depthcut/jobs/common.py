"""What every job is given: the model to load, the calibration text, the output directory."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class ModelRef:
    """A packaged name or a local directory; ``tokenizer`` replaces a missing tokenizer;
    ``encoder`` loads an encoder (BERT-style) instead of a causal LM."""

    name: str
    tokenizer: str | None = None
    encoder: bool = False
    device: str = "cpu"
    dtype: str = "auto"
    max_memory: str | None = None  # "0=20GiB,cpu=60GiB": an accelerate device map

    def load(self, need_tokenizer: bool = True):
        """(model, tokenizer), on ``device`` in ``dtype`` (``depthcut.devices``)."""
        from depthcut.models import load_encoder, load_model

        if self.encoder:
            from depthcut.devices import resolve_device, resolve_dtype

            model, tok = load_encoder(self.name)
            device = resolve_device(self.device)
            return model.to(device, resolve_dtype(self.dtype, device)), tok
        return load_model(
            self.name,
            self.dtype,
            self.tokenizer,
            need_tokenizer,
            device=self.device,
            max_memory=self.max_memory,
        )

    @property
    def source(self) -> str:
        """The name as recorded in a run: an absolute path for a directory."""
        return str(Path(self.name).resolve()) if Path(self.name).exists() else self.name


@dataclass(frozen=True)
class CalibSpec:
    """``n_samples`` windows of ``seq_len`` tokens of a packaged text or a text file;
    ``n_samples=None``: 16, or as many as the repair's widest fit needs (``sized``)."""

    source: str = "wiki"
    n_samples: int | None = None
    seq_len: int = 256
    batch_size: int = 4

    def sized(self, model, cfg) -> CalibSpec:
        """This spec with ``n_samples`` fixed for ``cfg``'s repair on ``model`` (no forward):
        chosen when not given, else checked, so a too-small size fails before scoring."""
        from depthcut.graph.structure import discover_structure
        from depthcut.refit.needs import auto_samples, check_samples, repair_need

        need = repair_need(model, discover_structure(model), cfg)
        if self.n_samples is None:
            return replace(self, n_samples=auto_samples(need, self.seq_len, self.batch_size))
        check_samples(need, self.n_samples, self.seq_len, self.batch_size)
        return self

    def held_back_too(self, chosen: bool) -> CalibSpec:
        """With ``n_samples`` chosen automatically: a third more windows, so that what the
        joint search holds back (a quarter of the batches) leaves the refit what it needs."""
        if not chosen or self.n_samples is None:
            return self
        more = -(-self.n_samples * 4 // 3 // self.batch_size) * self.batch_size
        return replace(self, n_samples=max(more, self.n_samples + self.batch_size))

    def data(self, tokenizer):
        """The batches; each window starts with BOS where the tokenizer puts one first."""
        from depthcut.data import calibration, expects_bos
        from depthcut.refit.needs import FLOOR_SAMPLES

        n = FLOOR_SAMPLES if self.n_samples is None else self.n_samples
        bos = expects_bos(tokenizer)
        return calibration(tokenizer, self.source, n, self.seq_len, self.batch_size, bos=bos)


@dataclass(frozen=True)
class Output:
    """The output directory (written atomically); an existing one only with ``overwrite``."""

    path: Path
    overwrite: bool = False

    def prepare(self) -> Path:
        from depthcut.io import prepare_output

        return prepare_output(self.path, self.overwrite)
