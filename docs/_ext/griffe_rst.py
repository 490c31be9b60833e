"""Griffe extension: render flatjax's reST-flavoured numpy docstrings as Markdown.

flatjax's docstrings use a few reStructuredText constructs (numpy-doc style, as in
BlackJAX and JAX) that mkdocstrings would otherwise print verbatim. Before rendering,
this extension rewrites every docstring of the package:

* ``.. math::`` blocks become ``$$ ... $$`` (wrapped in ``aligned`` when they use
  ``&``) and ``:math:`x``` becomes ``$x$`` (rendered by ``pymdownx.arithmatex``);
* ``:func:``, ``:class:``, ``:mod:``, ``:data:``, ``:meth:``, ``:attr:``, ``:exc:``
  and ``:obj:`` roles become cross-references when they name a flatjax object
  (qualified, or relative to the docstring's module/class), and inline code
  otherwise (BlackJAX, JAX and optax objects). A qualified ``flatjax.*`` target is
  always emitted as a cross-reference, so that a reference to something that does not
  exist makes ``mkdocs build --strict`` fail;
* reST definition lists outside numpy sections (``term`` followed by an indented
  description) become Markdown definition lists, and a paragraph ending in ``::``
  ends in ``:`` (the indented literal block after it is already a code block).

Loaded from ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|mod|data|meth|attr|exc|obj|const):`([~!]?)([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
HEADER_RULE = re.compile(r"^\s*-{3,}\s*$")
# numpy sections griffe parses itself (their entries are not definition lists to rewrite)
STRUCTURED_SECTIONS = {
    "parameters",
    "other parameters",
    "returns",
    "yields",
    "receives",
    "raises",
    "warns",
    "attributes",
    "functions",
    "methods",
    "classes",
    "modules",
    "examples",
    "see also",
}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        base, first = len(match.group(1)), match.group(2).strip()
        body = [first] if first else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i])
            i += 1
        content = [b for b in body if b.strip()]
        cut = min((_indent(b) for b in content), default=0)
        content = [b[cut:] for b in content]
        pad = " " * base
        aligned = any("&" in b for b in content)
        out.append(pad + "$$")
        if aligned:
            out.append(pad + r"\begin{aligned}")
        out.extend(pad + b for b in content)
        if aligned:
            out.append(pad + r"\end{aligned}")
        out.append(pad + "$$")
        out.append("")
    return out


def _is_term(line: str, nxt: str) -> bool:
    """reST: a definition term is a line followed directly by a more indented one."""
    return bool(
        line.strip()
        and nxt.strip()
        and _indent(nxt) >= _indent(line) + 2
        and not line.lstrip().startswith((">>>", "...", "* ", "- ", "$$", ":   ", "\\"))
        and not line.rstrip().endswith("::")
        and not re.match(r"^\s*\d+\.\s", line)
    )


def _definition_lists(lines: list[str]) -> list[str]:
    out: list[str] = []
    structured = False
    after_definition = False
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and HEADER_RULE.match(nxt):
            structured = line.strip().lower() in STRUCTURED_SECTIONS
            out += [line, nxt]
            after_definition = False
            i += 2
            continue
        prev_blank = not out or not out[-1].strip()
        if not structured and (prev_blank or after_definition) and _is_term(line, nxt):
            body_indent = _indent(nxt)
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) >= body_indent):
                j += 1
            if out and out[-1].strip():
                out.append("")
            out.append(line)
            out += _as_definition(lines[i + 1 : j], body_indent, _indent(line))
            trailing_blank = j > i + 1 and not lines[j - 1].strip()
            if trailing_blank:
                out.append("")
            after_definition = True
            i = j
            continue
        if line.strip():
            after_definition = False
        out.append(line)
        i += 1
    return out


def _as_definition(body: list[str], body_indent: int, term_indent: int) -> list[str]:
    pad = " " * term_indent
    result = []
    for k, line in enumerate(body):
        text = line[body_indent:] if line.strip() else ""
        if k == 0:
            result.append(pad + ":   " + text)
        else:
            result.append((pad + "    " + text) if text else "")
    while result and not result[-1].strip():
        result.pop()
    return result


def _is_flax_module(base: Any) -> bool:
    path = getattr(base, "canonical_path", str(base))
    return path in {"flax.linen.Module", "flax.linen.module.Module", "nn.Module"}


def _literal_markers(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        stripped = line.rstrip()
        if stripped.endswith("::") and not stripped.lstrip().startswith(".."):
            line = stripped[:-1] if stripped[:-2].strip() else ""
        out.append(line)
    return out


class RstToMarkdown(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Called once the whole package is loaded: rewrite every docstring in it."""
        self._package = pkg
        self._visit(pkg, seen=set())

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        """Give Flax Linen modules the ``__init__`` their dataclass transform creates.

        Static analysis cannot see it, so the fields documented under "Parameters"
        would be reported as unknown parameters.
        """
        if "__init__" in cls.members or not any(_is_flax_module(base) for base in cls.bases):
            return
        fields = [
            griffe.Parameter(
                member.name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=member.value,
            )
            for member in cls.members.values()
            if member.is_attribute and member.annotation is not None
        ]
        implicit = [
            griffe.Parameter(name, kind=griffe.ParameterKind.keyword_only, default="None")
            for name in ("parent", "name")
        ]
        self_param = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
        init = griffe.Function(
            "__init__",
            lineno=cls.lineno,
            endlineno=cls.lineno,
            parent=cls,
            parameters=griffe.Parameters(self_param, *fields, *implicit),
            returns="None",
        )
        cls.set_member("__init__", init)

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = self._convert(obj.docstring.value, obj)
        for member in obj.members.values():
            if member.is_alias:
                continue
            self._visit(member, seen)

    def _resolve(self, name: str, obj: griffe.Object) -> str | None:
        if name.startswith("flatjax.") or name == "flatjax":
            return name
        head = name.split(".")[0]
        scope: griffe.Object | None = obj
        while scope is not None:
            if head in scope.members:
                member = scope.members[head]
                if member.is_alias:
                    try:
                        target = member.final_target.path
                    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                        return None
                    if not target.startswith("flatjax"):
                        return None
                    return target + name[len(head) :]
                return f"{scope.path}.{name}"
            scope = scope.parent
        return None

    def _role(self, match: re.Match, obj: griffe.Object) -> str:
        prefix, name = match.group(2), match.group(3).strip()
        title = name.split(".")[-1] if prefix == "~" else name
        target = self._resolve(name, obj)
        if target is None:
            return f"`{title}`"
        return f"[`{title}`][{target}]"

    def _convert(self, text: str, obj: griffe.Object) -> str:
        lines = text.splitlines()
        lines = _math_blocks(lines)
        lines = _definition_lists(lines)
        lines = _literal_markers(lines)
        text = "\n".join(lines)
        text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
        return ROLE.sub(lambda m: self._role(m, obj), text)
