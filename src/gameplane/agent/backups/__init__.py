"""Backups and restores of one instance's data dir (DESIGN.md section 3).

* ``records``  the backup record (the contract's ``B``) and its on-disk store
* ``safety``   which archive members and restored trees are refused
* ``archive``  the default engine: tar + zstd with a SHA-256 manifest inside
* ``restic``   Debian's restic: deduplicated, encrypted, local or S3
* ``swap``     the atomic directory swap and its recovery after a crash
* ``manager``  one instance's backup/restore operations, retention, progress
* ``routes``   the HTTP handlers of ``/backups``
"""
