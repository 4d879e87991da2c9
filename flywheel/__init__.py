"""Flywheel's cross-cutting core: the typed settings object, the `flywheel` CLI and process helpers.

The design card's packages (gateway, policies, feedback, trainer, safety, deploy) own the behaviour;
this package only wires them together at entry points.
"""

__version__ = "0.1.0"
