"""Builds data/sample.parquet from "The Rust Programming Language" book (MIT OR Apache-2.0).

The book ships with the Rust toolchain's rust-docs component as HTML. Each row is one paragraph
or list item with the chapter and section it sits under.

    python3 data/make_sample.py "$(dirname "$(rustup doc --path)")/book" data/sample.parquet
"""
import html.parser
import pathlib
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq


class Book(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.chapter, self.section = [], "", ""
        self.in_main, self.tag, self.buf, self.skip = False, None, [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.tag, self.buf = "title", []
        if tag == "main":
            self.in_main = True
        if not self.in_main:
            return
        if tag in ("pre", "script", "style"):
            self.skip += 1
        if tag in ("h1", "h2", "h3", "p", "li") and self.tag is None and not self.skip:
            self.tag, self.buf = tag, []

    def handle_endtag(self, tag):
        if tag == "main":
            self.in_main = False
        if tag in ("pre", "script", "style") and self.skip:
            self.skip -= 1
        if tag == self.tag:
            text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
            if tag == "title":
                self.chapter = text.split(" - ")[0]
            elif tag == "h1":
                self.section = text
            elif tag in ("h2", "h3"):
                self.section = text
            elif len(text) >= 40:
                self.rows.append((self.chapter, self.section, text))
            self.tag = None

    def handle_data(self, data):
        if self.tag and (not self.skip or self.tag == "title"):
            self.buf.append(data)


def main(book_dir, out):
    ids, chapters, sections, bodies, urls = [], [], [], [], []
    pages = sorted(pathlib.Path(book_dir).glob("ch*.html")) + sorted(pathlib.Path(book_dir).glob("appendix-*.html"))
    for page in pages:
        parser = Book()
        parser.feed(page.read_text(encoding="utf-8"))
        for n, (chapter, section, body) in enumerate(parser.rows):
            ids.append(f"{page.stem}-{n:03d}")
            chapters.append(chapter)
            sections.append(section)
            bodies.append(body)
            urls.append(f"https://doc.rust-lang.org/book/{page.name}")
    table = pa.table({"id": ids, "chapter": chapters, "section": sections, "body": bodies, "url": urls})
    pq.write_table(table, out, compression="zstd", row_group_size=1024)
    print(f"{out}: {table.num_rows} rows from {len(pages)} pages")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
