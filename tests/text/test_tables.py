"""The shipped spaCy table is what scripts/gen_spacy_tables.py makes from the installed spaCy."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.reference
def test_generator_reproduces_shipped_table(fastai_text):
    pytest.importorskip("spacy")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_spacy_tables.py"), "--stdout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shipped = (REPO / "fastulm" / "text" / "spacy_tables.py").read_text(encoding="utf-8")
    assert out == shipped


def test_table_is_plain_data():
    from fastulm.text import spacy_tables as t

    assert t.TOKEN_MATCH_PATTERN is None or isinstance(t.TOKEN_MATCH_PATTERN, str)
    for key, pieces in t.SPECIAL_CASES.items():
        assert "".join(pieces) == key
