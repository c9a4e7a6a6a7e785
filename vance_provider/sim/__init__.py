"""A local simulator of the VanceAI web API v1 and Open API v1 (and the VisionCraft API), for tests, demos and your own CI.

from vance_provider.sim import SimulatorServer, SimConfig
with SimulatorServer(SimConfig(queue_delay=0.1)) as sim:
    ...  # point a client at sim.base_url
"""

from .app import create_app
from .config import (
    DEMO_OPEN_KEY,
    DEMO_VISIONCRAFT_PREMIUM_TOKEN,
    DEMO_VISIONCRAFT_TOKEN,
    DEMO_WEB_TOKEN,
    Account,
    Faults,
    SimConfig,
)
from .server import SimulatorServer
from .state import SimState

__all__ = [
    "DEMO_OPEN_KEY",
    "DEMO_VISIONCRAFT_PREMIUM_TOKEN",
    "DEMO_VISIONCRAFT_TOKEN",
    "DEMO_WEB_TOKEN",
    "Account",
    "Faults",
    "SimConfig",
    "SimState",
    "SimulatorServer",
    "create_app",
]
