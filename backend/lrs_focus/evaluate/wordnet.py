"""Offline WordNet 3.0 for the LRS-VQA synonym test, built from Debian's `wordnet-base`.

The official scorer calls `nltk.corpus.wordnet`, which normally needs a download. No machine here
reaches nltk's download server, so we assemble an `nltk_data/corpora/wordnet` folder from the
Debian package instead. Two gaps have to be filled:

* Debian ships no `lexnames` file (nltk's reader refuses to start without it); its content is
  fixed by the `lexnames(5WN)` man page, reproduced in `LEXNAMES` below.
* nltk 3.10 only opens corpora under its data directories, so the folder lives in a cache
  directory that we add to `nltk.data.path` (and to `NLTK_DATA` for child processes).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from ..errors import LrsFocusError

#: Where Debian's wordnet-base (and wordnet-sense-index for index.sense) install the database.
DEBIAN_WORDNET = Path("/usr/share/wordnet")

#: The 45 lexicographer files of WordNet 3.0, numbered from 00, as listed in lexnames(5WN).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
#: Syntactic category codes of lexnames(5WN): 1 noun, 2 verb, 3 adjective, 4 adverb.
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

#: Files nltk's WordNetCorpusReader opens (its _FILES, minus lexnames which we write).
_DATABASE_FILES = (
    "cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)


class WordNetUnavailable(LrsFocusError):
    code = "wordnet_unavailable"


def lexnames_text() -> str:
    """The `lexnames` file: number, file name and syntactic category, tab separated."""
    return "".join(
        f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)
    )


def default_data_dir() -> Path:
    """$LRS_FOCUS_CACHE/nltk_data, else ~/.cache/lrs-focus/nltk_data, else a per-user temp dir
    (CI runners with a read-only home)."""
    base = os.environ.get("LRS_FOCUS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lrs-focus"
    )
    candidate = Path(base) / "nltk_data"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return candidate
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"lrs-focus-{os.getuid()}" / "nltk_data"


def build_wordnet_corpus(data_dir: Path | None = None, source: Path = DEBIAN_WORDNET) -> Path:
    """Assemble `<data_dir>/corpora/wordnet` from `source` (idempotent); returns `data_dir`."""
    data_dir = Path(data_dir or default_data_dir())
    corpus = data_dir / "corpora" / "wordnet"
    missing = [name for name in _DATABASE_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetUnavailable(
            f"WordNet database files missing in {source}: {', '.join(missing)} "
            "(install Debian's wordnet-base and wordnet-sense-index)"
        )
    corpus.mkdir(parents=True, exist_ok=True)
    for name in _DATABASE_FILES:
        target = corpus / name
        src = source / name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            tmp = target.with_suffix(target.suffix + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)  # atomic: several ranks may build the same cache at once
    lexnames = corpus / "lexnames"
    if not lexnames.exists() or lexnames.read_text() != lexnames_text():
        tmp = corpus / "lexnames.tmp"
        tmp.write_text(lexnames_text())
        os.replace(tmp, lexnames)
    return data_dir


@functools.lru_cache(maxsize=4)
def load_wordnet(data_dir: str | None = None):
    """An nltk WordNetCorpusReader over the offline corpus (built on first use)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = build_wordnet_corpus(Path(data_dir) if data_dir else None)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ.setdefault("NLTK_DATA", str(root))
    corpus_root = nltk.data.find("corpora/wordnet")
    with warnings.catch_warnings():  # "multilingual functions are not available": English only
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(corpus_root, None)


def are_synonyms(word1: str, word2: str, wordnet=None) -> bool:
    """The official test: some synset pair of the two strings has path_similarity > 0.8."""
    wn = wordnet or load_wordnet()
    return _are_synonyms(wn, word1, word2)


@functools.lru_cache(maxsize=65536)
def _are_synonyms(wn, word1: str, word2: str) -> bool:
    synsets2 = wn.synsets(word2)
    for synset1 in wn.synsets(word1):
        for synset2 in synsets2:
            similarity = synset1.path_similarity(synset2)
            if similarity is not None and similarity > 0.8:
                return True
    return False
