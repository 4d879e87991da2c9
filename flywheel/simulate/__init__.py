"""Simulated users: a population that talks to a gateway only through its public HTTP API, asks
about the product, and rates answers by a preference written in a TOML file.

Importing starts nothing; ``run_simulation(SimulationConfig(...))`` runs one population to the end.
"""

from __future__ import annotations

from flywheel.simulate.preferences import Preference, PreferenceError, load_preference, preset_path
from flywheel.simulate.rating import RatingPolicy
from flywheel.simulate.report import InteractionRecord, SimulationReport, VersionStats
from flywheel.simulate.runner import SimulationConfig, run_simulation, simulate

__all__ = [
    "InteractionRecord", "Preference", "PreferenceError", "RatingPolicy", "SimulationConfig", "SimulationReport",
    "VersionStats", "load_preference", "preset_path", "run_simulation", "simulate",
]  # fmt: skip
