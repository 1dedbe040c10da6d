"""Safehold: a self-hosted vault for privileged passwords, built for high availability."""

__version__ = "0.1.0"
