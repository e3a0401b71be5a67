"""Grafana dashboards and provisioning for iceprod-exporter; the mixin is ``grafana.mixin``."""
