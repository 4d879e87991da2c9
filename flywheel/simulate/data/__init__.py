"""Shipped simulation data: preference files (``default.toml``, ``reversed.toml``) and the fact keywords
of the question bank; a package so that they ship as package data."""
