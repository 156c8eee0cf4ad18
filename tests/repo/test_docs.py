"""The documents tell the truth about the code they describe.

- every `otel-worker ...` command line in a fenced code block of README.md or docs/*.md
  parses with the real argument parser (lines holding a placeholder written `<UPPER_CASE>`
  or `…` are skipped);
- every `make X` in code (fenced blocks and inline code) names a Makefile target;
- every relative link between the documents reaches a file (and a heading, for an anchor);
- the README's configuration table lists exactly the settings of `shared/config.py`, with
  their defaults;
- API.md's figures are what the engine computes (and tests/system/test_doc_examples.py runs
  the README's and API.md's shell examples against a running stack).
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from shared import config
from shared.cli import build_parser
from shared.dev.tracks import TrackSpec, generate
from shared.engine import analyze, day_window, read_range

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>|…")
OPERATORS = {"|", "||", "&&", ";", "&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is and its lines."""

    path: Path
    line: int
    info: str
    lines: tuple[str, ...]


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    opened: tuple[int, str, str, str] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        match = FENCE.match(line)
        if opened is None:
            if match:
                opened = (number, match["indent"], match["fence"], match["info"].strip())
                body = []
            continue
        start, indent, fence, info = opened
        closes = match is not None and not match["info"].strip()
        if closes and match["fence"][0] == fence[0] and len(match["fence"]) >= len(fence):
            blocks.append(Block(path, start, info, tuple(body)))
            opened = None
            continue
        body.append(line.removeprefix(indent))
    assert opened is None, f"{_relative(path)}:{opened[0]}: unclosed code block"
    return blocks


def prose(path: Path) -> str:
    """The text of a Markdown file outside its fenced code blocks."""
    kept: list[str] = []
    inside: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if inside is None and match:
            inside = match["fence"]
            continue
        if inside is not None:
            if match and match["fence"].startswith(inside[0]) and not match["info"].strip():
                inside = None
            continue
        kept.append(line)
    return "\n".join(kept)


def command_lines(block: Block) -> list[tuple[int, str]]:
    """Logical command lines of a block: continuations joined; in a console block only the
    lines after a `$ ` prompt (the others are output)."""
    console = block.info.split()[:1] == ["console"]
    result: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.lines, start=1):
        number = block.line + offset
        text = raw.strip()
        if pending is not None:
            start, joined = pending
            text = joined + " " + text
            number = start
        elif console:
            if not text.startswith("$ "):
                continue
            text = text[2:]
        if text.endswith("\\"):
            pending = (number, text[:-1].strip())
            continue
        pending = None
        result.append((number, text))
    return result


def segments(text: str) -> list[list[str]]:
    """The simple commands of a shell line (split at |, &&, ;), leading VAR=value removed."""
    words = shlex.split(text, comments=True)
    parts: list[list[str]] = [[]]
    for word in words:
        if word in OPERATORS:
            parts.append([])
        else:
            parts[-1].append(word)
    cleaned = []
    for part in parts:
        first = 0
        while first < len(part) and ASSIGNMENT.match(part[first]):
            first += 1
        if part[first:]:
            cleaned.append(part[first:])
    return cleaned


def cli_commands() -> list[tuple[str, list[str]]]:
    """Every `otel-worker` command in the documents' code blocks, with where it is."""
    found = []
    for path in DOCS:
        for block in code_blocks(path):
            for number, text in command_lines(block):
                if "otel-worker" not in text or PLACEHOLDER.search(text):
                    continue
                for words in segments(text):
                    if words[0] == "otel-worker" or words[0].endswith("/otel-worker"):
                        found.append((f"{_relative(path)}:{number}", words[1:]))
    return found


COMMANDS = cli_commands()


def test_the_documents_show_commands_to_check() -> None:
    assert len(COMMANDS) >= 20
    named = {words[0] for _, words in COMMANDS if words}
    assert {"submit", "status", "jobs", "migrate", "doctor", "seed", "analyze", "dev"} <= named


@pytest.mark.parametrize(("where", "arguments"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_otel_worker_commands_in_the_documents_parse(where: str, arguments: list[str]) -> None:
    try:
        build_parser().parse_args(arguments)
    except SystemExit as exc:
        if exc.code == 0:  # --help: printed, and fine
            return
        pytest.fail(f"{where}: `otel-worker {shlex.join(arguments)}` does not parse ({exc})")


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def make_mentions() -> list[tuple[str, str]]:
    """Every `make X` in code: fenced blocks and inline code spans."""
    found = []
    for path in DOCS:
        snippets = [
            (f"{_relative(path)}:{block.line}", line)
            for block in code_blocks(path)
            for line in block.lines
        ]
        snippets += [(_relative(path), match[2]) for match in INLINE_CODE.finditer(prose(path))]
        for where, snippet in snippets:
            for words in _make_words(snippet):
                rest = [w for w in words[1:] if not ASSIGNMENT.match(w) and not w.startswith("-")]
                if rest:
                    found.append((where, rest[0]))
    return found


def _make_words(snippet: str) -> list[list[str]]:
    text = snippet.strip().removeprefix("$ ")
    try:
        parts = segments(text)
    except ValueError:  # not shell (an unbalanced quote in prose or output)
        return []
    return [words for words in parts if words[0] == "make"]


def test_every_make_target_mentioned_exists() -> None:
    mentions = make_mentions()
    assert len(mentions) >= 10
    targets = makefile_targets()
    missing = sorted({f"{where}: make {name}" for where, name in mentions if name not in targets})
    assert not missing, "not Makefile targets:\n" + "\n".join(missing)


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, made as GitHub makes them."""
    headings = re.findall(r"^#{1,6} +(.+?) *#* *$", prose(path), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_reaches_a_file() -> None:
    broken = []
    checked = 0
    for path in DOCS:
        for target in LINK.findall(prose(path)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            checked += 1
            name, _, anchor = target.partition("#")
            file = (path.parent / name).resolve() if name else path
            if not file.is_file():
                broken.append(f"{_relative(path)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{_relative(path)}: {target} (no such heading)")
    assert checked >= 20
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_engine_md_is_gone_and_nothing_refers_to_it() -> None:
    assert not (ROOT / "docs" / "engine.md").exists()
    sources = [*DOCS, *(ROOT / "shared").glob("*.py"), ROOT / ".env.example"]
    referring = [_relative(p) for p in sources if "engine.md" in p.read_text(encoding="utf-8")]
    assert not referring


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def readme_settings() -> dict[str, str]:
    """variable -> default cell, from the tables of the README's Configuration section."""
    section = _section((ROOT / "README.md").read_text(encoding="utf-8"), "Configuration")
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            continue
        name = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        if name is None:
            continue
        assert name[1] not in rows, f"{name[1]} is listed twice"
        rows[name[1]] = cells[1].replace("`", "").replace(",", "")
    return rows


def _shown(value: object) -> str:
    """A default as the README writes it."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return value.get_secret_value() or "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def config_defaults() -> dict[str, str]:
    """variable -> its default as shown, from the first group that defines it."""
    defaults: dict[str, str] = {}
    for group in config.GROUPS.values():
        for name, field in group.model_fields.items():
            shown = "required" if field.is_required() else _shown(field.default)
            defaults.setdefault(name.upper(), shown)
    return defaults


def test_the_readme_configuration_table_lists_exactly_the_settings() -> None:
    listed = set(readme_settings())
    names = config.variable_names()
    assert listed == names, (
        f"missing from the README: {sorted(names - listed)}; not settings: {sorted(listed - names)}"
    )


def test_the_readme_configuration_table_shows_the_defaults() -> None:
    shown = readme_settings()
    wrong = {
        name: (shown[name], default)
        for name, default in config_defaults().items()
        if shown.get(name) != default
    }
    assert not wrong, f"README default vs config default: {wrong}"


# The data of DEVELOPMENT.md's recipe (`otel-worker seed --days 14 --devices 2`), on which
# API.md's examples were run: (device, day, figures the examples show).
_API_EXAMPLES = [
    ("phone1", "2024-03-12", ["2459 read, 102 used;", "Path          2855.808 km"]),
    ("phone1", "2024-03-13", ["path      16.107 km from 2883 fixes", '"path_km": 16.106680']),
    ("phone2", "2024-03-13", ['"pathKm": 27.053897', '"pointsUsed": "115"']),
]


@pytest.mark.parametrize(("device", "day", "shown"), _API_EXAMPLES)
def test_the_api_examples_show_what_the_engine_computes(
    device: str, day: str, shown: list[str]
) -> None:
    """API.md's outputs are recorded from a run; they go stale when the engine changes."""
    points = generate(TrackSpec(days=14, devices=2)).points
    params = config.AnalysisSettings().engine_params()
    window = day_window(dt.date.fromisoformat(day), dt.date.fromisoformat(day), "America/New_York")
    start, end = read_range(window, params)
    code = points.device_ids.index(device)
    rows = np.flatnonzero(
        (points.device == code) & (points.timestamp >= start) & (points.timestamp < end)
    )
    summary = analyze(points.take(rows), window, params).summary
    computed = {
        f"{summary.points.read} read, {summary.points.used} used;",
        f"Path          {summary.path_km:.3f} km",
        f"path      {summary.path_km:.3f} km from {summary.points.read} fixes",
        f'"path_km": {summary.path_km:.6f}',
        f'"pathKm": {summary.path_km:.6f}',
        f'"pointsUsed": "{summary.points.used}"',
    }
    text = (ROOT / "docs" / "API.md").read_text()
    for figure in shown:
        assert figure in computed, f"API.md shows {figure!r}; the engine computes {computed}"
        assert figure in text
