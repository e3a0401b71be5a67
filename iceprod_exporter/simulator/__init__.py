"""A simulated IceProd 3.2.43 REST API and a local OIDC issuer, for tests, demos and benchmarks."""

from .access import SYSTEM_ROLE_CLAIMS
from .faults import DatasetFault, Faults
from .issuer import IssuedToken, OIDCIssuer
from .model import Simulation, build_store
from .records import Records, TokenUse
from .server import SimulatedIceProd
from .store import DatasetAuth, Store

__all__ = [
    "SYSTEM_ROLE_CLAIMS",
    "DatasetAuth",
    "DatasetFault",
    "Faults",
    "IssuedToken",
    "OIDCIssuer",
    "Records",
    "SimulatedIceProd",
    "Simulation",
    "Store",
    "TokenUse",
    "build_store",
]
