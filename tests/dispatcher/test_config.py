"""Settings: a ``.env`` file in the working directory, the environment over it, queue names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dispatcher.config import Settings


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DISPATCHER_CHUNK_SIZE", "DISPATCHER_API_KEYS", "DISPATCHER_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_dotenv_file_in_the_working_directory_is_read(workdir: Path) -> None:
    (workdir / ".env").write_text("DISPATCHER_CHUNK_SIZE=123\nDISPATCHER_API_KEYS=app:from-file\n"
                                  "SOMETHING_ELSE=ignored\n")
    settings = Settings()
    assert settings.chunk_size == 123
    assert settings.service_keys() == {"from-file": "app"}


def test_the_environment_wins_over_the_dotenv_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / ".env").write_text("DISPATCHER_CHUNK_SIZE=123\n")
    monkeypatch.setenv("DISPATCHER_CHUNK_SIZE", "77")
    assert Settings().chunk_size == 77


@pytest.mark.parametrize("value", ["database", "sqlite"])
def test_database_names_the_queue_in_the_store_and_sqlite_stays_an_alias(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DISPATCHER_QUEUE_URL", value)
    settings = Settings(database_url="postgresql://u@db/dispatcher")
    assert settings.queue_url == "database"
    assert not settings.uses_sqs()


def test_an_unknown_queue_is_refused_naming_the_choices(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_QUEUE_URL", "postgres")
    with pytest.raises(ValidationError, match="'database'"):
        Settings()
