"""What the policy registry raises on purpose, each mapped to its HTTP status by the operator API
(``gateway.admin.service``). Kept apart from the registry so that the artifact checks (``policies.artifacts``)
and the vLLM clients can raise them without importing the registry itself."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry raises on purpose."""


class VersionNotFound(RegistryError):
    """No version with that id (admin: 404)."""


class InvalidTransition(RegistryError):
    """The version's status does not allow that change (admin: 409)."""


class PreconditionFailed(InvalidTransition):
    """The version is no longer in the state the caller decided on (admin: 409 precondition_failed)."""


class WeightError(RegistryError):
    """A weight outside 0..1, or canary weights that would sum to more than 1 (admin: 400)."""


class InvalidArtifact(RegistryError):
    """The artifact path does not exist, or the request is inconsistent with the kind (admin: 400)."""


class NoStableVersion(RegistryError):
    """The registry is empty: nothing can be routed until the seed is registered."""


class ArtifactChanged(InvalidArtifact):
    """The artifact's bytes no longer hash to the sha256 recorded at registration: whatever is at the
    path now is not the version that was registered, gated and audited, so it must not be served."""
