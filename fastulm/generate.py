"""``python -m fastulm.generate RUN_DIR "prompt"``: text sampled from a fine-tuned language model.

    python -m fastulm.generate RUN_DIR "I liked this movie because" --n-words 40 \\
        --n-sentences 2 --temperature 0.75 --seed 0 [--n-samples 2]

Each new token is fed once with the hidden state carried; the output is decoded back to
readable text (capitals, repeats and spacing restored). Bad numbers are a usage error
(exit 2) before the model is loaded; a model that gives NaN/inf scores is an error (exit 1).
"""

from __future__ import annotations

import argparse
import math
import sys

from fastulm.cli import parser


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: a typo such as --temp must not silently mean --temperature.
    p = parser(
        "python -m fastulm.generate",
        "Continue a prompt with a language model trained by python -m fastulm.train lm.",
    )
    p.add_argument("run_dir", help="language-model run directory")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--n-words", type=int, default=40, help="tokens to sample at most (default 40)")
    p.add_argument("--n-sentences", type=int, help="stop after this many sentences")
    p.add_argument(
        "--temperature", type=float, default=0.75, help="0 = always the likeliest (default 0.75)"
    )
    p.add_argument("--min-p", type=float, help="drop tokens less likely than this, in [0, 1)")
    p.add_argument("--allow-unk", action="store_true", help="let xxunk be sampled")
    p.add_argument("--seed", type=int, help="makes the sample repeatable")
    p.add_argument("--n-samples", type=int, default=1, help="continuations to print (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    return p


def _bad_numbers(args: argparse.Namespace) -> str | None:
    """Why the numbers cannot be sampled with, or None."""
    if args.n_words < 1:
        return f"--n-words must be >= 1, got {args.n_words}"
    if args.n_sentences is not None and args.n_sentences < 1:
        return f"--n-sentences must be >= 1, got {args.n_sentences}"
    if args.n_samples < 1:
        return f"--n-samples must be >= 1, got {args.n_samples}"
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        return f"--temperature must be a finite number >= 0, got {args.temperature}"
    if args.min_p is not None and not 0 <= args.min_p < 1:
        return f"--min-p is a probability threshold in [0, 1), got {args.min_p}"
    if args.seed is not None and not 0 <= args.seed < 2**32 - args.n_samples:
        return f"--seed must be in [0, 2**32), got {args.seed}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    why = _bad_numbers(args)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    from fastulm.devices import resolve_device
    from fastulm.files import write_text
    from fastulm.generation import NonFiniteError, generate_text
    from fastulm.run_reader import load_run
    from fastulm.weights import CheckpointError

    try:
        run = load_run(args.run_dir, resolve_device(args.device))
        if run.kind != "lm":
            raise ValueError(f"{args.run_dir}: a {run.kind} run, not a language model")
        for i in range(args.n_samples):
            seed = None if args.seed is None else args.seed + i
            text = generate_text(
                run.model,
                run.vocab,
                args.prompt,
                args.n_words,
                args.temperature,
                args.n_sentences,
                no_unk=not args.allow_unk,
                min_p=args.min_p,
                seed=seed,
            )
            write_text("-", text + "\n")  # a full disk is an error, not a lost line
    except NonFiniteError as err:
        print(f"error: {args.run_dir}: {err}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
