"""fastulm on "your own data": IMDB's 8 rating classes and a keyword multi-label set, on the CPU.

    .venv/bin/python benchmarks/own_data.py --out /tmp/own_data --n-train 2000 --n-test 2000 \
        --preset tiny

Every fastulm stage runs through its command line (``python -m fastulm.train lm|clas`` and
``python -m fastulm.predict``, as subprocesses, timed); the corpora are written with
``fastulm.tokenize_df`` from a seeded, rating-stratified subset of the archive (the full
archive through ``python -m fastulm.tokenize ARCHIVE OUT --label-regex '_(\\d+)\\.txt$'`` is
50,000 labelled reviews, too many for a 2-core CPU budget).

Tasks, both on the same texts (train: a subset of the archive's train split; test = the
corpus's valid split: a subset of the archive's test split):

* ratings: the label is the star rating in the file name (1-4 and 7-10: 8 classes);
* multi-label: classes from keywords, case-insensitive, matched at a word start
  (``\\b(funny|comedy)`` -> comedy, ``\\b(scary|horror)`` -> horror, ``\\b(love|romance)``
  -> romance, ``\\b(action|fight)`` -> action, searched in the whole review), plus
  ``positive`` when the rating is >= 7; a review can have none or several.

Each is scored on the whole test subset against a majority baseline and TF-IDF (unigrams +
bigrams, min_df 2, sublinear tf) + logistic regression (C=4 fixed, not tuned; one-vs-rest for
the multi-label task) trained on the same training texts. The language model is trained once
(on the training texts only, and optionally ``--n-unsup`` unlabelled reviews; never on the
test texts) and its encoder serves both classifiers, which share its vocab.
Writes ``OUT/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

ARCHIVE = Path(os.environ.get("FASTULM_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
# the archive's unlabelled reviews are aclImdb/train/unsup/N_0.txt (rating 0): not training data
NAME_RE = re.compile(r"aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
KEYWORDS = {
    "comedy": r"\b(funny|comedy)",
    "horror": r"\b(scary|horror)",
    "romance": r"\b(love|romance)",
    "action": r"\b(action|fight)",
}
MULTI_CLASSES = [*KEYWORDS, "positive"]
TFIDF_C = 4.0
_LOCK = threading.Lock()


def read_archive(path: Path, want_unsup: bool):
    """(split, rating, text) of every review in the archive (unsup: rating 0)."""
    import polars as pl

    rows: dict[str, list] = {"split": [], "rating": [], "text": []}
    with tarfile.open(path, "r:gz") as tf:
        for m in tf:
            if not m.isfile():
                continue
            g = NAME_RE.search(m.name)
            if g is None:
                continue
            split = "unsup" if g.group(2) == "unsup" else g.group(1)
            if split == "unsup" and not want_unsup:
                continue
            text = tf.extractfile(m).read().decode("utf-8")
            rows["split"].append(split)
            rows["rating"].append(int(g.group(4)))
            rows["text"].append(text)
    return pl.DataFrame(rows)


def stratified(df, n: int, seed: int):
    """A seeded subset of ``n`` rows of ``df``, stratified by rating."""
    from sklearn.model_selection import train_test_split

    if n >= df.height:
        return df
    idx, _ = train_test_split(
        np.arange(df.height), train_size=n, stratify=df["rating"].to_numpy(), random_state=seed
    )
    return df[np.sort(idx)]


def multi_labels(texts: list[str], ratings) -> list[list[str]]:
    pats = {k: re.compile(p, re.IGNORECASE) for k, p in KEYWORDS.items()}
    out = []
    for t, r in zip(texts, ratings):
        labs = [k for k, p in pats.items() if p.search(t)]
        if r >= 7:
            labs.append("positive")
        out.append(labs)
    return out


def run(cmd: list[str], log: Path, done: Path | None = None, reuse: bool = False) -> float:
    """Run a fastulm command, its output to ``log``; wall seconds. With ``reuse``, a step
    whose ``done`` file exists is skipped and its recorded wall time returned."""
    walls_path = log.parent / "walls.json"
    with _LOCK:
        walls = json.loads(walls_path.read_text()) if walls_path.exists() else {}
    if reuse and done is not None and done.exists() and log.name in walls:
        print(f"reusing {done} ({walls[log.name]:.1f} s)", flush=True)
        return walls[log.name]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        tail = log.read_text()[-3000:]
        sys.exit(f"failed ({r.returncode}) after {dt:.0f} s: {' '.join(cmd)}\n{tail}")
    print(f"  {dt:.1f} s", flush=True)
    with _LOCK:
        walls = json.loads(walls_path.read_text()) if walls_path.exists() else {}
        walls[log.name] = dt
        walls_path.write_text(json.dumps(walls, indent=2) + "\n")
    return dt


def last_log_row(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    return rows[-1] if rows else {}


def read_preds(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(label column, class names, probabilities) of a predict CSV, in row order."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    pcols = [i for i, h in enumerate(head) if h.startswith("p_")]
    names = [head[i][2:] for i in pcols]
    li = head.index("label")
    labels = [r[li] for r in rows[1:]]
    probs = np.array([[float(r[i]) for i in pcols] for r in rows[1:]])
    return labels, names, probs


def single_scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def multi_scores(Y, P) -> dict:
    from sklearn.metrics import f1_score

    Y, P = np.asarray(Y, bool), np.asarray(P, bool)
    per = (Y == P).mean(0)
    return {
        "accuracy": float((Y == P).mean()),  # over every (document, class) cell
        "exact_match": float((Y == P).all(1).mean()),
        "micro_f1": float(f1_score(Y, P, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(Y, P, average="macro", zero_division=0)),
        "per_class_accuracy": {c: float(a) for c, a in zip(MULTI_CLASSES, per)},
        "per_class_f1": {
            c: float(f)
            for c, f in zip(MULTI_CLASSES, f1_score(Y, P, average=None, zero_division=0))
        },
    }


def tfidf(train_texts):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    return vec, vec.fit_transform(train_texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (corpora, runs, results.json)")
    ap.add_argument("--archive", default=str(ARCHIVE / "aclImdb_v1.tar.gz"))
    ap.add_argument("--n-train", type=int, default=2000, help="training reviews (stratified)")
    ap.add_argument("--n-test", type=int, default=2000, help="test reviews (stratified)")
    ap.add_argument("--n-unsup", type=int, default=0, help="unlabelled reviews added to the LM")
    ap.add_argument("--preset", default="tiny", help="fastulm preset: tiny or cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--parallel-clas", action="store_true", help="train the two classifiers concurrently"
    )
    ap.add_argument("--threads", type=int, help="torch threads of each fastulm command")
    ap.add_argument("--threshold", type=float, default=0.5, help="multi-label threshold")
    ap.add_argument("--force", action="store_true", help="replace the corpora and runs in OUT")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep corpora and finished runs already in OUT (rerun only the scoring)",
    )
    a = ap.parse_args()

    import polars as pl

    import fastulm

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    force = ["--force"] if a.force else []
    res: dict = {
        "args": vars(a),
        "cpu": _cpu(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "wall_s": {},
    }

    # 1. the subset -----------------------------------------------------------------------
    t0 = time.perf_counter()
    df = read_archive(Path(a.archive), a.n_unsup > 0)
    tr = stratified(df.filter(pl.col("split") == "train"), a.n_train, a.seed)
    te = stratified(df.filter(pl.col("split") == "test"), a.n_test, a.seed)
    un = stratified(df.filter(pl.col("split") == "unsup"), a.n_unsup, a.seed) if a.n_unsup else None
    del df
    res["wall_s"]["read_subset"] = time.perf_counter() - t0
    lab = pl.concat(
        [tr.with_columns(is_valid=pl.lit(False)), te.with_columns(is_valid=pl.lit(True))]
    )
    lab = lab.with_columns(label=pl.col("rating").cast(pl.Utf8))
    ml = multi_labels(lab["text"].to_list(), lab["rating"].to_list())
    lab = lab.with_columns(multi=pl.Series([";".join(x) for x in ml], dtype=pl.Utf8))
    res["n"] = {"train": tr.height, "test": te.height, "unsup": 0 if un is None else un.height}
    res["rating_counts_train"] = {
        str(k): int(v)
        for k, v in sorted(zip(*np.unique(tr["rating"].to_numpy(), return_counts=True)))
    }
    res["multi_label_rate_train"] = {
        c: float(np.mean([c in x for x in ml[: tr.height]])) for c in MULTI_CLASSES
    }

    # 2. corpora (tokenize_df): ratings, then the multi-label set on the same vocab ----------
    t0 = time.perf_counter()
    rat_dir, ml_dir, lm_dir = out / "corpus_ratings", out / "corpus_multi", out / "corpus_lm"
    have = a.reuse and all(
        (d / "meta.json").exists() for d in (rat_dir, ml_dir, *([lm_dir] if un is not None else []))
    )
    if not have:
        fastulm.tokenize_df(
            lab.select("text", "label", "is_valid"),
            rat_dir,
            label_col="label",
            valid_col="is_valid",
            vocab_from=["train"],
            force=a.force,
        )
        fastulm.tokenize_df(
            lab.select("text", pl.col("multi").alias("label"), "is_valid"),
            ml_dir,
            label_col="label",
            valid_col="is_valid",
            label_delim=";",
            vocab=str(rat_dir),
            force=a.force,
        )
        if un is not None:  # the LM reads the training and unlabelled texts, nothing else
            fastulm.tokenize_df(
                pl.concat([tr.select("text"), un.select("text")]),
                lm_dir,
                vocab=str(rat_dir),
                force=a.force,
            )
    res["wall_s"]["tokenize"] = time.perf_counter() - t0
    walls_path = out / "walls.json"
    walls = json.loads(walls_path.read_text()) if walls_path.exists() else {}
    if have:
        res["wall_s"]["tokenize"] = walls.get("tokenize", float("nan"))
    else:
        walls["tokenize"] = res["wall_s"]["tokenize"]
        walls_path.write_text(json.dumps(walls, indent=2) + "\n")

    # 3. LM, then the two classifiers, through the CLI --------------------------------------
    common = ["--preset", a.preset, "--seed", str(a.seed), "--quiet", *force]
    if a.threads:
        common += ["--threads", str(a.threads)]
    lm_run, rat_run, ml_run = out / "run_lm", out / "run_ratings", out / "run_multi"
    if un is not None:
        lm_cmd = [py, "-m", "fastulm.train", "lm", str(lm_dir), str(lm_run), *common]
    else:  # the ratings corpus's train split only: the test texts stay unseen
        lm_cmd = [
            py,
            "-m",
            "fastulm.train",
            "lm",
            str(rat_dir),
            str(lm_run),
            "--splits",
            "train",
            *common,
        ]
    res["wall_s"]["train_lm"] = run(
        lm_cmd, out / "train_lm.log", lm_run / "encoder.safetensors", a.reuse
    )
    res["lm_last_epoch"] = last_log_row(lm_run)
    clas_cmd = [py, "-m", "fastulm.train", "clas"]
    thresh = ["--threshold", str(a.threshold)]
    jobs = {
        "train_clas_ratings": (
            [*clas_cmd, str(rat_dir), str(rat_run), "--encoder", str(lm_run), *common],
            out / "train_clas_ratings.log",
            rat_run / "model.safetensors",
            a.reuse,
        ),
        "train_clas_multi": (
            [*clas_cmd, str(ml_dir), str(ml_run), "--encoder", str(lm_run), *thresh, *common],
            out / "train_clas_multi.log",
            ml_run / "model.safetensors",
            a.reuse,
        ),
    }
    if a.parallel_clas:  # the two classifiers at once (each its own process)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as ex:
            futs = {k: ex.submit(run, *v) for k, v in jobs.items()}
            for k, f in futs.items():
                res["wall_s"][k] = f.result()
    else:
        for k, v in jobs.items():
            res["wall_s"][k] = run(*v)
    res["parallel_clas"] = a.parallel_clas

    # 4. predict the whole test subset with each classifier -------------------------------
    test_csv = out / "test.csv"
    te_texts = te["text"].to_list()
    with open(test_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows(enumerate(te_texts))
    preds = {}
    for name, rd in (("ratings", rat_run), ("multi", ml_run)):
        p = out / f"preds_{name}.csv"
        extra = ["--threshold", str(a.threshold)] if name == "multi" else []
        res["wall_s"][f"predict_{name}"] = run(
            [
                py,
                "-m",
                "fastulm.predict",
                str(rd),
                "--file",
                str(test_csv),
                "--id-col",
                "id",
                "--out",
                str(p),
                "--device",
                "cpu",
                "--no-progress",
                *extra,
            ],
            out / f"predict_{name}.log",
        )
        preds[name] = read_preds(p)

    tr_texts = tr["text"].to_list()
    t0 = time.perf_counter()
    vec, Xtr = tfidf(tr_texts)
    Xte = vec.transform(te_texts)
    res["wall_s"]["tfidf_features"] = time.perf_counter() - t0

    # 5. ratings: fastulm vs majority vs TF-IDF + LR ----------------------------------------
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    ytr = [str(r) for r in tr["rating"].to_list()]
    yte = [str(r) for r in te["rating"].to_list()]
    labels, names, probs = preds["ratings"]
    argmax = [names[i] for i in probs.argmax(1)]
    rat: dict = {
        "fastulm": single_scores(yte, labels),
        "fastulm_argmax_agrees_with_label_column": float(
            np.mean([x == y for x, y in zip(argmax, labels)])
        ),
        "fastulm_last_log_row": last_log_row(rat_run),
    }
    values, counts = np.unique(ytr, return_counts=True)
    maj = str(values[counts.argmax()])
    rat["majority"] = {**single_scores(yte, [maj] * len(yte)), "class": maj}
    t0 = time.perf_counter()
    lr = LogisticRegression(C=TFIDF_C, max_iter=1000).fit(Xtr, ytr)
    rat["tfidf_lr"] = single_scores(yte, lr.predict(Xte))
    res["wall_s"]["tfidf_lr_ratings_fit"] = time.perf_counter() - t0
    # the two-class view of the same predictions (rating >= 7), for orientation
    pos = lambda ys: [int(y) >= 7 for y in ys]  # noqa: E731
    rat["fastulm_binary_accuracy"] = float(np.mean(np.array(pos(labels)) == np.array(pos(yte))))
    rat["tfidf_lr_binary_accuracy"] = float(
        np.mean(np.array(pos(lr.predict(Xte))) == np.array(pos(yte)))
    )
    res["ratings"] = rat

    # 6. multi-label: fastulm vs all-absent vs per-class majority vs TF-IDF + OvR LR --------
    def mat(sets):
        return np.array([[c in s for c in MULTI_CLASSES] for s in sets], bool)

    Ytr, Yte = mat(ml[: tr.height]), mat(ml[tr.height :])
    labels, names, probs = preds["multi"]
    order = [names.index(c) for c in MULTI_CLASSES]
    P = probs[:, order] > a.threshold
    from_label_col = mat([set(x.split(";")) if x else set() for x in labels])
    mul: dict = {
        "fastulm": multi_scores(Yte, P),
        "fastulm_threshold_agrees_with_label_column": float((from_label_col == P).all(1).mean()),
        "fastulm_last_log_row": last_log_row(ml_run),
        "all_absent": multi_scores(Yte, np.zeros_like(Yte)),
        "per_class_majority": multi_scores(Yte, np.broadcast_to(Ytr.mean(0) > 0.5, Yte.shape)),
        "test_label_rate": {c: float(v) for c, v in zip(MULTI_CLASSES, Yte.mean(0))},
    }
    t0 = time.perf_counter()
    ovr = OneVsRestClassifier(LogisticRegression(C=TFIDF_C, max_iter=1000)).fit(
        Xtr, Ytr.astype(int)
    )
    mul["tfidf_ovr_lr"] = multi_scores(Yte, ovr.predict(Xte).astype(bool))
    res["wall_s"]["tfidf_lr_multi_fit"] = time.perf_counter() - t0
    res["multi_label"] = mul

    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))


def table(res: dict) -> str:
    r, m, w = res["ratings"], res["multi_label"], res["wall_s"]
    lines = [
        f"IMDB subset: {res['n']['train']} train / {res['n']['test']} test reviews "
        f"(+{res['n']['unsup']} unlabelled for the LM), preset {res['args']['preset']}, "
        f"seed {res['args']['seed']}",
        "",
        "| task | method | accuracy | micro-F1 | macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for key, name in (
        ("majority", "majority class"),
        ("tfidf_lr", "TF-IDF + LR (C=4)"),
        ("fastulm", "fastulm"),
    ):
        s = r[key]
        lines.append(
            f"| ratings (8 classes) | {name} | {s['accuracy']:.3f} | | {s['macro_f1']:.3f} |"
        )
    for key, name in (
        ("all_absent", "all absent"),
        ("per_class_majority", "per-class majority"),
        ("tfidf_ovr_lr", "TF-IDF + one-vs-rest LR (C=4)"),
        ("fastulm", "fastulm"),
    ):
        s = m[key]
        lines.append(
            f"| multi-label (5 classes) | {name} | {s['accuracy']:.3f} (exact {s['exact_match']:.3f}) "
            f"| {s['micro_f1']:.3f} | {s['macro_f1']:.3f} |"
        )
    lines += [
        "",
        "| multi-label class | test rate | fastulm acc / F1 | TF-IDF + LR acc / F1 |",
        "|---|---|---|---|",
    ]
    for c in MULTI_CLASSES:
        f, t = m["fastulm"], m["tfidf_ovr_lr"]
        lines.append(
            f"| {c} | {m['test_label_rate'][c]:.3f} | {f['per_class_accuracy'][c]:.3f} / "
            f"{f['per_class_f1'][c]:.3f} | {t['per_class_accuracy'][c]:.3f} / {t['per_class_f1'][c]:.3f} |"
        )
    lines += ["", "| stage | wall s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in w.items()]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
