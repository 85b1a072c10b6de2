"""Shared fixtures: one tiny random model per supported architecture (see tests/tiny_models.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # mapslib, when not pip-installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_models, for tests in subfolders

from fake_llm import KEY, FakeServer
from tiny_models import ARCHS, tiny_model

from mapslib.foundation.adapters import HeadWeights


@pytest.fixture(params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    """Name of a tiny architecture (a key of tiny_models.ARCHS)."""
    return request.param


@pytest.fixture
def model(arch: str):
    """The tiny float64 model of `arch`; cached across tests, so read-only."""
    return tiny_model(arch)


@pytest.fixture
def hw(model) -> HeadWeights:
    """HeadWeights of the tiny model."""
    return HeadWeights(model)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M (the real default model), loaded once per session; read-only."""
    from mapslib.foundation.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smollm2_hw(smollm2) -> HeadWeights:
    """HeadWeights of SmolLM2-135M."""
    return HeadWeights(smollm2.model)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """A scripted chat-completions server that the openai client reaches through the environment."""
    srv = FakeServer()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
    yield srv
    srv.close()
