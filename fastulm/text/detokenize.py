"""Tokens back to readable text, for generated samples and for showing documents.

Two passes. First the special tokens are undone: `xxmaj`/`xxup` case the next word, `xxrep n c`
becomes `c` n times, `xxwrep n w` becomes w n times, `xxbos`/`xxpad`/`xxeos`/`xxfld` go away.
(fastai's decode_spec_tokens forgets to clear its state after `xxrep`/`xxwrep`, so every later
token repeats too; here each marker applies once.) Then the words are joined the way a person
writes: no space before closing punctuation and clitics (`it 's` -> `it's`, `ca n't` ->
`can't`), none inside brackets or quotes, hyphens and slashes between words closed up, and
`xxrep` runs glued back onto the word they were cut out of (`s xxrep 5 o` -> `sooooo`).
Tokenization loses the original spacing, so the join is a readable guess, not an inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastulm.text.rules import SPECIAL_TOKENS

UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ = SPECIAL_TOKENS
DROPPED = {PAD, BOS, EOS, FLD, "xxfake"}

CLOSING_CHARS = set(".,!?;:…%)]}")
OPENERS = {"(", "[", "{", "$", "#"}
CLITICS = {"'s", "'re", "'ve", "'ll", "'d", "'m", "n't"}
EMOTICONS = {":)", ":(", ";)", ":-)", ":-(", ";-)", ":d", ":p"}
SPLIT_WORDS = {("gon", "na"), ("wan", "na"), ("got", "ta"), ("lem", "me")}
# Short words that a character run does not belong to (`a kkk`, `sooo bad`).
SHORT_WORDS = {
    "a", "i", "an", "am", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it",
    "me", "my", "no", "of", "on", "or", "so", "to", "up", "us", "we", "and", "are", "but",
    "can", "for", "had", "has", "her", "him", "his", "its", "not", "now", "one", "our", "out",
    "she", "the", "too", "two", "was", "who", "why", "you", "all", "any", "bad", "how", "did",
}  # fmt: skip
# Words ending in s that are not plurals, so a ' after them opens a quote.
NOT_PLURALS = {"is", "as", "us", "was", "has", "his", "its", "this", "does", "yes", "thus", "plus"}
SUFFIXES = {"ing", "lly", "ers", "est", "ies", "ness", "less", "ful"}


def _cased(word: str, rule: str | None, pronoun: bool = True) -> str:
    if rule == MAJ:
        return word[:1].upper() + word[1:]
    if rule == UP:
        return word.upper()
    return "I" if pronoun and word == "i" else word  # fastai lowercases a lone "I"


def _expand(tokens: Sequence[str]) -> tuple[list[str], list[bool]]:
    """Undo the special tokens: the words, and which of them are `xxrep` character runs."""
    words: list[str] = []
    is_run: list[bool] = []
    rule: str | None = None
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        i += 1
        if t in DROPPED:
            continue
        if t in (MAJ, UP):
            rule = t
            continue
        if t in (REP, WREP):
            if i < n and tokens[i].isdigit():
                count, j = int(tokens[i]), i + 1
                inner = rule
                while j < n and tokens[j] in (MAJ, UP):  # `xxwrep 3 xxmaj yes`
                    inner, j = tokens[j], j + 1
                if j < n and tokens[j] not in DROPPED:
                    w = _cased(tokens[j], inner, pronoun=t == WREP)
                    if t == REP:
                        words.append(w * count)
                        is_run.append(True)
                    else:
                        words += [w] * count
                        is_run += [False] * count
                    rule, i = None, j + 1
            continue  # a marker without a count and a word means nothing: drop it
        words.append(_cased(t.replace("▁", " "), rule))
        is_run.append(False)
        rule = None
    return words, is_run


def _is_closing(w: str) -> bool:
    return w.lower() not in EMOTICONS and all(c in CLOSING_CHARS for c in w)


def _alpha_short(w: str) -> bool:
    return w.isalpha() and len(w) <= 3 and w.lower() not in SHORT_WORDS


def _closes_up(prev: str, w: str) -> bool:
    """No space between these two words whatever surrounds them."""
    return (
        w.isspace()
        or prev.isspace()
        or _is_closing(w)
        or w.lower() in CLITICS
        or prev in OPENERS
        or (prev.lower(), w.lower()) in SPLIT_WORDS
        or w == "/"
        or prev == "/"
    )


def _glue(words: list[str], is_run: list[bool]) -> list[bool]:
    """glue[i]: no space between words i-1 and i."""
    n = len(words)
    glue = [False] * n
    in_double = in_single = False
    for i, w in enumerate(words):
        prev = words[i - 1] if i else ""
        nxt = words[i + 1] if i + 1 < n else ""
        glue[i] = glue[i] or (i > 0 and _closes_up(prev, w))
        # Quotes: a double quote opens and closes in turn; a lone ' after a plural that
        # opened nothing is a possessive (`the actors' lines`).
        if w == '"':
            glue[i] = glue[i] or (in_double and i > 0)
            if not in_double and i + 1 < n:
                glue[i + 1] = True
            in_double = not in_double
        elif w == "'":
            if in_single or (prev.lower().endswith("s") and prev.lower() not in NOT_PLURALS):
                glue[i] = i > 0
                in_single = False
            else:
                if i + 1 < n:
                    glue[i + 1] = True
                in_single = True
        # Hyphenated words and numbers with separators: `horn - tooting`, `1 , 000`.
        if w == "-" and prev[-1:].isalnum() and nxt[:1].isalnum():
            glue[i] = glue[i + 1] = True
        if w in (",", ".") and prev[-1:].isdigit() and nxt[:1].isdigit():
            glue[i + 1] = True
        if is_run[i] and i > 0:
            c = w[:1]
            if c.isdigit():
                glue[i] = glue[i] or prev[-1:].isdigit()
            elif prev.isalpha() and (prev[-1].lower() == c.lower() or _alpha_short(prev)):
                glue[i] = True
                if prev.isupper() and len(prev) > 1:
                    words[i] = w.upper()  # `xxup re xxrep 4 a xxup lly` -> REAAAALLY
                if nxt.isalpha() and (
                    (len(nxt) <= 2 and nxt.lower() not in SHORT_WORDS) or nxt.lower() in SUFFIXES
                ):
                    glue[i + 1] = True
                    if nxt.isupper() and len(nxt) > 1:  # `l xxrep 4 o xxup ng` -> LOOOONG
                        words[i] = w.upper()
                        words[i - 1] = prev.upper()
    return glue


def detokenize(tokens: Sequence[str]) -> str:
    """Readable text from fastai-style tokens (capitals, repeats and spacing restored)."""
    words, is_run = _expand(tokens)
    glue = _glue(words, is_run)
    parts: list[str] = []
    for w, g in zip(words, glue):
        if parts and not g:
            parts.append(" ")
        parts.append(w)
    return "".join(parts).strip(" ")
