"""A simulated IceProd 3.2.43 REST API and a local OIDC issuer, for tests, demos and benchmarks."""

from iceprod_simulator.access import SYSTEM_ROLE_CLAIMS
from iceprod_simulator.faults import DatasetFault, Faults
from iceprod_simulator.issuer import IssuedToken, OIDCIssuer
from iceprod_simulator.model import Simulation, build_store
from iceprod_simulator.records import Records, TokenUse
from iceprod_simulator.server import SimulatedIceProd
from iceprod_simulator.store import DatasetAuth, Store

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
