"""Orchestration: parsed sources read into the queue in chunks, each with its checkpoint.

``sources/`` only parses; this package decides what to read next, where to resume, and when to
stop: the backfill runner (``backfill``), export files and the PostHog API cut into chunks
(``files``, ``follow``), the positions they store (``checkpoint``) and the dry run (``dryrun``).
"""
