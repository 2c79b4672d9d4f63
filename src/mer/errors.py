"""User-facing errors: one line, naming the file, row or key, exit code 2 (DESIGN.md, Conventions)."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input (config, path, data). Printed as one line; the process exits with 2."""

    exit_code = 2


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run an entry point; a UserError becomes `error: <message>` on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # A safety net for a write the code did not wrap: a full disk or a read-only folder is the user's
        # environment, not a bug: one line naming the file and the errno.
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{code} ({exc.strerror})", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed pipe until exit
        return 0
