"""Stable/canary routing: ``split.pick`` chooses a version, ``cache.RoutingTableCache`` keeps the table fresh."""

from gateway.routing.cache import RoutingTableCache
from gateway.routing.split import RouteEntry, RoutingTable, pick

__all__ = ["RouteEntry", "RoutingTable", "RoutingTableCache", "pick"]
