"""Helpers the tests share: import them as ``from support.cli import ...``."""
