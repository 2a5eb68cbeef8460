"""fastai 2.8.12's default text rules, in its order, with its quirks.

Each function reproduces the fastai rule of the same name exactly (checked rule by rule
against fastai in tests/text/test_rules.py). The patterns use the standard library `re`
on purpose: its `\\s` and `\\w` are Python's `str.isspace` / `str.isalnum` classes, which is
what fastai uses; the third-party `regex` module disagrees on ~30k code points (`\\w`) and
on U+001C-U+001F (`\\s`), which would change tokens.
"""

from __future__ import annotations

import html
import re

SPECIAL_TOKENS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ = SPECIAL_TOKENS

# fix_html's plain replacements, applied one after the other in this order, each with a
# character it needs. No replacement writes ';', '\\', '<' or '@', and only " @.@ " writes
# '.', so a replacement whose character is absent from the input never applies: skip it.
_HTML_FIXES = (
    ("#39;", "'", ";"),
    ("amp;", "&", ";"),
    ("#146;", "'", ";"),
    ("nbsp;", " ", ";"),
    ("#36;", "$", ";"),
    ("\\n", "\n", "\\"),
    ("quot;", "'", ";"),
    ("<br />", "\n", "<"),
    ('\\"', '"', "\\"),
    ("<unk>", UNK, "<"),
    (" @.@ ", ".", "@"),
    (" @-@ ", "-", "@"),
    ("...", " …", "."),
)

RE_REP = re.compile(r"(\S)(\1{2,})")
RE_WREP = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
RE_SPEC = re.compile(r"([/#\\])")
RE_SPACES = re.compile(" {2,}")
RE_ALL_CAPS = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
RE_MAJ = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")


def fix_html(text: str) -> str:
    """Undo the HTML debris of scraped text (`&amp;` becomes `&&`, as in fastai)."""
    present = {c for c in ";\\<@." if c in text}
    for old, new, need in _HTML_FIXES:
        if need in present:
            text = text.replace(old, new)
    return html.unescape(text)


def _rep(m: re.Match) -> str:
    return f" {TK_REP} {len(m.group(2)) + 1} {m.group(1)} "


def replace_rep(text: str) -> str:
    """A character repeated 3+ times becomes `xxrep n c`."""
    return RE_REP.sub(_rep, text)


def _wrep(m: re.Match) -> str:
    word, reps, end = m.groups()
    return f" {TK_WREP} {len(reps.split()) + 2} {word} {end}"


def replace_wrep(text: str) -> str:
    """A word repeated 3+ times becomes `xxwrep n w`."""
    return RE_WREP.sub(_wrep, text)


def spec_add_spaces(text: str) -> str:
    """Spaces around `/`, `#` and `\\`."""
    return RE_SPEC.sub(r" \1 ", text)


def rm_useless_spaces(text: str) -> str:
    """Runs of spaces (U+0020 only) become one space."""
    return RE_SPACES.sub(" ", text)


def _all_caps(m: re.Match) -> str:
    word = m.group(2)
    return f"{m.group(1)}{TK_UP} {word.lower()}" if len(word) > 1 else f"{m.group(1)}{word.lower()}"


def replace_all_caps(text: str) -> str:
    """Whitespace-delimited all-caps words are lowercased, with `xxup` before if longer than 1."""
    return RE_ALL_CAPS.sub(_all_caps, text)


def _maj(m: re.Match) -> str:
    word = m.group(2)
    return (
        f"{m.group(1)}{TK_MAJ} {word.lower()}" if len(word) > 1 else f"{m.group(1)}{word.lower()}"
    )


def replace_maj(text: str) -> str:
    """Whitespace-delimited capitalised words are lowercased, with `xxmaj` before if longer than 1."""
    return RE_MAJ.sub(_maj, text)


def lowercase(text: str, add_bos: bool = True, add_eos: bool = False) -> str:
    """Lowercase and strip; fastai adds the `xxbos` marker here."""
    return (f"{BOS} " if add_bos else "") + text.lower().strip() + (f" {EOS}" if add_eos else "")


def replace_space(token: str) -> str:
    """Post rule: a space inside a token becomes U+2581."""
    return token.replace(" ", "▁")


RULES = (
    fix_html,
    replace_rep,
    replace_wrep,
    spec_add_spaces,
    rm_useless_spaces,
    replace_all_caps,
    replace_maj,
    lowercase,
)


def apply_rules(text: str) -> str:
    """All default rules in fastai's order (the result starts with `xxbos `)."""
    for rule in RULES:
        text = rule(text)
    return text


def join_fields(fields: list[str]) -> str:
    """Several columns of one row as one text, marked as fastai's ``tokenize_df`` marks
    them: ``xxfld 1 <a> xxfld 2 <b>``; one column is its text unchanged."""
    if len(fields) == 1:
        return fields[0]
    return " ".join(f"{FLD} {i} {text}" for i, text in enumerate(fields, 1))
