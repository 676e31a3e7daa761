"""The benchmark harness runs (small N), so it cannot rot; its figures live in docs/."""

from __future__ import annotations

from pathlib import Path

from bench.smoke import run_smoke


async def test_the_smoke_benchmark_delivers_every_row(tmp_path: Path) -> None:
    result = await run_smoke(120, workers=2, folder=tmp_path)
    assert result.rows == result.final_rows == 120 * 4
