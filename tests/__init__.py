"""Custos's tests; the layout mirrors the code's rooms (core, blobs, fs, client, cli, controlplane, agent, e2e)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root."""
