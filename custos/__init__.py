"""Custos: model-weight custody and full-shutdown control plane."""

__version__ = "0.1.0"
