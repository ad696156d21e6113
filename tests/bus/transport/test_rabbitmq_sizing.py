"""The start-up hint about Redis's hash encoding (docs/rabbitmq.md, "Sizing Redis")."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from bus.transport.rabbitmq_ledger import warn_if_records_unpacked

from .conftest import REDIS_URL


class _Config:
    """Answers CONFIG GET as a Redis set to ``value`` would, or refuses it (managed Redis)."""

    def __init__(self, value: str | None):
        self.value = value

    async def config_get(self, name: str) -> dict[str, str]:
        if self.value is None:
            raise ResponseError("unknown command 'CONFIG'")
        return {name: self.value}


def _hints(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "transport.redis_records_unpacked"]


@pytest.mark.parametrize(("value", "warned"), [("64", True), ("4096", False), (None, False)])
async def test_hint_only_when_records_would_be_unpacked(value: str | None, warned: bool) -> None:
    with capture_logs() as logs:
        await warn_if_records_unpacked(_Config(value))  # type: ignore[arg-type]
    hints = _hints(logs)
    assert bool(hints) is warned
    if warned:
        assert hints[0]["hash_max_listpack_value"] == 64
        assert "hash-max-listpack-value 4096" in hints[0]["advice"]


async def test_hint_reads_the_real_server_setting() -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        value = int((await redis.config_get("hash-max-listpack-value"))["hash-max-listpack-value"])
        with capture_logs() as logs:
            await warn_if_records_unpacked(redis)
    finally:
        await redis.aclose()
    assert bool(_hints(logs)) is (value < 1024)
