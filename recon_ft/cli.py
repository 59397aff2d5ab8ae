"""Entry-point glue: turn configuration and input mistakes into one short message, not a traceback."""

from __future__ import annotations

import os
import sys

from hydra.errors import InstantiationException

# Errors that mean "the user asked for something that isn't there"; anything else is a bug and
# keeps its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, KeyError)


def _user_error(exc: BaseException) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, USER_ERRORS):
            return exc
        if not isinstance(exc, InstantiationException):
            return None
        exc = exc.__cause__
    return None


def run_main(fn, cfg):
    try:
        return fn(cfg)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        user = _user_error(exc)
        if user is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        msg = user.args[0] if isinstance(user, KeyError) and user.args else str(user)
        print(f"error: {msg}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(2)
