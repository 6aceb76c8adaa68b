"""The demo's corpus: real English text that ships with every Python, split into passages.

Nothing is downloaded. The first source is the reference documentation pydoc shows for
`help('try')` and friends (`pydoc_data.topics`); the second is the docstrings of the standard
library's modules, classes and functions, read with `ast` from the source files (no module is
imported, so nothing runs). Passages are cut at paragraph boundaries to the size of a typical
RAG chunk, each with a title naming where it came from.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

CORPUS_VERSION = 1  # bump when the splitting or filtering changes: old caches are then ignored
MIN_CHARS = 200  # shorter pieces are merged with the next paragraph
MAX_CHARS = 1200  # a typical RAG chunk; longer paragraphs are cut at sentence ends
_PARAGRAPH = re.compile(r"\n\s*\n")
_UNDERLINE = re.compile(r"^([*=\-~^\"'#])\1{2,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ENGLISH_WORD = re.compile(r"[a-z]+")
_FUNCTION_WORDS = frozenset("the a an of to is and in for be that it this with or as are by if not on from which can "
                            "when".split())
# Packages whose docstrings are tests, GUIs or vendored code rather than documentation.
_SKIP_TOP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
             "dist-packages", "__pycache__", "venv", "pydoc_data"}


TOPICS = "the language reference pydoc ships (pydoc_data.topics)"
DOCSTRINGS = "standard-library docstrings"


@dataclass(frozen=True)
class Passage:
    title: str
    content: str
    source: str  # TOPICS or DOCSTRINGS


def passages(limit: int, cache_dir: Path | None = None) -> list[Passage]:
    """Up to `limit` prose passages: the pydoc topics first, then stdlib docstrings, in a stable order.

    Reading the docstrings means parsing a few hundred stdlib files (seconds on a busy machine);
    with `cache_dir` the result is kept there per Python version, so a rerun starts at once."""
    cache = cache_dir / f"demo-corpus-{CORPUS_VERSION}-py{sys.version_info[0]}.{sys.version_info[1]}.json" \
        if cache_dir else None
    cached = _read_cache(cache) if cache else None
    if cached is not None and (len(cached[0]) >= limit or cached[1]):
        return cached[0][:limit]
    out: list[Passage] = []
    seen: set[str] = set()
    for passage in _all_passages():
        if passage.content in seen or not is_prose(passage.content):
            continue
        seen.add(passage.content)
        out.append(passage)
        if len(out) >= limit:
            break
    if cache:
        _write_cache(cache, out, exhausted=len(out) < limit)
    return out


def _read_cache(path: Path) -> tuple[list[Passage], bool] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Passage(**p) for p in data["passages"]], bool(data["exhausted"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: build it again


def _write_cache(path: Path, items: list[Passage], *, exhausted: bool) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"exhausted": exhausted, "passages": [asdict(p) for p in items]}), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent demo reads the old file or the new one
    except OSError:
        pass  # a cache we cannot write only costs time


def is_prose(text: str) -> bool:
    """Sentences, not a code sample, a grammar rule or an ASCII table.

    A documentation RAG store chunks prose; code and tables are usually kept apart. They also
    make poor demo material: a stand-in embedding of `>>> f(x)` says little about anything."""
    words = _ENGLISH_WORD.findall(text.lower())
    if len(words) < 20 or ">>>" in text:
        return False
    return sum(w in _FUNCTION_WORDS for w in words) / len(words) >= 0.25


def _all_passages() -> Iterator[Passage]:
    yield from topic_passages()
    yield from docstring_passages()


def topic_passages() -> Iterator[Passage]:
    """The language reference pages pydoc ships, split at section headings and paragraphs."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the docstrings still suffice
        return
    for key in sorted(topics):
        page_title, section, paragraphs = key, None, []
        lines = topics[key].splitlines()
        i = 0
        body: list[str] = []
        sections: list[tuple[str | None, str]] = []
        while i < len(lines):
            line = lines[i]
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if line.strip() and _UNDERLINE.match(nxt) and len(nxt) >= len(line.strip()) - 2:
                sections.append((section, "\n".join(body)))
                body = []
                heading = line.strip().replace('"', "")
                if section is None and not sections[-1][1].strip():
                    page_title = heading  # the page's own title, e.g. 'The try statement'
                    section = ""
                else:
                    section = heading
                i += 2
                continue
            body.append(line)
            i += 1
        sections.append((section, "\n".join(body)))
        for heading, text in sections:
            paragraphs = [p.strip() for p in _PARAGRAPH.split(text) if p.strip()]
            title = f"{page_title} / {heading}" if heading else page_title
            for chunk in _chunks(paragraphs):
                yield Passage(title=title, content=chunk, source=TOPICS)


def docstring_passages() -> Iterator[Passage]:
    """Docstrings of the standard library's modules, classes and functions, read without importing."""
    for name, path in _stdlib_sources():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for title, doc in _docstrings(name, tree):
            paragraphs = [p.strip() for p in _PARAGRAPH.split(doc) if p.strip()]
            for chunk in _chunks(paragraphs):
                yield Passage(title=title, content=chunk, source=DOCSTRINGS)


def _stdlib_sources() -> Iterator[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        return
    for path in sorted(_walk(root)):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] not in sys.stdlib_module_names:
            continue
        yield ".".join(p for p in parts if p != "__init__"), path


def _walk(root: Path) -> Iterator[Path]:
    """The stdlib's .py files, without descending into site-packages, tests or private subpackages
    (site-packages alone can hold ten times more files than the stdlib)."""
    for directory, subdirs, files in os.walk(root):
        relative = Path(directory).relative_to(root).parts
        # Private top-level modules (_pydecimal, _pyio, _collections_abc) document public APIs;
        # private submodules and tests do not.
        subdirs[:] = sorted(d for d in subdirs if not (
            d in _SKIP_TOP or d.startswith("test") or (relative and d.startswith("_")) or "." in d or "-" in d))
        for name in files:
            if name.endswith(".py") and not name.startswith("test") and not (relative and name.startswith("_")
                                                                              and name != "__init__.py"):
                yield Path(directory) / name


def _docstrings(module: str, tree: ast.Module) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(tree)
    if doc:
        yield f"module {module}", doc
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS // 2:
                yield f"{module}.{node.name}", doc
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        doc = ast.get_docstring(item)
                        if doc and len(doc) >= MIN_CHARS // 2:
                            yield f"{module}.{node.name}.{item.name}", doc


def _chunks(paragraphs: list[str]) -> Iterator[str]:
    """Paragraphs merged into chunks of MIN..MAX characters; an over-long paragraph is cut at sentence
    ends; a short tail joins the chunk before it rather than standing alone."""
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        for piece in _split_long(paragraph):
            if current and len(current) + len(piece) + 2 > MAX_CHARS:
                chunks.append(current)
                current = ""
            current = f"{current}\n\n{piece}" if current else piece
            if len(current) >= MIN_CHARS * 2:
                chunks.append(current)
                current = ""
    if current:
        if chunks and len(current) < MIN_CHARS * 2 and len(chunks[-1]) + len(current) <= MAX_CHARS + MIN_CHARS * 2:
            chunks[-1] = f"{chunks[-1]}\n\n{current}"
        elif len(current) >= MIN_CHARS // 2:
            chunks.append(current)
    yield from chunks


def _split_long(paragraph: str) -> Iterator[str]:
    if len(paragraph) <= MAX_CHARS:
        yield paragraph
        return
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        if current and len(current) + len(sentence) + 1 > MAX_CHARS:
            yield current
            current = ""
        current = f"{current} {sentence}" if current else sentence
        while len(current) > MAX_CHARS:  # a grammar block or table with no sentence end
            yield current[:MAX_CHARS]
            current = current[MAX_CHARS:]
    if current:
        yield current
