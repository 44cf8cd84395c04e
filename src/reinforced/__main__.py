"""``python -m reinforced ...``: the same command line as the ``reinforced`` console script."""

from reinforced.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
