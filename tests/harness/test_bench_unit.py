"""``python -m bench unit`` runs on both engines (small N), so it cannot rot; figures in docs/."""

from __future__ import annotations

import psycopg
import pytest
from support import POSTGRES_ADMIN_URL, require_server

from bench.unit_cost import measure


def _bench_databases() -> set[str]:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            return {name for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'bench_unit_%'")}
    except psycopg.OperationalError as exc:
        require_server("PostgreSQL", exc)
        raise


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_the_unit_benchmark_measures_each_batch_size_and_leaves_no_database(engine: str) -> None:
    before = _bench_databases()
    report = measure(4, [1, 3], engine, POSTGRES_ADMIN_URL)
    assert [u["notifications"] for u in report["per_unit"]] == [1, 3]
    for unit in report["per_unit"]:
        assert unit["cpu_us_per_notification"] > 0 and unit["statements_per_unit"] > 0
        # PostgreSQL's own CPU is read off its backends; SQLite has none apart from the process.
        assert (unit["server_cpu_us_per_notification"] is None) == (engine == "sqlite")
    assert _bench_databases() <= before
