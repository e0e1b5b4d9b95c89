"""The file manager of the agent contract (``/files``, docs/agent.md):

* ``datadir``  race-free paths and operations in an instance's data dir
* ``upload``   one streamed upload: temp file, limits, rename
* ``routes``   the HTTP handlers
"""
