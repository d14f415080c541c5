"""Placeholder until the app lands."""


def main() -> None:
    raise SystemExit("tapct: not built yet")
