"""The chat page at ``/``: plain HTML + JS served as static files (no build step)."""
