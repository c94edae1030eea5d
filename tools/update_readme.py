"""Rewrite the course map in README.md from ``minimoe.course.CHAPTERS`` (run by ``make release``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from minimoe.course import course_map

START, END = "<!-- course-map:start -->", "<!-- course-map:end -->"


def updated(text: str, root: Path) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{course_map(root)}\n{END}", text)


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = updated(text, root)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print("README.md: course map updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
