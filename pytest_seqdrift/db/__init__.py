"""Talking to PostgreSQL: one ``Session`` interface over every driver."""
