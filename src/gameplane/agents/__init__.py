"""The control plane's side of the agent contract (DESIGN.md sections 3 and 4).

- ``client``: the one module for non-streaming agent calls (``AgentClient``,
  ``AgentEndpoint``, the ``AgentError`` tree, ``is_agent_ready_result``,
  ``assert_agent_ready``).
- ``state``: the API-normalized state, derived by a pure function.
- ``poller``: the heartbeat that polls every agent and keeps those states.
- ``testing``: a hand-driven clock and scripted fake agents for tests.

The agent daemon itself is ``gameplane.agent`` (singular).
"""

from gameplane.agents.client import (
    AgentAuthFailed,
    AgentBadResponse,
    AgentClient,
    AgentEndpoint,
    AgentError,
    AgentNotReady,
    AgentRejected,
    AgentResult,
    AgentTimeout,
    AgentUnreachable,
    FailureKind,
    assert_agent_ready,
    is_agent_ready_result,
)
from gameplane.agents.poller import CycleStats, Poller, Target
from gameplane.agents.state import NormalizedState, Observation, derive_state, is_event

__all__ = [
    "AgentAuthFailed",
    "AgentBadResponse",
    "AgentClient",
    "AgentEndpoint",
    "AgentError",
    "AgentNotReady",
    "AgentRejected",
    "AgentResult",
    "AgentTimeout",
    "AgentUnreachable",
    "CycleStats",
    "FailureKind",
    "NormalizedState",
    "Observation",
    "Poller",
    "Target",
    "assert_agent_ready",
    "derive_state",
    "is_agent_ready_result",
    "is_event",
]
