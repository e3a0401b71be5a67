"""PromQL building blocks shared by the rules, the alerts and the dashboards.

**HA and sharding.** Two identical replicas export identical copies of every IceProd series,
differing only in the replica labels (``instance``, ``pod``); shards export disjoint datasets
(``dataset`` is unique across shards). :func:`one_copy` (``max without (instance, pod)``) keeps
each series once and merges shards, so every sum after it counts one exporter, two replicas, N
shards and two replicas per shard alike. The exporter's own metrics (``iceprod_up``,
``iceprod_exporter_*``) stay per instance on purpose.
"""

from __future__ import annotations

from .config import Config

#: the metric whose labels name a dataset's description and owners
INFO = "iceprod_dataset_info"
#: processing datasets, one series per dataset whatever the number of replicas
PROCESSING = 'max by (dataset) (iceprod_dataset_status{status="processing"}) == 1'
#: task statuses that still have work to run
TO_RUN = "idle|waiting|queued|processing"


def one_copy(selector: str, cfg: Config) -> str:
    """One copy of a series exported by identical replicas and/or by several shards."""
    if not cfg.replica_labels:
        return selector
    return f"max without ({', '.join(cfg.replica_labels)}) ({selector})"


def selector(metric: str, *matchers: str) -> str:
    """``metric{m1, m2}`` (or the bare name without matchers)."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def owners(cfg: Config) -> str:
    """Comma-separated owner labels (``group, username``)."""
    return ", ".join(cfg.owner_labels)


def with_owners(expr: str, cfg: Config) -> str:
    """``expr`` (one series per dataset) with the dataset's owner labels joined on.

    The value is kept (info series are 1). ``topk by (dataset) (1, ...)`` keeps one info series
    per dataset, also while two replicas (or an old and a new shard) briefly disagree about it,
    so the join never fails on duplicates.
    """
    return (
        f"(\n{_indent(expr)}\n)\n"
        f"* on (dataset) group_left ({owners(cfg)})\n"
        f"topk by (dataset) (1, {INFO})"
    )


def _indent(text: str, by: str = "  ") -> str:
    return "\n".join(by + line if line else line for line in text.splitlines())


def dashboard_url(cfg: Config, uid: str, query: str = "") -> str:
    """Link to a shipped dashboard, for an alert's ``dashboard_url``."""
    return f"{cfg.grafana_url}/d/{uid}/{uid}{query}"
