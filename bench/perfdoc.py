"""docs/performance.md is written by several benchmarks, each owning the text between its
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers; this replaces one such section."""
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def write_section(name, body, doc=DOC):
    """Replaces section `name` of `doc` with `body` (the lines between the markers), or appends it."""
    doc = Path(doc)
    text = doc.read_text() if doc.exists() else "# Performance\n"
    open_, close = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = body if body.endswith("\n") else body + "\n"
    section = f"{open_}\n{body}{close}"
    a, b = text.find(open_), text.find(close)
    if a >= 0 and b > a:
        text = text[:a] + section + text[b + len(close):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
