"""Fixtures of the reliability tests: the core tests' ``api`` (each test once per VanceAI API),
``client`` and ``client_factory``; the S3 bucket fixture ``s3`` is in ``tests/conftest.py``."""

from tests.core.conftest import api, client, client_factory

__all__ = ["api", "client", "client_factory"]
