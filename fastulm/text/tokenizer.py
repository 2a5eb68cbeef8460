"""Text -> fastai-identical tokens -> local ids, fast.

fastai applies its rules to the whole document, then spaCy splits the result. Almost all of
that work is local to a whitespace-free run of the (HTML-fixed) text: replace_rep,
spec_add_spaces, replace_all_caps, replace_maj and lowercase never look across whitespace,
and spaCy's splitting works run by run. So each distinct run is processed once, in Python
(rules.py + words.py), and its token ids are cached in a hash table that numba probes
directly on the text's code points; the whitespace between runs is cached the same way.
Plain ASCII runs are looked up lowercased, their xxup/xxmaj marker found by the kernel.
Three things are not run-local, and a document that meets one of them is redone:

- replace_wrep (a word repeated 3+ times): flagged when a word follows itself and the next
  word starts with it, confirmed with fastai's pattern; replace_rep and replace_wrep are
  then applied to the whole text and the result goes through the fast path again (or,
  where those two rules would change it again, the exact whole-document path: rules on
  the document, then words.split_words);
- spaCy's final special-case pass, when the last tokens of a run and the first tokens of
  the next could belong to one multi-token special case (e.g. `''` `''`): the document's
  pass is redone over the cached pre-pass tokens;
- a text holding U+0000, the separator used to batch documents: whole-document path.

The pieces: run_kernels.py (the numba kernels), run_store.py (what the tokenizer has learnt),
plain_runs.py (new plain ASCII runs in numba), links.py (the cross-run link sets).
docs/tokenizer.md explains the design and the measured parity and speed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from fastulm.text import ascii_split
from fastulm.text.plain_runs import PlainRuns
from fastulm.text.rules import (
    BOS,
    RE_REP,
    RE_WREP,
    SPECIAL_TOKENS,
    apply_rules,
    fix_html,
    replace_all_caps,
    replace_maj,
    replace_rep,
    replace_space,
    replace_wrep,
    rm_useless_spaces,
    spec_add_spaces,
)
from fastulm.text.run_kernels import (
    WS,
    WS_PAD,
    assemble,
    max_runs,
    pass_tables,
    pre_tokens,
    scan,
    special_pass,
)
from fastulm.text.run_store import FACTS, RunStore
from fastulm.text.words import (
    LETTERS_PASS_THROUGH,
    PATTERNS,
    SPECIALS,
    TOKEN_MATCH_PATTERN_SET,
    prefix_len,
    run_tokens,
    split_words,
    suffix_len,
)
from fastulm.text.words import (
    pre_tokens as word_pre_tokens,
)
from fastulm.text.words import (
    special_pass as word_special_pass,
)

_WORD = re.compile(r"\w+")
_SEP = "\x00"
# ASCII letters are one token or their special case (words.LETTERS_PASS_THROUGH), and no
# special-case pattern is made of letter tokens only: then the final pass changes nothing.
_LETTER_WORDS_PLAIN = (
    LETTERS_PASS_THROUGH
    and not TOKEN_MATCH_PATTERN_SET
    and not any(all(t.isascii() and t.isalpha() for t in p) for p in PATTERNS)
)


def _letters_then_one(s: str) -> list[str] | None:
    """spaCy's affix loop for ASCII letters + one other character, when it strips that
    character as a suffix and nothing as a prefix (else None: take the general path).

    The same steps as words._split_affixes, with the same regexes: the last character is
    the suffix; then the letters are a special case (stop) or one token (no affix matches
    ASCII letters)."""
    if prefix_len(s) or suffix_len(s) != 1:
        return None
    word = s[:-1]
    return [*SPECIALS.get(word, (word,)), s[-1]]


# scan hands out the markers as ids 7 (xxup) and 8 (xxmaj), the local table's fixed ids;
# they must stay plain special cases for the lowercase lookup to be exact.
assert SPECIAL_TOKENS[7:9] == ["xxup", "xxmaj"]
assert SPECIALS["xxup"] == ("xxup",) and SPECIALS["xxmaj"] == ("xxmaj",)


def _concat(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return flat.astype(np.int32, copy=False), offsets


class Tokenizer:
    """Per-process tokenizer: fastai's rules, spaCy-compatible splitting, local ids.

    `tokens` maps local id -> token string; it only grows, and starts with fastai's
    special tokens, so ids 0..8 are xxunk..xxmaj. Use `encode_batch` for many texts.
    """

    def __init__(self) -> None:
        self._store = RunStore()
        self.tokens: list[str] = self._store.tokens  # the same list, only growing
        self._split_cache: dict[str, list[str]] = {}  # spaCy-level run -> tokens
        # entry 0 is the single space, which scan uses without a lookup
        self._store.runs.add([" "])
        self._fill(np.zeros(1, np.int64), [(1, " ")])
        self._pass = pass_tables(sorted(PATTERNS), self._store.ids_of)
        self._plain = PlainRuns(self._store) if ascii_split.COMPILED is not None else None

    # -- one run, the slow way

    def _split(self, core: str, cached: bool = True) -> tuple[list[str], list, int, int]:
        """Tokens of a rule-processed run (single spaces only), the same before the final
        special-case pass with None between spaCy runs, and the run's link ids."""
        cache = self._split_cache if cached else None
        links = self._store.links
        subs = core.split(" ")
        if len(subs) == 1:
            pre = run_tokens(core, cache)
            return word_special_pass(pre), pre, *links.ids(pre)
        pres = [run_tokens(sub, cache) for sub in subs]
        flat = [t for pre in pres for t in pre]
        owner = [k for k, pre in enumerate(pres) for _ in pre]
        marked = [t for pre in pres for t in (None, *pre)][1:]
        return word_special_pass(flat, owner), marked, *links.ids(flat)

    def _lower_run(self, low: str) -> tuple:
        """Values of a lowercased plain ASCII run (kind 3 in scan): the rules only add the
        marker scan works out, so this is the spaCy split of `low` alone."""
        store = self._store
        if _LETTER_WORDS_PLAIN and low.isalpha():  # ASCII letters (about 40% of new runs)
            word = SPECIALS.get(low, (low,))
            ids = store.ids_of(word)
            wid = store.word_key(low)
            return ids, ids, False, *store.links.ids(word), wid, wid, False, wid, False
        if _LETTER_WORDS_PLAIN and low[:-1].isalpha() and low not in SPECIALS:
            pre = _letters_then_one(low)
            if pre is not None:  # ASCII letters + one non-letter (about 25% of new runs)
                toks = word_special_pass(pre)
                ids = store.ids_of(toks)
                pre_ids = ids if toks is pre else store.ids_of(pre)
                wid = store.word_id(low)
                # not all word characters: the stem is the letters
                stem = wid if wid >= 0 else store.word_key(low[:-1])
                return ids, pre_ids, False, *store.links.ids(pre), wid, wid, False, stem, False
        toks, pre, first, last = self._split(low, cached=False)  # the run table caches it
        wid = store.word_id(low)  # lowercase: more replace_wrep candidates, never fewer
        ids = store.ids_of(toks)
        pre_ids = ids if pre is toks else store.ids_of(pre)
        stem = wid if wid >= 0 else store.stem_id(low)
        return ids, pre_ids, False, first, last, wid, wid, False, stem, False

    def _text_run(self, run: str) -> tuple:
        """Values of a whitespace-free run: ids, ids before the special-case pass, lead space,
        link indices, replace_wrep words."""
        store = self._store
        rep = replace_rep(run) if RE_REP.search(run) else run
        words = rep.split()
        wdup = len(words) > 1 and any(a == b and _WORD.fullmatch(a) for a, b in pairwise(words))
        text = spec_add_spaces(rep) if ("/" in rep or "#" in rep or "\\" in rep) else rep
        if "  " in text:
            text = rm_useless_spaces(text)
        if text.lower() != text:  # both rules need a capital A-Z
            text = replace_maj(replace_all_caps(text))
        text = text.lower()
        toks, pre, first, last = self._split(text.strip(" "))
        wf = store.word_id(words[0])
        wl = wf if len(words) == 1 else store.word_id(words[-1])
        lead = text.startswith(" ")
        stem = wf if wf >= 0 else store.stem_id(words[0])
        multi = len(words) > 1
        return store.ids_of(toks), store.ids_of(pre), lead, first, last, wf, wl, wdup, stem, multi

    def _space_run(self, run: str) -> tuple:
        """Values of a whitespace run between two text runs, without / with a space after."""
        plain = rm_useless_spaces(" " + run)[1:]
        spaced = rm_useless_spaces(" " + run + " ")[1:]
        ids = []
        for text in (plain, spaced):
            toks = split_words(text, self._split_cache) if text else []
            ids.append([self._store.token_id(replace_space(t)) for t in toks])
        return ids[0], ids[1], False, 0, 0, -1, -1, False, -1, False

    def _fill(self, ents: np.ndarray, runs: list[tuple[int, str]]) -> None:
        """Values of the new entries `ents` from their (kind, key)."""
        todo = {1: self._space_run, 0: self._text_run, 3: self._lower_run}
        vals = [todo[kind](key) for kind, key in runs]
        flat: list[int] = []
        lens = []
        for v in vals:
            flat += v[0]
            flat += v[1]
            lens.append(len(v[0]))
            lens.append(len(v[1]))
        start = self._store.append_ids(flat)
        lens = np.array(lens, np.int64).reshape(-1, 2)
        starts = np.cumsum(lens.ravel()).reshape(-1, 2) - lens + start
        facts = {name: [v[k] for v in vals] for k, name in enumerate(FACTS, 2)}
        self._store.set_values(ents, starts, lens, **facts)

    # -- documents

    def _exact_ids(self, text: str) -> np.ndarray:
        """The slow, whole-document path (always exact)."""
        toks, owner = word_pre_tokens(apply_rules(text), self._split_cache)
        ids = np.array([self._store.token_id(replace_space(t)) for t in toks], dtype=np.int32)
        return special_pass(ids, np.array(owner, np.int32), *self._pass)

    def _relink(self, r_kind, r_ent, r_mark, lo: int, hi: int) -> np.ndarray:
        """Ids of the document made of runs lo..hi-1, with the document-wide special-case
        pass (for a document where two runs may share a multi-token special case)."""
        s = self._store
        ids, owner = pre_tokens(
            r_kind, r_ent, r_mark, lo, hi, s.val_start, s.val_len, s.lead, s.pool,
            s.token_id(BOS),
        )  # fmt: skip
        return special_pass(ids, owner, *self._pass)

    def _encode_fixed(self, joined: str, n_docs: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Ids and offsets of `n_docs` HTML-fixed texts joined with U+0000, and the documents
        in which replace_wrep matches (their ids here are not fastai's: see _encode_wrep)."""
        st = self._store
        arr = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
        n_runs = max_runs(arr, WS_PAD)
        st.reserve(n_runs, len(arr))
        first = st.runs.n
        r_kind, r_ent, r_mark, new, new_start, new_end = scan(
            arr, WS, n_runs, *st.runs.arrays, first
        )
        if len(new):
            st.runs.n = first + len(new)
            todo = np.ones(len(new), np.bool_)
            if self._plain is not None:  # plain ASCII runs in numba; what it leaves, below
                plain = np.flatnonzero(r_kind[new] == 3)
                todo[plain[self._plain.fill(r_ent[new[plain]])]] = False
            rest = np.flatnonzero(todo)
            starts, ends = new_start[rest].tolist(), new_end[rest].tolist()
            kinds = r_kind[new[rest]].tolist()
            runs = [
                (k, joined[s:e].lower() if k == 3 else joined[s:e])
                for k, s, e in zip(kinds, starts, ends)
            ]
            self._fill(r_ent[new[rest]], runs)
        ids, offsets, flags = assemble(
            r_kind, r_ent, r_mark, st.val_start, st.val_len, st.lead, st.link_first,
            st.link_last, st.links.compat, st.wfirst, st.wlast, st.wdup, st.wstem,
            st.wmulti, st.pool,
            n_docs, st.token_id(BOS),
        )  # fmt: skip
        flagged = np.flatnonzero(flags).tolist()
        if not flagged:
            return ids, offsets, []
        slow, redo = [], {}
        fixed = joined.split(_SEP) if any(flags[d] & 2 for d in flagged) else []
        for d in flagged:
            if flags[d] & 2 and RE_WREP.search(replace_rep(fixed[d])):
                slow.append(d)
            elif flags[d] & 1:
                redo[d] = None
        if redo:
            ends = np.flatnonzero(r_kind == 2)
            for d in redo:
                lo = ends[d - 1] + 1 if d else 0
                redo[d] = self._relink(r_kind, r_ent, r_mark, lo, ends[d])
            pieces = [ids[offsets[i] : offsets[i + 1]] for i in range(n_docs)]
            for d, new_ids in redo.items():
                pieces[d] = new_ids
            ids, offsets = _concat(pieces)
        return ids, offsets, slow

    def _encode_wrep(self, fixed: list[str]) -> list[np.ndarray | None]:
        """Ids of HTML-fixed texts in which replace_wrep matches (the one rule that is not
        run-local): replace_rep and replace_wrep applied to the whole text, as fastai does,
        then the fast path for the rest, which leaves such a text unchanged by those two
        rules. None where it would not (a repeat count such as 111 is itself a replace_rep
        match, or new repeats appear): those take the exact path."""
        again = [replace_wrep(replace_rep(t)) for t in fixed]
        ids, offsets, still = self._encode_fixed(_SEP.join(again), len(again))
        out = [ids[offsets[k] : offsets[k + 1]] for k in range(len(again))]
        for k in still:
            out[k] = None
        for k, t in enumerate(again):
            if RE_REP.search(t):
                out[k] = None
        return out

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of many texts: (flat int32 ids, int64 offsets with len(texts)+1 entries)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        fixed = ["" if _SEP in t else fix_html(t) for t in texts]
        ids, offsets, wrep = self._encode_fixed(_SEP.join(fixed), len(texts))
        slow = {i for i, t in enumerate(texts) if _SEP in t}
        if not slow and not wrep:
            return ids, offsets
        pieces = [ids[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
        if wrep:
            for d, new in zip(wrep, self._encode_wrep([fixed[d] for d in wrep])):
                if new is None:
                    slow.add(d)
                else:
                    pieces[d] = new
        for d in slow:
            pieces[d] = self._exact_ids(texts[d])
        return _concat(pieces)

    def encode(self, text: str) -> np.ndarray:
        """Local token ids of `text` (int32, `xxbos` first)."""
        ids, _ = self.encode_batch([text])
        return ids

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text`, identical to fastai 2.8.12 `tokenize_texts`."""
        toks = self.tokens
        return [toks[i] for i in self.encode(text).tolist()]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of many texts (faster than calling `tokenize` on each)."""
        ids, offsets = self.encode_batch(texts)
        toks = self.tokens
        flat = [toks[i] for i in ids.tolist()]
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
