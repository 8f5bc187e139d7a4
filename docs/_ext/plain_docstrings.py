"""specae's docstrings are plain text: an indented block under a sentence is a table of shapes, an equation or a
code example, laid out by hand. reStructuredText would read it as a block quote or a definition list and reflow
(or reject) it; this extension makes each such block a literal block, the layout kept as written.

Running text is escaped where rst would read plain-text notation as markup: `|x|` (a substitution), `a * b`
(emphasis), `names_` (a link target); `code` in backticks stays code (conf.py's default role).

An indented block is one whose lines are indented deeper than the plain-text line above it (or than the paragraph
before a blank line); lines under a list item, a field (`:param x:` from napoleon) or a directive are rst's own
continuation lines and are left alone. A list gets the blank lines rst needs around it.
"""

import re

BULLETS = ("- ", "* ", "+ ")
RST_OPENERS = BULLETS + (":", "..", ">>>")
CODE = re.compile(r"(`[^`]+`)")
MARKUP = re.compile(r"[|*]|(?<=\w)_(?!\w)")


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def is_plain(line: str) -> bool:
    """A line of running text, not one that opens an rst construct of its own."""
    text = line.strip()
    return bool(text) and not text.startswith(RST_OPENERS) and not text.rstrip(".").isdigit()


def escaped(line: str) -> str:
    """`line` of running text with rst's inline markup characters escaped outside `code`; a `code` span followed
    by a letter (`summarise`d) is closed with an escaped space, which rst drops."""
    text = line.lstrip()
    if text.startswith((":", "..")):   # napoleon's fields and directives are rst already
        return line
    head = len(line) - len(text) + (2 if text.startswith(BULLETS) else 0)   # a list item's bullet
    parts = CODE.split(line[head:])
    return line[:head] + "".join(p + ("\\ " if i + 1 < len(parts) and parts[i + 1][:1].isalnum() else "") if i % 2
                   else MARKUP.sub(lambda m: "\\" + m.group(), p) for i, p in enumerate(parts))


def literal_blocks(lines: list[str]) -> list[str]:
    """`lines` (a docstring, dedented as autodoc gives it) with each hand-laid indented block made literal."""
    out: list[str] = []
    literal_base = None       # indentation of the text that opened the current literal block
    last = None               # index in `out` of the last non-blank line outside a literal block
    list_indent = None        # indentation of the bullets of the current list
    for line in lines:
        if literal_base is not None:
            if not line.strip() or indent(line) > literal_base:
                out.append(line)
                continue
            if out[-1].strip():
                out.append("")   # a literal block ends at a blank line
            literal_base = None
        if line.strip() and last is not None and is_plain(out[last]) and indent(line) > indent(out[last]):
            opener = out[last].rstrip()
            if not opener.endswith("::"):
                out[last] = opener + (":" if opener.endswith(":") else " ::")   # "text ::" shows no colon
            if out[-1].strip():
                out.append("")
            literal_base = indent(out[last])
            out.append(line)
            continue
        if line.strip():
            bullet = line.lstrip().startswith(BULLETS)
            if list_indent is not None and indent(line) <= list_indent and not bullet:
                list_indent = None       # the list ends
                if out[-1].strip():
                    out.append("")
            elif bullet and list_indent is None:
                list_indent = indent(line)
                if out and out[-1].strip():
                    out.append("")
        out.append(escaped(line))
        if line.strip():
            last = len(out) - 1
    return out


def process(app, what, name, obj, options, lines):
    lines[:] = literal_blocks(lines)


def setup(app):
    # after napoleon (priority 500), so that its field lists are rst by the time they are read here
    app.connect("autodoc-process-docstring", process, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
