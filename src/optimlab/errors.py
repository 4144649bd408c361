"""The two kinds of failure a user can meet, and the exit codes they map to.

`UsageError` (exit 2): the command was asked for something invalid; fix the input.
`RunError` (exit 1): valid input, but the work could not be done (storage unreachable,
corrupted file, ...). Both carry a one-line message meant for a person.
"""


class OptimlabError(Exception):
    exit_code = 1


class UsageError(OptimlabError, ValueError):
    exit_code = 2


class RunError(OptimlabError, RuntimeError):
    exit_code = 1


def interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` was raised while handling a Ctrl-C (anywhere in its chain): a library
    call that Ctrl-C broke (e.g. Optuna's journal lock) counts as the interruption."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
