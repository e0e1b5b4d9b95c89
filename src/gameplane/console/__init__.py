"""The console websocket through the API: tickets (``tickets``), the proxy to the
agent's console websocket (``proxy``), its routes (``views``) and the frame
formats shared with the agent (``frames``). See ``docs/console.md``."""
