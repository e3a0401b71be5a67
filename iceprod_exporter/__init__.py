"""Prometheus exporter for IceProd, IceCube's dataset processing system."""

__version__ = "0.1.0"
