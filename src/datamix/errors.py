"""Errors a user can fix; the command line (`datamix_cli`) turns them into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input: the message names the field and the fix."""
