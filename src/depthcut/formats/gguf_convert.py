"""Run llama.cpp's own HF → GGUF converter on an exported directory (a script: depthcut runs it
in a subprocess with the converter's vendored ``gguf-py`` first on the path).

    python gguf_convert.py LLAMA_CPP_DIR HF_DIR OUTFILE OUTTYPE

A directory whose config names ``DeciLMForCausalLM`` goes through the converter's ``deci``
model with one change: the per-block head counts and FFN widths are the exact ones depthcut
wrote (the converter would recompute FFN widths from ``ffn_mult`` rounded up to a multiple of
256), and the vocabulary takes the Llama path (sentencepiece, Llama-HF or GPT-2 BPE). Every
other directory goes through the converter class of its own architecture, unchanged.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def _import_converter(llama_dir: Path):
    here = Path(__file__).parent.resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(llama_dir / "gguf-py"))
    sys.path.insert(0, str(llama_dir))
    import conversion
    from conversion.deci import DeciModel
    from conversion.llama import LlamaModel

    class ExactDeciModel(DeciModel):
        model_arch = DeciModel.model_arch

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            blocks = self.hparams["block_configs"]
            self._num_heads = [int(b["attention"]["num_heads"]) for b in blocks]
            self._num_kv_heads = [int(b["attention"]["num_key_value_heads"]) for b in blocks]
            self._ffn_dims = [int(b["ffn"]["intermediate_size"]) for b in blocks]
            self.origin_hf_arch = None  # what LlamaModel.set_vocab reads

        set_vocab = LlamaModel.set_vocab

    return conversion, ExactDeciModel


def convert(llama_dir: Path, hf_dir: Path, outfile: Path, outtype: str) -> None:
    conversion, exact_deci = _import_converter(llama_dir)
    import gguf  # the converter's vendored copy, first on the path now
    import torch

    ftypes = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    hparams = conversion.ModelBase.load_hparams(hf_dir, False)
    arch = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
    cls = exact_deci if arch == "DeciLMForCausalLM" else conversion.get_model_class(arch)
    with torch.inference_mode():
        model = cls(hf_dir, ftypes[outtype], outfile, eager=True)
        model.write()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    root, source, target, kind = sys.argv[1:5]
    convert(Path(root), Path(source), Path(target), kind)
