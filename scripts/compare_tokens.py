"""Compare fastulm's tokens with fastai 2.8.12's on IMDB reviews from the archive.

The reference is what fastai's `tokenize_texts` does: its default rules, spaCy
`blank("en")` with fastai's special cases, and the `replace_space` post rule.

    python scripts/compare_tokens.py                       # all 100,000 reviews
    python scripts/compare_tokens.py --n 2000 --seed 1     # a deterministic subset
    python scripts/compare_tokens.py --report diffs.txt    # write every difference
    python scripts/compare_tokens.py --ref-cache ref.jsonl # keep fastai's tokens for reruns

Prints the number of identical documents and, for each difference, the document id and
the tokens around the first mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz"


def is_review(name: str) -> bool:
    parts = name.split("/")
    if not name.endswith(".txt") or len(parts) < 4 or parts[0] != "aclImdb":
        return False
    return tuple(parts[1:-1]) in {
        ("train", "pos"),
        ("train", "neg"),
        ("train", "unsup"),
        ("test", "pos"),
        ("test", "neg"),
    }


def read_reviews(archive: Path, n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(member name, text) of all reviews, or of `n` drawn deterministically (sorted by name)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar if m.isfile() and is_review(m.name)]
        if n is not None and n < len(members):
            keep = {m.name for m in random.Random(seed).sample(members, n)}
        else:
            keep = None
        out = []
        for m in members:
            if keep is not None and m.name not in keep:
                continue
            data = tar.extractfile(m).read()
            out.append((m.name, data.decode("utf-8", errors="replace")))
    out.sort()
    return out


def reference_tokenizer():
    """fastai's tokenize_texts pipeline for one process."""
    from fastai.text.core import SpacyTokenizer, TokenizeWithRules

    tok = TokenizeWithRules(SpacyTokenizer())
    return lambda texts: [list(t) for t in tok(texts)]


def load_cache(path: Path) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        return {row["id"]: row["tokens"] for row in map(json.loads, f)}


def save_cache(path: Path, tokens: dict[str, list[str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for name, toks in tokens.items():
            f.write(json.dumps({"id": name, "tokens": toks}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def first_diff(a: list[str], b: list[str]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main() -> int:
    ap = argparse.ArgumentParser(description="fastulm vs fastai token parity on IMDB reviews")
    ap.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    ap.add_argument("--n", type=int, default=None, help="number of reviews (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", type=Path, default=None, help="write every difference here")
    ap.add_argument("--context", type=int, default=6)
    ap.add_argument(
        "--ref-cache",
        type=Path,
        default=None,
        help="JSON-lines file of fastai's tokens: read if it exists, else written",
    )
    args = ap.parse_args()
    if not args.archive.exists():
        print(f"compare_tokens: {args.archive}: no such archive", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from fastulm.text import Tokenizer

    reviews = read_reviews(args.archive, args.n, args.seed)
    texts = [t for _, t in reviews]
    cached = load_cache(args.ref_cache) if args.ref_cache and args.ref_cache.exists() else None
    if cached is not None and not all(name in cached for name, _ in reviews):
        print(f"compare_tokens: {args.ref_cache} lacks some reviews; recomputing", file=sys.stderr)
        cached = None
    if cached is None:
        fastai_tok = reference_tokenizer()

        def ref_tok(names, chunk):
            return fastai_tok(chunk)
    else:

        def ref_tok(names, chunk):
            return [cached[n] for n in names]

    fresh = {}
    ours = Tokenizer()
    batch = 1000
    t_ref = t_ours = 0.0
    diffs = []
    for s in tqdm(range(0, len(texts), batch), unit="batch", desc="comparing"):
        chunk = texts[s : s + batch]
        t0 = time.perf_counter()
        names = [n for n, _ in reviews[s : s + batch]]
        ref = ref_tok(names, chunk)
        if cached is None:
            fresh.update(zip(names, ref))
        t1 = time.perf_counter()
        got = ours.tokenize_batch(chunk)
        t2 = time.perf_counter()
        t_ref += t1 - t0
        t_ours += t2 - t1
        for j, (a, b) in enumerate(zip(got, ref)):
            if a != b:
                diffs.append((s + j, a, b))
    if cached is None and args.ref_cache:
        save_cache(args.ref_cache, fresh)
    n = len(texts)
    lines = []
    for i, a, b in diffs:
        k = first_diff(a, b)
        lo, hi = max(0, k - args.context), k + args.context
        lines.append(f"{reviews[i][0]} at token {k}:")
        lines.append(f"  fastulm: {a[lo:hi]!r}")
        lines.append(f"  fastai:  {b[lo:hi]!r}")
    summary = (
        f"{n - len(diffs)}/{n} identical ({100 * (n - len(diffs)) / max(n, 1):.3f}%); "
        f"fastai {t_ref:.1f} s{' (cached)' if cached else ''}, fastulm {t_ours:.1f} s (one process each)"
    )
    if args.report:
        args.report.write_text("\n".join([summary, *lines]) + "\n", encoding="utf-8")
    print("\n".join(lines[: 3 * 50]))
    print(summary)
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
