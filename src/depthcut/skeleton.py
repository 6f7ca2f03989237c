"""A randomly initialised model of the architecture a plan was made for (from its recorded
config): what ``depthcut.load`` fills with saved weights and fine-grained planning traces."""

from __future__ import annotations

import torch
from torch import nn


def _model_class(config, default):
    """The saved architecture class (e.g. ``BertModel`` for an encoder), else ``default``."""
    import transformers

    names = getattr(config, "architectures", None) or []
    return getattr(transformers, names[0], default) if names else default


def build_from_config(config_dict: dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised model of the architecture a plan was made for."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = dict(config_dict)
    config = AutoConfig.for_model(base.pop("model_type"), **base)
    cls = _model_class(config, AutoModelForCausalLM)
    build = getattr(cls, "from_config", None) or cls._from_config
    return build(config, dtype=dtype)
