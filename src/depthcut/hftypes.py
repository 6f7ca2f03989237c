"""Type names for the Hugging Face objects depthcut reads by attribute."""

from __future__ import annotations

from typing import Any, TypeAlias

HFModel: TypeAlias = Any
"""A Hugging Face model (``PreTrainedModel``) or one of its submodules, read by attribute name:
``model.config``, ``model.model.layers[i].self_attn.q_proj``. torch types any attribute of an
``nn.Module`` as ``Tensor | Module``; depthcut checks the structure it reads at run time
(``discover_structure``, the export layouts' refusals), so type checkers take these as ``Any``."""

LinearLike: TypeAlias = Any
"""An ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2's, weight stored transposed): read
through ``weight`` / ``bias`` whichever it is (``depthcut.ops.is_conv1d``)."""
