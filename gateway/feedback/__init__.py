"""POST /v1/feedback: a widget rates one response it was given (router, protocol, service)."""
