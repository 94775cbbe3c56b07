"""PostHog as a destination: the capture API the reverse path delivers to."""
