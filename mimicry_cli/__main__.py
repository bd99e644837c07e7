"""``python -m mimicry_cli`` is the same as the ``mimicry`` console script."""

from mimicry_cli.main import app

if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in tests
    app(prog_name="mimicry")
