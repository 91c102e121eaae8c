"""The English text corpus that feature activations are collected on (offline, pinned).

The packaged corpus is the Wikipedia sample that ships inside the ``gensim`` wheel
(``gensim==4.4.0``, installed with ``--no-deps``: only this data file is read, gensim itself
is never imported): 206 English Wikipedia articles of a 2017 dump, 6.1 MB of wikitext
(text: CC BY-SA 3.0; the gensim package: LGPL-2.1). Its sha256 is checked before use.
:func:`clean_wikitext` turns the markup into plain paragraphs (about 2.5 MB of prose).

Users can give their own plain-text file instead (paragraphs separated by blank lines).
"""

from __future__ import annotations

import bz2
import hashlib
import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

WIKI_PACKAGE = "gensim"
WIKI_VERSION = "4.4.0"
WIKI_FILE = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
MIN_PARAGRAPH_CHARS = 80


@dataclass(frozen=True)
class Document:
    """One corpus document: an id (article title or file:paragraph) and its plain text."""

    id: str
    text: str


def packaged_corpus_path() -> Path:
    """Path of the packaged Wikipedia sample inside the installed gensim wheel (sha256 checked)."""
    try:
        dist = metadata.distribution(WIKI_PACKAGE)
    except metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"the packaged corpus needs the PyPI package {WIKI_PACKAGE}=={WIKI_VERSION} "
            "(installed with --no-deps by `make setup`), or set features.corpus_file"
        ) from err
    path = Path(dist.locate_file(WIKI_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus file missing; reinstall {WIKI_PACKAGE}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WIKI_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest} differs from the pinned {WIKI_SHA256}; install "
            f"{WIKI_PACKAGE}=={WIKI_VERSION}"
        )
    return path


_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<[^>]+>")
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]")
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_EXT_LINK = re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+$")
_SPACES = re.compile(r"[ \t]+")


def clean_wikitext(text: str) -> list[str]:
    """Plain-prose paragraphs of one article's wikitext: references, templates, tables, files,
    comments and tags removed; links replaced by their text; list, table and heading lines and
    paragraphs shorter than MIN_PARAGRAPH_CHARS dropped."""
    text = html.unescape(text)
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _TABLE.sub("", text)
    for _ in range(5):  # nested templates, innermost first
        text, n = _TEMPLATE.subn("", text)
        if not n:
            break
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    paragraphs = []
    for block in text.split("\n\n"):
        lines = [
            line.strip()
            for line in block.splitlines()
            if line.strip()
            and not line.lstrip().startswith(("*", "#", "|", "!", "{", "}", ":", ";"))
            and not _HEADING.match(line.strip())
        ]
        para = _SPACES.sub(" ", " ".join(lines)).strip()
        if len(para) >= MIN_PARAGRAPH_CHARS and "{{" not in para and "}}" not in para:
            paragraphs.append(para.replace(" ,", ",").replace("()", "").replace("  ", " "))
    return paragraphs


def wiki_documents(path: str | Path) -> list[Document]:
    """One document per paragraph of every article of a bz2 MediaWiki XML dump, in file order."""
    docs = []
    with bz2.open(path, "rb") as fh:
        title = None
        for _, elem in ET.iterparse(fh, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = elem.text or ""
            elif tag == "text":
                wikitext = elem.text or ""
                if not wikitext.lstrip().lower().startswith("#redirect"):
                    for i, para in enumerate(clean_wikitext(wikitext)):
                        docs.append(Document(f"{title}#{i}", para))
            elif tag == "page":
                elem.clear()
    return docs


def text_file_documents(path: str | Path) -> list[Document]:
    """One document per blank-line-separated paragraph of a UTF-8 text file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    docs = [Document(f"{path.name}#{i}", p) for i, p in enumerate(paras) if p]
    if not docs:
        raise ValueError(f"{path}: no text (expected paragraphs separated by blank lines)")
    return docs


def corpus_documents(corpus_file: str | Path | None = None) -> list[Document]:
    """The user's text file when given, otherwise the packaged Wikipedia sample."""
    if corpus_file:
        return text_file_documents(corpus_file)
    return wiki_documents(packaged_corpus_path())
