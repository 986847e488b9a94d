#!/usr/bin/env python3
"""Build the default calibration text data/calib/mix-v1.txt from its recorded sources.

The mix interleaves six genres of English text (fiction, drama, verse, technical
documentation, source code, expository prose), each taken from the start of one
public-domain or permissively licensed work.  Standard library only.

How the text is made (all of it fixed here, so the output is byte for byte the same):

  1. Each source file is checked against its recorded sha256 and decoded as UTF-8.
     Line endings become LF and trailing spaces/tabs are removed from every line.
  2. The part used starts at a recorded start line (after the Project Gutenberg header,
     title-page credits and any table of contents) and must end before a recorded end
     line (the Project Gutenberg footer); leading and trailing blank lines are dropped.
     A source made of several files (the Rust book chapters) joins its parts with one
     blank line.
  3. The part is cut into blocks of about BLOCK_CHARS characters at paragraph
     (blank-line) boundaries: paragraphs are added to a block until it holds at least
     BLOCK_CHARS characters, finishing the paragraph that crosses the mark.  A paragraph
     longer than BLOCK_CHARS on its own is added line by line instead, so the block
     closes at the first line end past the mark.  Blank lines inside a block are kept as
     in the source.  The first BLOCKS_PER_GENRE blocks of each source are used.
  4. Blocks are emitted round-robin in genre order (fiction 1, drama 1, verse 1,
     technical 1, code 1, expository 1, fiction 2, ...), separated by one blank line,
     and the file ends with one LF.  Any prefix of the file therefore covers every genre
     about equally.

Usage:
    python3 scripts/make_calib_mix.py SOURCES_DIR [-o data/calib/mix-v1.txt] [--stats]

SOURCES_DIR holds the eight source files under the names listed by --help.  The script
writes the mix, then compares its sha256 with OUTPUT_SHA256 and exits non-zero if it
differs.  data/calib/README.md records provenance, licences and token counts.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

BLOCK_CHARS = 2000
BLOCKS_PER_GENRE = 24
OUTPUT_SHA256 = "fc0c4c7ba5a891e2ed9de072ffd4b942b6f5a8ae4255a1ecdd8d767022271089"
OUTPUT_BYTES = 321600

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "data" / "calib" / "mix-v1.txt"


@dataclass(frozen=True)
class Part:
    name: str  # file name inside SOURCES_DIR
    sha256: str  # of the file exactly as downloaded
    origin: str  # where the file comes from, byte for byte
    start: str  # first line used (exact match after LF / trailing-space normalisation)
    end: str | None  # the text used must end before this line (None: end of file)


@dataclass(frozen=True)
class Source:
    genre: str
    work: str
    author: str
    licence: str
    parts: tuple[Part, ...]


GITENBERG = "GitHub repository {repo}, commit {commit}, path {path} (Project Gutenberg eBook #{ebook})"

SOURCES: tuple[Source, ...] = (
    Source(
        genre="fiction",
        work="The Adventures of Sherlock Holmes",
        author="Arthur Conan Doyle (1892)",
        licence="public domain",
        parts=(
            Part(
                name="1661.txt",
                sha256="2a0ce5568625a304f54fbb6bfdeeadf527a1437254b5f0e06b5a9e233d4784a2",
                origin=GITENBERG.format(
                    repo="GITenberg/The-Adventures-of-Sherlock-Holmes_1661",
                    commit="7e5dd2703fbf503c004063e96ab7c61262375e5f",
                    path="1661.txt",
                    ebook=1661,
                ),
                start="ADVENTURE I. A SCANDAL IN BOHEMIA",
                end="*** END OF THIS PROJECT GUTENBERG EBOOK THE ADVENTURES OF SHERLOCK HOLMES ***",
            ),
        ),
    ),
    Source(
        genre="drama",
        work="The Importance of Being Earnest",
        author="Oscar Wilde (1895)",
        licence="public domain",
        parts=(
            Part(
                name="844.txt",
                sha256="06c4d158cee503dfbb099f18dec5dce89290636e3524be08127fb6c6c80ca570",
                origin=GITENBERG.format(
                    repo="GITenberg/The-Importance-of-Being-Earnest--A-Trivial-Comedy-for-Serious-People_844",
                    commit="61f653818ec74dda8cffc09970c32316264998ea",
                    path="844.txt",
                    ebook=844,
                ),
                start="The Importance of Being Earnest",
                end="***END OF THE PROJECT GUTENBERG EBOOK THE IMPORTANCE OF BEING EARNEST***",
            ),
        ),
    ),
    Source(
        genre="verse",
        work="Lyrical Ballads, with a Few Other Poems (1798)",
        author="William Wordsworth and Samuel Taylor Coleridge",
        licence="public domain",
        parts=(
            Part(
                name="9622.txt",
                sha256="d329235e67a5ce25947da7c4cad604053c0afe643350cd34f82ec7f5937e819f",
                origin=GITENBERG.format(
                    repo="GITenberg/Lyrical-Ballads-With-a-Few-Other-Poems--1798-_9622",
                    commit="6424fb6e922b2030c1ad28194c86b79dd0f3ed46",
                    path="9622.txt",
                    ebook=9622,
                ),
                start="THE RIME OF THE ANCYENT MARINERE,",
                end="*** END OF THIS PROJECT GUTENBERG EBOOK LYRICAL BALLADS 1798 ***",
            ),
        ),
    ),
    Source(
        genre="technical",
        work="The Rust Programming Language (No Starch edition sources: chapters 0-2)",
        author="Steve Klabnik, Carol Nichols, Chris Krycho and the Rust community",
        licence="MIT OR Apache-2.0 (Copyright (c) 2010 The Rust Project Developers)",
        parts=tuple(
            Part(
                name=f"chapter0{n}.md",
                sha256=sha,
                origin=(
                    "GitHub repository rust-lang/book, commit "
                    f"917544888a55e4da7109bdba8c88c893c0da70f4, path nostarch/chapter0{n}.md"
                ),
                start=start,
                end=None,
            )
            for n, sha, start in (
                (0, "925335f230e023507dd2ff7d76605bc8b015f3578b41d3a586c10925537dc260", "# Introduction"),
                (1, "186d820251bd5579432b47cee4559f510db6a9ed144beb30f90ad557c04e0181", "# Getting Started"),
                (2, "51ecbb38b1a181f7ef4fa01c8ad6c94d6698e1c5e1b4b62fa73ede0eb92e801d", "# Programming a Guessing Game"),
            )
        ),
    ),
    Source(
        genre="code",
        work="CPython 3.11.2 standard library, Lib/dataclasses.py",
        author="Eric V. Smith and the CPython developers",
        licence="PSF License Version 2 (Copyright (c) 2001-2023 Python Software Foundation)",
        parts=(
            Part(
                name="dataclasses.py",
                sha256="2b43fbb6faa846bd01d682911953e02a9e43a764c85e687bce0c006d8e30ff9a",
                origin=(
                    "Debian package libpython3.11-stdlib 3.11.2-6+deb12u8 (bookworm, amd64; .deb sha256 "
                    "890b3540dad8a1ccc0deeca025db735bcc82629a76adacbe3b50fcc06ed528ca), file "
                    "./usr/lib/python3.11/dataclasses.py: `apt-get download "
                    "libpython3.11-stdlib=3.11.2-6+deb12u8 && dpkg-deb --fsys-tarfile "
                    "libpython3.11-stdlib_3.11.2-6+deb12u8_amd64.deb | tar -xO "
                    "./usr/lib/python3.11/dataclasses.py > dataclasses.py`"
                ),
                start="import re",
                end=None,
            ),
        ),
    ),
    Source(
        genre="expository",
        work="The Federalist Papers (from No. 1)",
        author="Alexander Hamilton, James Madison and John Jay (1787-1788)",
        licence="public domain",
        parts=(
            Part(
                name="1404.txt",
                sha256="64dd04d805964a7c8f946072fcc8ba11d01613c8e6faf908511a28930dcb28e1",
                origin=GITENBERG.format(
                    repo="GITenberg/The-Federalist-Papers_1404",
                    commit="7effe9c7518aa38e80f23664419a3e28b7993127",
                    path="1404.txt",
                    ebook=1404,
                ),
                start="FEDERALIST No. 1",
                end="*** END OF THIS PROJECT GUTENBERG EBOOK THE FEDERALIST PAPERS ***",
            ),
        ),
    ),
)


class SourceError(Exception):
    pass


def read_part(sources_dir: Path, part: Part) -> list[tuple[int, str]]:
    """The used lines of one source file as (1-based source line number, text)."""
    path = sources_dir / part.name
    if not path.is_file():
        raise SourceError(f"missing source file {path}\n  get it from: {part.origin}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != part.sha256:
        raise SourceError(
            f"sha256 mismatch for {path}\n  expected {part.sha256}\n  got      {digest}\n"
            f"  the recorded file is: {part.origin}"
        )
    text = data.decode("utf-8").replace("\r\n", "\n")
    if "\r" in text:
        raise SourceError(f"{path}: stray carriage return")
    lines = [line.rstrip(" \t") for line in text.split("\n")]
    try:
        first = lines.index(part.start)
    except ValueError:
        raise SourceError(f"{path}: start line {part.start!r} not found") from None
    last = len(lines)
    if part.end is not None:
        try:
            last = lines.index(part.end, first)
        except ValueError:
            raise SourceError(f"{path}: end line {part.end!r} not found") from None
    used = [(i + 1, lines[i]) for i in range(first, last)]
    while used and not used[-1][1]:
        used.pop()
    return used


Line = tuple[tuple[str, int], str]  # ((file name, source line number), text); blank: (("", 0), "")


def paragraphs(lines: list[Line]) -> list[tuple[int, list[Line]]]:
    """Split into (blank lines before it, paragraph lines); leading blanks are dropped."""
    out: list[tuple[int, list[Line]]] = []
    gap = 0
    cur: list[Line] = []
    for key, line in lines:
        if line:
            cur.append((key, line))
            continue
        if cur:
            out.append((gap, cur))
            cur, gap = [], 0
        gap += 1
    if cur:
        out.append((gap, cur))
    if out:
        out[0] = (0, out[0][1])
    return out


@dataclass(frozen=True)
class Block:
    genre: str
    index: int  # 0-based within its genre
    text: str
    first: tuple[str, int]  # (file name, source line) of the block's first line
    last: tuple[str, int]  # (file name, source line) of the block's last line


def source_blocks(sources_dir: Path, source: Source) -> list[Block]:
    """The first BLOCKS_PER_GENRE blocks of one source."""
    tagged: list[Line] = []
    for k, part in enumerate(source.parts):
        if k:
            tagged.append((("", 0), ""))
        tagged.extend(((part.name, num), line) for num, line in read_part(sources_dir, part))
    paras = paragraphs(tagged)

    blocks: list[Block] = []
    cur: list[Line] = []
    cur_len = 0  # len("\n".join(texts of cur))

    def add(key: tuple[str, int], line: str) -> None:
        nonlocal cur_len
        cur_len += len(line) + (1 if cur else 0)
        cur.append((key, line))

    def close() -> None:
        nonlocal cur, cur_len
        text = "\n".join(line for _, line in cur)
        keyed = [key for key, line in cur if line]
        blocks.append(Block(source.genre, len(blocks), text, keyed[0], keyed[-1]))
        cur, cur_len = [], 0

    for gap, para in paras:
        if len(blocks) == BLOCKS_PER_GENRE:
            break
        if cur:
            for _ in range(gap):
                add(("", 0), "")
        para_len = sum(len(line) for _, line in para) + len(para) - 1
        if para_len <= BLOCK_CHARS:
            for key, line in para:
                add(key, line)
            if cur_len >= BLOCK_CHARS:
                close()
        else:
            for key, line in para:
                if len(blocks) == BLOCKS_PER_GENRE:
                    break
                add(key, line)
                if cur_len >= BLOCK_CHARS:
                    close()
    if len(blocks) < BLOCKS_PER_GENRE:
        raise SourceError(
            f"{source.genre}: only {len(blocks)} full blocks before the end line, "
            f"{BLOCKS_PER_GENRE} needed"
        )
    return blocks[:BLOCKS_PER_GENRE]


def build_blocks(sources_dir: Path) -> list[Block]:
    """All blocks in output order (round-robin over SOURCES)."""
    per_source = [source_blocks(sources_dir, s) for s in SOURCES]
    return [blocks[i] for i in range(BLOCKS_PER_GENRE) for blocks in per_source]


def build_text(sources_dir: Path) -> str:
    return "\n\n".join(b.text for b in build_blocks(sources_dir)) + "\n"


def describe_sources() -> str:
    lines = [
        "Sources (put each file in SOURCES_DIR under the name given; the sha256 is of the file",
        "exactly as downloaded, e.g. the raw file of that GitHub commit):",
        "",
    ]
    for s in SOURCES:
        lines.append(f"{s.genre}: {s.work} -- {s.author}; licence: {s.licence}")
        for p in s.parts:
            lines.append(f"  {p.name}  sha256 {p.sha256}")
            lines.append(f"    from {p.origin}")
            end = f", ending before the line {p.end!r}" if p.end else ""
            lines.append(f"    used from the line {p.start!r}{end}")
        lines.append("")
    lines.append(
        f"Output: {BLOCKS_PER_GENRE} blocks of >= {BLOCK_CHARS} characters per genre, "
        f"round-robin; sha256 {OUTPUT_SHA256}, {OUTPUT_BYTES} bytes."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Build the calibration text mix-v1.txt from downloaded source files "
        "and check it against the recorded sha256.",
        epilog=describe_sources(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("sources_dir", type=Path, help="directory holding the source files")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                    help=f"where to write the mix (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    ap.add_argument("--stats", action="store_true",
                    help="also print, per genre, the characters used and the source lines taken")
    args = ap.parse_args(argv)

    try:
        blocks = build_blocks(args.sources_dir)
    except SourceError as e:
        print(f"make_calib_mix: error: {e}", file=sys.stderr)
        return 2
    data = ("\n\n".join(b.text for b in blocks) + "\n").encode("utf-8")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    if args.stats:
        for s in SOURCES:
            own = [b for b in blocks if b.genre == s.genre]
            chars = sum(len(b.text) for b in own)
            (f0, l0), (f1, l1) = own[0].first, own[-1].last
            print(f"{s.genre:11s} {len(own)} blocks, {chars} chars, "
                  f"{f0}:{l0} .. {f1}:{l1}")
    print(f"wrote {args.output} ({len(data)} bytes, sha256 {digest})")
    if digest != OUTPUT_SHA256:
        print(f"make_calib_mix: error: output sha256 {digest} != recorded {OUTPUT_SHA256}",
              file=sys.stderr)
        return 1
    print("sha256 matches the recorded one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
