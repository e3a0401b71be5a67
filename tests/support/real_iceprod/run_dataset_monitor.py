"""Run IceProd's own ``dataset_monitor`` cron once and print its metrics to stdout.

Executed by the iceprod venv's interpreter. The cron only serves Prometheus metrics while it
runs (then exits), so instead of scraping it we run its real ``main()`` in-process, without
``--prometheus-port``, and print ``generate_latest()`` of the default registry afterwards.

Usage (the secret comes from the environment so it never shows in ``ps``)::

    OAUTH_CLIENT_SECRET=... python run_dataset_monitor.py \
        --rest-url http://127.0.0.1:PORT --oauth-url ISSUER_URL --oauth-client-id ID

``--debug`` is always passed so an API or auth failure raises (exit code 1) instead of being
logged and swallowed, which is what the cron does without it.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Run dataset_monitor.main() once, then print the registry in text format."""
    if not os.environ.get("OAUTH_CLIENT_SECRET"):
        # Without a secret iceprod falls into the interactive device-code login and blocks.
        print("OAUTH_CLIENT_SECRET must be set", file=sys.stderr)
        return 2
    os.environ.pop("PROMETHEUS_PORT", None)  # no HTTP server: we print the registry instead

    from iceprod.scheduled_tasks import dataset_monitor
    from prometheus_client import REGISTRY, generate_latest

    sys.argv = ["dataset_monitor", "--debug", "--log-level", "warning", *argv]
    dataset_monitor.main()
    sys.stdout.write(generate_latest(REGISTRY).decode())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
