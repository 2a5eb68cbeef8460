"""``fastulm COMMAND ...`` (and ``python -m fastulm COMMAND ...``): one entry for every CLI.

Each command is the module of the same name; ``fastulm train lm ...`` runs exactly what
``python -m fastulm.train lm ...`` runs.
"""

from __future__ import annotations

import sys
from importlib import import_module

COMMANDS = {
    "tokenize": ("fastulm.tokenize", "reviews -> a memory-mapped Arrow corpus (fastai's tokens)"),
    "train": ("fastulm.train.__main__", "train a language model (lm) or a classifier (clas)"),
    "predict": ("fastulm.predict", "label and probabilities from a trained classifier"),
    "generate": ("fastulm.generate", "text sampled from a trained language model"),
    "export": ("fastulm.export", "a run as ONNX + vocab + labels, served without torch"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: fastulm COMMAND [ARGS...]   (or python -m fastulm COMMAND ...)", ""]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "fastulm COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(usage(), file=sys.stderr)
        print(f"\nfastulm: error: unknown command {name!r}", file=sys.stderr)
        return 2
    module = import_module(COMMANDS[name][0])
    sys.argv[0] = f"fastulm {name}"
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
