"""A Gateway on the simulator over real HTTP, the real stripe client underneath: for gateway tests."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from kiosk.gateway import Gateway
from kiosk.simulator import Simulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

API_KEY = "sk_test_51KioskSecretKeyForTestsOnly0123456789"


@dataclass
class SimRig:
    """The simulator, a registered reader, and a gateway driving it."""

    sim: Simulator
    gw: Gateway
    reader: str
    url: str


@asynccontextmanager
async def sim_gateway(seed: int = 0, api_key: str = API_KEY) -> AsyncIterator[SimRig]:
    """Serve a simulator (with one simulated reader) and a gateway on it; close both after."""
    sim = Simulator(seed=seed)
    reader = sim.register_reader("simulated-wpe")
    async with sim.serve() as endpoint:
        gw = Gateway(
            api_key=SecretStr(api_key),
            api_base=endpoint.url,
            api_version=None,
            reader_id=reader,
            request_timeout_s=5,
        )
        try:
            yield SimRig(sim, gw, reader, endpoint.url)
        finally:
            await gw.close()
