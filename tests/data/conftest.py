"""Fixtures for the data tests (helpers live in imdb_fakes.py: conftest is not importable)."""

import pytest
from imdb_fakes import make_imdb


@pytest.fixture
def tiny_imdb(tmp_path):
    root = tmp_path / "aclImdb"
    return root, make_imdb(root)
