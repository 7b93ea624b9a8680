"""Entry point: `python -m captionlab <command> ...` (see captionlab/cli)."""

from captionlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
