"""A local Customer.io Track API for tests, demos and ``serve --sandbox`` (DESIGN.md §6)."""

from posthog_customerio.customerio.sandbox.app import (
    SandboxConfig,
    SandboxServer,
    create_sandbox_app,
    run_sandbox,
)

__all__ = ["SandboxConfig", "SandboxServer", "create_sandbox_app", "run_sandbox"]
