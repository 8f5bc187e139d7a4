"""The CLI reference, rendered from the parsers themselves (`specae.cli.build_parser()`), so that the docs cannot
drift from the commands: the directive

    ```{specae-cli}
    ```

writes one section per subcommand (nested ones, `specae gan train`, under their group): its one-line help, its
description, its usage and each argument with its help text.
"""

import argparse

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each direct subcommand of `parser`, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def argument_item(parser: argparse.ArgumentParser, action: argparse.Action) -> nodes.definition_list_item:
    """One argument: its flags (or its name, for a positional one) and metavar as the term, its help below, with
    its %(...)s fields filled in as --help fills them (the defaults the config dataclasses state)."""
    if action.option_strings:
        metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
        if action.choices is not None and action.metavar is None and action.nargs != 0:
            metavar = " {" + ",".join(map(str, action.choices)) + "}"
        term = ", ".join(action.option_strings) + metavar
    else:
        term = action.metavar or action.dest
    item = nodes.definition_list_item()
    item += nodes.term(text=term)
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    item += nodes.definition("", nodes.paragraph(text=text))
    return item


def command_section(document, name: str, summary: str, parser: argparse.ArgumentParser) -> nodes.section:
    """The section of one command (its subcommands nested inside)."""
    section = nodes.section(ids=[nodes.make_id(name)], names=[nodes.fully_normalize_name(name)])
    document.note_implicit_target(section)
    section += nodes.title(text=name)
    for text in (summary, parser.description or ""):
        for paragraph in filter(None, (p.strip() for p in text.split("\n\n"))):
            section += nodes.paragraph(text=paragraph)
    section += nodes.literal_block(text=parser.format_usage().strip())
    arguments = [a for a in parser._actions
                 if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if arguments:
        section += nodes.definition_list("", *(argument_item(parser, a) for a in arguments))
    for sub_name, sub_summary, sub in subcommands(parser):
        section += command_section(document, f"{name} {sub_name}", sub_summary, sub)
    return section


class CLIReference(SphinxDirective):
    """The `specae-cli` directive: every subcommand of `specae.cli.build_parser()`."""

    def run(self):
        from specae.cli import build_parser

        return [command_section(self.state.document, f"specae {name}", summary, sub)
                for name, summary, sub in subcommands(build_parser())]


def setup(app):
    app.add_directive("specae-cli", CLIReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
