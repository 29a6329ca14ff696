"""The `vfsd` command: thin verbs over the core. `main(argv) -> int`, one-line errors."""

from __future__ import annotations

import os
import select
import sys
import traceback
from collections.abc import Sequence

from vfsd.store import StoreError

from .common import EXIT_ERROR, EXIT_USAGE, UsageError
from .daemons import cmd_gateway, cmd_mount, cmd_up, reexec_with_tunables
from .parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.func in (cmd_mount, cmd_up, cmd_gateway):
            reexec_with_tunables(argv)
        return int(args.func(args))
    except UsageError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    except StoreError as e:
        print(f"vfsd: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vfsd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as e:
        if not _stdout_gone():
            return _os_error(e)  # another pipe (a QMP socket, a child): a real error
        # `vfsd stats | head`: the reader has gone, as with any Unix tool, quietly. Python
        # flushes stdout again at exit; point it at /dev/null so that write cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe killed
    except OSError as e:
        return _os_error(e)
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, traceback on request
        if os.environ.get("VFSD_DEBUG"):
            traceback.print_exc()
        print(f"vfsd: internal error: {type(e).__name__}: {e} (set VFSD_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return EXIT_ERROR


def _os_error(e: OSError) -> int:
    print(f"vfsd: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
          file=sys.stderr)
    return EXIT_ERROR


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & select.POLLERR for _fd, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
