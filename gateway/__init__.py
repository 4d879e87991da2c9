"""The front door: FastAPI app, request pipeline, stable/canary router, grounding, web pages.

Routes stay thin (``router.py``), schemas are data (``protocol.py``), behaviour lives in services.
"""
