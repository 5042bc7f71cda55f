"""Errors that ncli reports to the user as one clean line and an exit code.

Exit codes (documented in the README, "Errors and exit codes"):
  0  success
  1  internal error (a bug in ncli: please report it; --debug shows the traceback)
  2  usage error: bad command line (unknown option, malformed value, conflicting flags)
  3  input error: a file or checkpoint that is missing, unreadable or invalid
  4  refused: the command would overwrite a file without --force, or would run
     untrusted code without --trust-checkpoint
  5  runtime error: the environment cannot do what was asked (e.g. no CUDA device)
130  interrupted (Ctrl-C); nothing partial is left at the output path
"""

from __future__ import annotations


class NcliError(Exception):
    """Base class: carries an exit code; str(err) is the one-line message."""

    exit_code = 1


class UsageError(NcliError):
    exit_code = 2


class InputError(NcliError):
    exit_code = 3


class RefusedError(NcliError):
    exit_code = 4


class EnvironmentProblem(NcliError):
    exit_code = 5
