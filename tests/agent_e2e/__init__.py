"""End-to-end tests of the host agent: real control plane, real agent processes."""
