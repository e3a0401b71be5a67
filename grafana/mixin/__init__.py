"""The iceprod-exporter monitoring mixin: dashboards, recording rules and alerts in one place.

Laid out like the Prometheus monitoring mixins (kubernetes-mixin, node-mixin):

* :mod:`.config`: everything a deployment may want to change: the exporter's job, the labels
  that tell HA replicas and shards apart, the owner labels, thresholds, windows and ``for:``
  durations, dashboard uids and the Grafana URL of the alerts' links.
* :mod:`.promql`: the few PromQL building blocks every rule and panel shares (one copy per
  replica, the owner join).
* :mod:`.rules` and :mod:`.alerts`: recording and alerting rules as data.
* :mod:`.panels`: the shared panel helpers on Grafana's ``grafana-foundation-sdk``.
* :mod:`.dashboards`: one module per dashboard.
* :mod:`.generate`: writes every artefact (``python -m grafana.mixin.generate``; ``--check``
  writes nothing and fails on drift). ``make generate`` runs it and ``iceprod-exporter docs``.

See docs/monitoring.md.
"""
