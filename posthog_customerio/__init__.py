"""posthog-customerio: stream PostHog events into Customer.io's Track API.

Pipeline stages, one package each: ``sources`` (parse PostHog payloads) → ``mapping``
(pure decisions) → ``queue`` (durable store) → ``delivery`` (batch, rate limit, retry) →
``customerio`` (Track API client and the local sandbox); ``web`` and ``cli`` are the edges.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
