"""Turnout: self-hosted dedicated LLM endpoints with zero-downtime rollouts."""

__version__ = "0.1.0"
