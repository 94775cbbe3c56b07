"""Where the PostHog sample payloads live: ``examples/posthog/`` in this repository.

One copy for people and tests: the README's examples post these files, and the tests check
every one of them, so an example that stops working fails a test.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTHOG_SAMPLES = REPO / "examples" / "posthog"
