"""``python -m transcribed`` and the ``transcribed`` command."""

import sys

from transcribed.cli import cli


def main() -> None:
    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
