"""Data side of fastulm: sources → token corpus on disk → loaders."""


class DataError(ValueError):
    """Bad input or a damaged file; its message is one line naming the file and the problem."""
