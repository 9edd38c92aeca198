"""Offline WordNet from Debian's wordnet-base, with the lexnames file we write."""

import gzip
import re
from pathlib import Path

import pytest

from lrs_focus.evaluate import wordnet

MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")


def test_lexnames_matches_the_man_page():
    """Our embedded table must equal the lexnames(5WN) listing (number and file name)."""
    if not MAN_PAGE.exists():
        pytest.skip("lexnames(5WN) man page not installed")
    text = gzip.open(MAN_PAGE, "rt").read()
    listed = re.findall(r"^(\d\d)\t(\S+)[ ]*\t", text, flags=re.M)
    assert len(listed) == 45
    ours = [line.split("\t") for line in wordnet.lexnames_text().splitlines()]
    assert [(n, name) for n, name, _ in ours] == listed
    assert {cat for _, name, cat in ours if name.startswith("noun.")} == {"1"}
    assert {cat for _, name, cat in ours if name.startswith("verb.")} == {"2"}
    assert {cat for _, name, cat in ours if name.startswith("adj.")} == {"3"}
    assert {cat for _, name, cat in ours if name.startswith("adv.")} == {"4"}


def test_build_and_synonyms(tmp_path):
    data_dir = wordnet.build_wordnet_corpus(tmp_path / "nltk_data")
    corpus = data_dir / "corpora" / "wordnet"
    assert (corpus / "lexnames").read_text() == wordnet.lexnames_text()
    assert (corpus / "data.noun").stat().st_size == (wordnet.DEBIAN_WORDNET / "data.noun").stat().st_size
    wn = wordnet.load_wordnet(str(data_dir))
    assert wn.get_version() == "3.0"
    assert wordnet.are_synonyms("grey", "gray", wn)
    assert wordnet.are_synonyms("2", "two", wn)
    assert wordnet.are_synonyms("car", "automobile", wn)
    assert not wordnet.are_synonyms("yes", "no", wn)
    assert not wordnet.are_synonyms("white", "", wn)
    # building again is a no-op that leaves a working corpus
    assert wordnet.build_wordnet_corpus(tmp_path / "nltk_data") == data_dir


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(wordnet.WordNetUnavailable, match="wordnet-base"):
        wordnet.build_wordnet_corpus(tmp_path / "d", source=tmp_path / "nowhere")
