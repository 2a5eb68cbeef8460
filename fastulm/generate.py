"""``python -m fastulm.generate RUN_DIR "prompt"``: text sampled from a fine-tuned language model.

    python -m fastulm.generate RUN_DIR "I liked this movie because" --n-words 40 \\
        --n-sentences 2 --temperature 0.75 --seed 0 [--n-samples 2]

Each new token is fed once with the hidden state carried; the output is decoded back to
readable text (capitals, repeats and spacing restored).
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastulm.generate",
        description="Continue a prompt with a language model trained by python -m fastulm.train lm.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="language-model run directory")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--n-words", type=int, default=40, help="tokens to sample at most")
    p.add_argument("--n-sentences", type=int, help="stop after this many sentences")
    p.add_argument("--temperature", type=float, default=0.75)
    p.add_argument("--min-p", type=float, help="drop tokens less likely than this")
    p.add_argument("--allow-unk", action="store_true", help="let xxunk be sampled")
    p.add_argument("--seed", type=int, help="makes the sample repeatable")
    p.add_argument("--n-samples", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fastulm.train.checkpoint import CheckpointError

    if args.n_words < 1 or args.temperature < 0:
        print("error: --n-words must be positive and --temperature not negative", file=sys.stderr)
        return 2
    try:
        from fastulm.generation import generate_text
        from fastulm.train.run_dir import load_run

        run = load_run(args.run_dir, args.device)
        if run.kind != "lm":
            raise ValueError(f"{args.run_dir}: a {run.kind} run, not a language model")
        for i in range(args.n_samples):
            seed = None if args.seed is None else args.seed + i
            print(
                generate_text(
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
            )
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
