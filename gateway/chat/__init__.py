"""``/v1/chat/completions`` and ``/v1/models``: routes (router.py), schemas (protocol.py), behaviour (service.py)."""
