"""Operator API: register, weight, promote, roll back and retire policy versions; the audit log."""
