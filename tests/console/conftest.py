"""The in-process API of tests/auth (both databases, stand-in provider) for the console's unit tests."""

from tests.auth.conftest import api, inbox, make_api

__all__ = ["api", "inbox", "make_api"]
