"""Command line (placeholder until the CLI lands in this same change)."""


def main() -> None:
    raise SystemExit("not yet")
