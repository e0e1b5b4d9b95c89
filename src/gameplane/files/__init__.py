"""The file manager of a game server through the API (DESIGN.md section 5):
``views`` (routes) and ``shapes`` (the documented bodies)."""
