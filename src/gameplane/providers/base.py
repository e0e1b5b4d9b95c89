"""How the API creates and destroys instances. A provider never decides
state: readiness always comes from the agent contract (DESIGN.md section 1)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gameplane.templates.model import Template


@dataclass(frozen=True)
class ProvisionSpec:
    instance_id: str
    template: str
    token_hash: str
    variables: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    agent_url: str
    node: str
    ports: dict[str, int]


class Provider(Protocol):
    name: str

    async def start(self) -> None:
        """Reach (or bring up) the hosts; called once at API start."""

    def place(self, template: Template, taken_ports: Iterable[int], committed_memory: int) -> dict[str, int]:
        """Ports for a new instance, or raise ``NoCapacity``."""

    async def create(self, spec: ProvisionSpec) -> Placement:
        """Create and install the instance on its agent."""

    async def destroy(self, instance_id: str) -> None:
        """Remove the instance and its files; an unknown id is not an error."""

    async def instance_ids(self) -> set[str]:
        """Every instance the hosts know, to sweep orphans after a crash."""

    async def close(self) -> None:
        """Release what ``start`` took; the hosts and their instances keep running."""
