"""Safe, bounded YAML reading for everything the project reads as YAML.

Only safe loading is used; aliases are refused outright (a few lines of nested
aliases expand to gigabytes and a recursive one never ends) and the number of
values is bounded, so a hostile or mistaken file is one clear line, at once and
in bounded memory.  Errors name the file and the line.
"""

import yaml

from cln_textgen.errors import UserError

# A config is a few dozen keys: these bounds are far above any real one.
MAX_YAML_NODES = 10_000
MAX_YAML_BYTES = 1 << 20


def short(value, limit=80, quote=True):
    """``repr(value)`` (or the text itself, ``quote=False``) on one line and cut
    to ``limit`` characters, for messages: a value may be a megabyte long."""
    text = repr(value) if quote else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and documents of more than MAX_YAML_NODES nodes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed; write the value out",
                event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_YAML_NODES} values; a config is much smaller",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _yaml_error(e, source):
    mark = getattr(e, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return UserError(f"{source}{line}: invalid YAML ({short(problem, 200, quote=False)})")


def _compose(text, source):
    """The YAML node tree and its Python value, or one-line errors."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source}: {len(text)} characters; a config is much smaller (is this "
                        "the right file?)")
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply; a config is a few levels deep") from None
    finally:
        loader.dispose()
    return node, data


def yaml_data(text, source):
    """Safe, bounded YAML loading for everything the project reads as YAML."""
    return _compose(text, source)[1]



def yaml_with_lines(text, path):
    """``(data, {dotted key: line})`` of a YAML mapping (``{}, {}`` when empty)."""
    node, data = _compose(text, path)
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}: the top level must be a mapping of config keys")
    lines = {}

    def walk(mapping, prefix):
        for key_node, value_node in mapping.value:
            key = prefix + str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, key + ".")

    walk(node, "")
    return data, lines
