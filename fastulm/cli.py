"""What every fastulm command line shares: no abbreviated options, defaults shown once."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds ``(default: X)`` to an option's help when X says something: not for flags, not
    for ``None`` (the preset or the data decides), not when the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


def parser(prog: str, description: str, **kw) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` that takes only whole option names: ``--epoch 1`` is an error,
    not a silent ``--epochs 1``."""
    kw.setdefault("formatter_class", HelpFormatter)
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False, **kw)
