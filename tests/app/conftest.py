"""One set of server resources (real models, knowledge base, Redis, SQLite) for the in-process
tests of the call runner and the dialogue processor: loaded once per test process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from voicebot.config import Settings
from voicebot.resources import Resources, close_resources, load_resources


@pytest.fixture(scope="session")
def resources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resources]:
    data = tmp_path_factory.mktemp("app-resources")
    # No LLM: the knowledge-base answers are deterministic, and the LLM has its own tests.
    res = load_resources(Settings(data_dir=data, llm="none"))
    try:
        yield res
    finally:
        close_resources(res)
