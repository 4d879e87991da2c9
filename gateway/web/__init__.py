"""Web pages served as static files (no build step): the chat page at ``/``, the dashboard at ``/dashboard``."""
