"""Hand-picked and generated texts that exercise the rules and the splitter's corners."""

from __future__ import annotations

import random

TRICKY = [
    "",
    " ",
    "   ",
    "\n",
    " \n ",
    "\t\t",
    "Hello world",
    "HELLO WORLD",
    "I am A man",
    "U.S. army and the U.K.",
    "(John) said 'Hi' to \"Mary\".",
    "This is &amp; that &quot;quoted&quot; &lt;tag&gt; &#39;s &amp;amp; &#8217; &#x27; &hellip;",
    "a<br />b<br /><br />c <br /> d",
    "x #39; y nbsp;z #146; #36;5 quot;hi quot;",
    '\\n escaped \\"quote\\" back\\slash',
    "<unk> token <unk>",
    "a @.@ b @-@ c",
    "wait... what.... ok..",
    "Sooooo goooood!!!!!! ??? ...",
    "no no no no way",
    "the the the end",
    "very very good, good good good.",
    "word word, word word",
    "Ha ha ha HA HA HA",
    "can't won't don't I'm you're they'd gonna wanna gotta cannot dont",
    "Can't DON'T Won't I'M",
    "http://www.imdb.com/title/tt0111161/ and www.example.com/path?x=1 https://x.org.",
    "mail me at john.doe@example.com! or (jane@x.co.uk)",
    ":) :-( ;) :D <3 (: :'( ^_^ -_- :P :-) :))",
    "café naïve Ünïcödé 東京 Ελληνικά ΣΊΣΥΦΟΣ İstanbul straße ǅemal",
    "state-of-the-art 1950s-era 10-15 3.5/10 $5.99 50% 10pm 5km 1,000,000 -5 +3",
    "a/b#c\\d and/or w/o 9/10",
    "x" * 3000,
    "abc" * 1000,
    "Mr. Smith vs. Dr. Who etc. e.g. i.e. a.m. p.m. 5p.m. Jan. Inc.",
    "''quoted'' ``backticks'' back'' ''return",
    "end.Next sentence.And another,one",
    "multiple   spaces\tand\ttabs\r\nwindows\r\n",
    "\u00a0nbsp\u00a0char \u00a0 x",
    "\u3000ideographic\u3000space",
    "zero\u200bwidth joiner\u200d",
    "\x1c\x1d\x1e\x1f seps",
    "emoji 😀😀😀 👍 ❤️",
    "ALLCAPS! WORD, (CAPS) I A",
    "McDonald's iPhone DVDs O'Neil",
    "xxbos xxmaj xxup literal xxrep xxwrep xxunk xxpad",
    "o.O O.o 8) 8-)",
    "It's he's she's let's what's",
    "'Cause 'em 'bout y'all ma'am",
    "--- *** ___ === ~~~ ###",
    "1st 2nd 3rd 10th 1990's '90s",
    "(( )) [[ ]] {{ }}",
    "\" ' ` ´ ‘ ’ “ ” « »",
    "semi;colon:colon!bang?question",
    "10:30 5:1 1:2:3",
    "A-Team X-Men T-shirt e-mail",
    "ÀLL ÇAPS ÉTÉ",
    "a\n\nb\n \nc \n\n d",
    "trailing space ",
    " leading space",
    "nothing",
    ".",
    "!!!",
    "a.b.c.d",
    "$100 £50 €20 ¥1000",
    "°C 30°F 100°",
    "wanna' gonna\" 'tis",
    "no " * 111 + "!",
    "wow wow wow/wow wow wow #tag ha ha ha\\ha and/or AND/OR I/O Martín/Sálo a//b a///b",
]


# -- random texts made of pieces the rules and the splitter treat specially

_WORDS = [
    "the",
    "movie",
    "film",
    "I",
    "a",
    "it",
    "was",
    "Great",
    "BAD",
    "John",
    "McQueen",
    "don't",
    "can't",
    "it's",
    "U.S.",
    "e.g.",
    "etc.",
    "Mr.",
    "ok",
    "OK",
    "no",
    "Yes",
    "so",
    "SO",
    "café",
    "Ünï",
    "東京",
    "1950s",
    "10",
    "3.5",
    "2:1",
    "$5",
    "50%",
    "e-mail",
    "and/or",
    "w/o",
    "www.imdb.com",
    "http://a.b/c",
    "x@y.com",
    "gonna",
    "'s",
    "n't",
    "xxbos",
    "xxmaj",
    "Soooo",
    "!!!!",
    "???",
    "...",
    "..",
    "…",
    "-",
    "--",
    "—",
    "'",
    "''",
    '"',
    "(",
    ")",
    "[",
    "]",
    ":",
    ";",
    ",",
    ".",
    "!",
    "?",
    ":)",
    ":-(",
    ";)",
    "<3",
    "^_^",
    "-_-",
    "#1",
    "\\",
    "&amp;",
    "&quot;",
    "&#39;",
    "<br />",
    "nbsp;",
    "°",
    "8)",
    "o.O",
    "'em",
    "'Cause",
    "a.m.",
]
_SEPARATORS = [" ", " ", " ", " ", "", "  ", "\n", " \n ", "\n\n", "\t", "\u00a0", " - "]


def random_texts(n: int, seed: int = 0, max_pieces: int = 25) -> list[str]:
    """`n` reproducible texts glued from special pieces with odd separators."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(0, max_pieces)
        parts = []
        for _ in range(k):
            w = rng.choice(_WORDS)
            if rng.random() < 0.1:
                w = w * rng.randint(2, 4)
            if rng.random() < 0.1:
                w = w.upper()
            parts.append(w)
            parts.append(rng.choice(_SEPARATORS))
        out.append("".join(parts))
    return out


# -- random Unicode: code points from many scripts and symbol blocks, control characters,
# combining marks and emoji, glued to mutated copies of the texts above

_BLOCKS = [(0x20, 0x7E)] * 6 + [
    (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0x24F), (0x250, 0x36F), (0x370, 0x4FF), (0x590, 0x6FF),
    (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x214F), (0x2190, 0x22FF),
    (0x2500, 0x257F), (0x3000, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAC80), (0xFB00, 0xFB4F),
    (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF), (0x1F300, 0x1F64F),
    (0x1F900, 0x1F9FF), (0x10000, 0x1007F),
]  # fmt: skip
_INSERTS = [
    " ", "  ", "\n", "\t", "\r", "\u00a0", "\u2009", "\u200b", "xxbos", "xxmaj", "xxup", "xxrep",
    "xxwrep", "xxunk", "xxpad", "#39;", "&amp;", "<br />", "nbsp;", "@.@", "@-@", " @,@ ", "\\n",
    "quot;", "#146;", "<unk>", "&#8217;", "&nbsp;",
]  # fmt: skip


def unicode_texts(n: int, seed: int = 0) -> list[str]:
    """`n` reproducible texts: half random code points, half mutated tricky/random texts
    (characters inserted or replaced, runs upper-cased or repeated, special strings put in)."""
    rng = random.Random(seed)
    bases = TRICKY + random_texts(200, seed=seed + 1)

    def char() -> str:
        lo, hi = rng.choice(_BLOCKS)
        return chr(rng.randint(lo, hi))

    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(
                "".join(char() if rng.random() < 0.7 else " " for _ in range(rng.randint(0, 80)))
            )
            continue
        t = list(rng.choice(bases))
        for _ in range(rng.randint(1, 30)):
            op, p = rng.random(), rng.randrange(len(t) + 1)
            if op < 0.4:
                t.insert(p, char())
            elif op < 0.6 and t:
                t[min(p, len(t) - 1)] = char()
            elif op < 0.8 and t:
                q = min(len(t), p + rng.randint(1, 40))
                t[p:q] = list("".join(t[p:q]).upper())
            elif op < 0.9 and t:
                t[p:p] = [t[min(p, len(t) - 1)]] * rng.randint(2, 8)
            else:
                t[p:p] = list(rng.choice(_INSERTS))
        out.append("".join(t))
    return out
