"""Run the simulated IceProd (and optionally a local OIDC issuer) in the foreground."""

import argparse
import signal
import threading
from contextlib import ExitStack
from types import FrameType

from iceprod_simulator.access import SYSTEM_ROLE_CLAIMS
from iceprod_simulator.issuer import OIDCIssuer
from iceprod_simulator.model import Simulation, build_store
from iceprod_simulator.server import SimulatedIceProd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m iceprod_simulator", description=__doc__)
    parser.add_argument("--datasets", type=int, default=100, help="datasets to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated world")
    parser.add_argument("--port", type=int, default=0, help="API port (0: ephemeral)")
    parser.add_argument(
        "--tick", type=float, default=5.0, help="seconds per simulation step (0: frozen)"
    )
    parser.add_argument(
        "--busy-share",
        type=float,
        default=1.0,
        help="average share of processing datasets that move; the others sit quiet (0-1]",
    )
    auth = parser.add_argument_group(
        "auth",
        "Without --client-id every request counts as system. Device logins are approved at once.",
    )
    auth.add_argument("--client-id", help="start an issuer with this iceprod-system client")
    auth.add_argument("--client-secret", help="the client's secret (none: a public client)")
    auth.add_argument("--issuer-port", type=int, default=0, help="issuer port (0: ephemeral)")
    auth.add_argument("--token-ttl", type=float, default=300.0, help="access token lifetime, s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, printing the URLs first."""
    args = parse_args(argv)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        """Let main() return, which stops the servers."""
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    store = build_store(args.datasets, seed=args.seed)
    with ExitStack() as stack:
        issuer = None
        if args.client_id:
            issuer = stack.enter_context(
                OIDCIssuer(args.token_ttl, args.issuer_port, auto_approve_devices=True)
            )
            issuer.register_client(args.client_id, args.client_secret, SYSTEM_ROLE_CLAIMS)
            print(f"issuer: {issuer.url}", flush=True)
        api = SimulatedIceProd(
            store,
            issuer,
            port=args.port,
            simulation=Simulation(store, args.seed, args.busy_share),
            tick_seconds=args.tick,
        )
        stack.enter_context(api)
        print(f"iceprod: {api.url}", flush=True)
        stopping.wait()


if __name__ == "__main__":
    main()
