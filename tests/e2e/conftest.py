"""Fixtures for the end-to-end test: the tool fixtures the deploy tests use."""

from tests.deploy.conftest import prometheus_bin

__all__ = ["prometheus_bin"]
