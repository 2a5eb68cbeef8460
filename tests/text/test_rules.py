"""fastulm.text.rules, rule by rule, against fastai's own rule functions."""

import pytest
from tricky import TRICKY, random_texts

from fastulm.text import rules

RULE_NAMES = [
    "fix_html",
    "replace_rep",
    "replace_wrep",
    "spec_add_spaces",
    "rm_useless_spaces",
    "replace_all_caps",
    "replace_maj",
    "lowercase",
    "replace_space",
]
TEXTS = TRICKY + random_texts(300, seed=1)


@pytest.mark.reference
def test_special_tokens_match_fastai(fastai_text):
    assert fastai_text.defaults.text_spec_tok == rules.SPECIAL_TOKENS


@pytest.mark.reference
@pytest.mark.parametrize("name", RULE_NAMES)
def test_rule_matches_fastai(fastai_text, name):
    ours, theirs = getattr(rules, name), getattr(fastai_text, name)
    for text in TEXTS:
        assert ours(text) == theirs(text), (name, text)


@pytest.mark.reference
def test_rules_in_order_match_fastai(fastai_text):
    assert [r.__name__ for r in rules.RULES] == [
        r.__name__ for r in fastai_text.defaults.text_proc_rules
    ]
    for text in TEXTS:
        expected = text
        for rule in fastai_text.defaults.text_proc_rules:
            expected = rule(expected)
        assert rules.apply_rules(text) == expected, text


@pytest.mark.parametrize(
    "text,expected",
    [
        ("&amp;", "&&"),  # fastai's quirk: 'amp;' -> '&' before html.unescape
        ("a<br />b", "a\nb"),
        ("wait...", "wait …"),
    ],
)
def test_fix_html_quirks(text, expected):
    assert rules.fix_html(text) == expected


def test_caps_and_maj_only_whitespace_delimited():
    assert rules.replace_all_caps("(HELLO) HELLO") == "(HELLO) xxup hello"
    assert rules.replace_maj("(John) John I") == "(John) xxmaj john i"


def test_lowercase_adds_bos_and_strips():
    assert rules.lowercase("  Hi\n") == "xxbos hi"
    assert rules.apply_rules("") == "xxbos "
