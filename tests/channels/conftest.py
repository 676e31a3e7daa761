"""Fixtures of the channel tests: one aiohttp session, and a local AWS-protocol server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from servers.aws_errors import AwsProtocolServer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[AwsProtocolServer]:
    async with AwsProtocolServer() as s:
        yield s
