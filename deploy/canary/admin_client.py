"""The operator API as the controller uses it: weight, promote, rollback, each with audit details.

The controller acts over HTTP, not on the registry directly, so the gateway's AdminService loads and
unloads LoRA adapters and every gateway process sees the change through the registry it writes.
Each call may carry ``expected`` (what the controller saw when it decided): the registry refuses the
change with 409 ``precondition_failed`` if the version has changed since.
"""

from __future__ import annotations

from typing import Any

import httpx

from policies.registry import Expected


class AdminClientError(RuntimeError):
    """The operator API refused the change or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AdminClient:
    """A small synchronous client (the controller loop is synchronous)."""

    def __init__(self, base_url: str, key: str, timeout_s: float = 60.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise AdminClientError(f"operator API unreachable: {exc}") from exc
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise AdminClientError(f"{path}: HTTP {resp.status_code}: {message}", resp.status_code)
        return resp.json()

    def set_weight(
        self, version_id: str, weight: float, reason: str, details: dict[str, Any], *, expected: Expected | None = None
    ) -> dict[str, Any]:
        body = {"weight": weight, "reason": reason, "details": details, **_expected(expected)}
        return self._post(f"/admin/policies/{version_id}/weight", body)

    def promote(
        self, version_id: str, reason: str, details: dict[str, Any], *, expected: Expected | None = None
    ) -> dict[str, Any]:
        body = {"reason": reason, "details": details, **_expected(expected)}
        return self._post(f"/admin/policies/{version_id}/promote", body)

    def rollback(
        self, version_id: str, reason: str, details: dict[str, Any], *, expected: Expected | None = None
    ) -> dict[str, Any]:
        body = {"reason": reason, "details": details, **_expected(expected)}
        return self._post(f"/admin/policies/{version_id}/rollback", body)


def _expected(expected: Expected | None) -> dict[str, Any]:
    """The request body's ``expected_*`` fields."""
    return {f"expected_{k}": v for k, v in (expected.to_dict() if expected else {}).items()}
