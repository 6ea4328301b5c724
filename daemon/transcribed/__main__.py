"""``python -m transcribed`` and the ``transcribed`` command."""

import gc
import logging
import os
import sys
from typing import NoReturn


def main() -> NoReturn:
    # Start-up (imports, configuration) builds a few hundred thousand objects that live as long
    # as the process; the collector's passes over them while they are being made are wasted
    # (about a tenth of start-up here). The command turns it back on once start-up is over.
    gc.disable()
    from transcribed.cli import cli

    code = cli(sys.argv[1:])
    # The command has closed what it opened (journal, sockets, worker threads, the local
    # engine's processes, which it kills if they do not stop). What is left is the
    # interpreter's teardown of every module and object, which costs a batch run tens of
    # milliseconds and does nothing for it; flush the log and the standard streams and leave.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            # As the interpreter's own exit does: output that could not be written (a closed
            # pipe, a full disk) is a failure, whatever the command returned.
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    main()
