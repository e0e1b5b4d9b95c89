"""Workload templates: the shipped TOML files in this folder, an operator's own
folder, loading with validation, and placeholder rendering."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gameplane.errors import NotFound, TemplateError
from gameplane.templates.model import PLACEHOLDER, Template

SHIPPED_DIR = Path(__file__).resolve().parent
_VALUE_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def _describe(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{where}: {msg}")
    return out


def parse_template(text: str, source: str = "<string>") -> Template:
    """Parse and validate one template; every problem is a ``TemplateError``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(details={"source": source, "problems": [f"TOML: {exc}"]}) from exc
    try:
        return Template.model_validate(data)
    except ValidationError as exc:
        raise TemplateError(details={"source": source, "problems": _describe(exc)}) from exc


def search_path(extra: Iterable[Path] = ()) -> list[Path]:
    """Operator folders first, so an operator can override a shipped template."""
    return [*extra, SHIPPED_DIR]


def load_template(name_or_path: str, dirs: Iterable[Path] = ()) -> Template:
    """Load a template by name (``freeciv``) from the search path, or by file path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or "/" in name_or_path:
        if not candidate.is_file():
            raise NotFound("template_not_found", {"template": name_or_path})
        return parse_template(candidate.read_text(), str(candidate))
    for folder in search_path(dirs):
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return parse_template(path.read_text(), str(path))
    raise NotFound("template_not_found", {"template": name_or_path})


def list_templates(dirs: Iterable[Path] = ()) -> dict[str, Template]:
    """Every valid template on the search path by name (operator folders win)."""
    found: dict[str, Template] = {}
    for folder in reversed(search_path(dirs)):
        for path in sorted(folder.glob("*.toml")):
            template = parse_template(path.read_text(), str(path))
            found[template.name] = template
    return found


@dataclass(frozen=True)
class Rendering:
    """The values an instance gives a template's placeholders."""

    data: str
    ports: Mapping[str, int]
    variables: Mapping[str, str]

    def render(self, text: str, escape: Callable[[str], str] = str) -> str:
        def value(match: re.Match[str]) -> str:
            kind, _, name = match.group(1).partition(".")
            if kind == "data":
                return escape(self.data)
            if kind == "port":
                return escape(str(self.ports[name]))
            return escape(self.variables[name])

        return PLACEHOLDER.sub(value, text)


def resolve_variables(template: Template, given: Mapping[str, str]) -> dict[str, str]:
    """Merge an instance's variables with the template's defaults, refusing
    unknown names, missing required values and control characters (a newline
    in a value would inject lines into a rendered config file)."""
    unknown = sorted(set(given) - set(template.variables))
    if unknown:
        raise TemplateError("invalid_variables", {"unknown": unknown})
    values: dict[str, str] = {}
    missing = []
    for name, spec in template.variables.items():
        value = given.get(name, spec.default)
        if value is None:
            missing.append(name)
            continue
        if _VALUE_FORBIDDEN.search(value):
            raise TemplateError("invalid_variables", {"variable": name, "problem": "control character"})
        values[name] = value
    if missing:
        raise TemplateError("invalid_variables", {"missing": missing})
    return values
