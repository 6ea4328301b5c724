"""``python -m transcribed`` and the ``transcribed`` command."""

import gc
import sys


def main() -> int:
    # Start-up (imports, configuration) builds a few hundred thousand objects that live as long
    # as the process; the collector's passes over them while they are being made are wasted
    # (about a tenth of start-up here). The command turns it back on once start-up is over.
    gc.disable()
    from transcribed.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
