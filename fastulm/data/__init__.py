"""Data side of fastulm: sources → token corpus on disk → loaders."""


class DataError(ValueError):
    """Bad input or a damaged file; its message is one line naming the file and the problem."""


def not_utf8(data: bytes, err: UnicodeDecodeError) -> str:
    """Where ``data`` stops being UTF-8 (a file saved as Latin-1 or cp1252), for a user."""
    line = data.count(b"\n", 0, err.start) + 1
    return (
        f"line {line} is not UTF-8 (byte 0x{data[err.start]:02x}); "
        "save the file as UTF-8 and try again"
    )
