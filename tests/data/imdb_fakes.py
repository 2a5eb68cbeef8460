"""Small IMDB-shaped inputs for the data tests (synthetic text: no shared data needed)."""

import tarfile
from pathlib import Path

TEXTS = [
    "This movie was GREAT!!! I'd watch it again.<br /><br />10/10",
    "Terrible. The plot made no sense and the acting was worse than bad.",
    "I didn't like it, but my wife loved it... go figure. Can't win 'em all.",
    "The BEST film of 1999 -- see it at http://example.com/film now!",
    "Boring boring boring. Fell asleep twice :) Don't bother.",
    "A masterpiece: the score, the cast, the camera work. Bravo, Mr. Smith!",
    "It's OK. Not great, not awful; just... there.",
    "Why would anyone make this? $5 wasted & 2 hours I won't get back.",
    "Loved the U.S. scenes; hated the ending. 7/10 from me.",
    "\"Classic\" they said. It's not. It's dull & slow (very slow).",
    "What a ride! The twist at the end blew me away.",
    "Meh.",
    "The actors try hard, but the script is weak and the jokes fall flat.",
    "Five stars!!!!! Best. Movie. Ever.",
    "I can't say I enjoyed it; the first hour drags and the second repeats it.",
    "Wonderful wonderful wonderful cinematography, shame about the dialogue.",
]

# (relative path, text index); labels follow the class folder.
LAYOUT = {
    "train/pos": [0, 5, 10, 13],
    "train/neg": [1, 4, 7],
    "test/pos": [8, 15],
    "test/neg": [2, 12],
    "train/unsup": [3, 6, 9, 11, 14],
}
STRAYS = {
    "README": "Large Movie Review Dataset v1.0\n",
    "imdb.vocab": "the\nand\n",
    "imdbEr.txt": "0.1\n",
    "train/urls_pos.txt": "http://www.imdb.com/title/tt0453418/usercomments\n",
    "train/urls_unsup.txt": "http://www.imdb.com/title/tt0453418/usercomments\n",
    "test/urls_neg.txt": "http://www.imdb.com/title/tt0453418/usercomments\n",
    "train/labeledBow.feat": "9 0:9 1:1\n",
    "train/pos/notes.md": "not a review\n",
    "extra/0_1.txt": "in a folder that is not a split\n",
    "train/.cache/0_1.txt": "in a hidden folder\n",
    "test/unsup/0_1.txt": "unlabelled texts live in train/unsup or unsup only\n",
    "stray.txt": "at the top\n",
}


def make_imdb(root: Path, fastai_layout: bool = False) -> dict[tuple[str, str], tuple[str, int]]:
    """Write an aclImdb-like folder; return {(split, id): (text, label)} of its reviews."""
    expected = {}
    for folder, idxs in LAYOUT.items():
        if fastai_layout and folder == "train/unsup":
            folder = "unsup"
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(idxs):
            name = f"{i * 7 % 13}_{k}.txt"
            (d / name).write_text(TEXTS[i], encoding="utf-8")
            split = "unsup" if "unsup" in folder else folder.split("/")[0]
            label = {"pos": 1, "neg": 0}.get(folder.split("/")[-1], -1)
            expected[(split, f"{folder}/{name}")] = (TEXTS[i], label)
    for rel, text in STRAYS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return expected


def make_tar(folder: Path, dest: Path, mode: str = "w:gz", fmt=tarfile.GNU_FORMAT) -> Path:
    """Archive ``folder`` with its name as the top member, like the official archive."""
    with tarfile.open(dest, mode, format=fmt) as tf:
        tf.add(folder, arcname=folder.name)
    return dest
