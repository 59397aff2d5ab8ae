"""The documentation cites only what exists.

- README.md stays a guide: at most 250 lines.
- Every repository path cited in README.md, docs/*.md (not the generated reports), the comments and
  docstrings of recon_ft/, tests/ and the entry points, conf/*.yaml and scripts/ exists: files
  (`recon_ft/method/losses.py`, `conf/loss/joint.yaml`, `docs/zoo.md`), folders (`recon_ft/zoo/`),
  the folder part of a pattern (`recon_ft/zoo/shipped/<recipe>-<hash>/`), dotted module names
  (`recon_ft.zoo.families`, `recon_ft.data.score_caption`), top-level markdown files (README.md),
  relative markdown links and their #anchors, and quoted sections (`docs/zoo.md, "Other model
  families in the zoo"`).
- Every `python -m recon_ft...` command in README.md and docs/ names a runnable module, and each of
  its `--flags` is one the module defines.

Output paths (`outputs/...`, `multirun/...`, `~/.cache/recon_ft/...`) are not repository paths and
are not checked, nor is a study config's `docs:` line (the report its runs will write); neither are
`docs/...` names without an extension (an output folder such as `--docs docs/coco`). A page that walks through a made-up example (a family called `fam`) says so in
an HTML comment, `<!-- docs-check: example fam -->`; paths and names with a part `fam` (`fam.yaml`,
`tiny_fam.yaml`, `recon_ft.models.fam`) are then not checked on that page.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Written by the study and the pairs study, never by hand.
GENERATED = {"docs/study.md", "docs/pairs.md"}
ROOTS = ("recon_ft", "conf", "docs", "scripts", "tests")
# A repository path: starts at one of ROOTS, not inside another path (`~/.cache/recon_ft/zoo`), a
# dotted name or a word (`my_docs/x`).
PATH = re.compile(r"(?<![\w./~$-])((?:%s)/[\w./-]*)" % "|".join(ROOTS))
PLACEHOLDER = "<{*[$"
DOTTED = re.compile(r"(?<![\w./-])recon_ft(?:\.\w+)+")
TOP_MD = re.compile(r"(?<![\w./-])([A-Z][A-Z_]*\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SECTION = re.compile(r"(docs/[\w./-]+\.md|README(?:\.md)?),?[\s#]*\"([^\"]+)\"")
COMMAND = re.compile(r"python -m (recon_ft[\w.]*)")
EXAMPLE = re.compile(r"<!--\s*docs-check:\s*example\s+([\w ]+?)\s*-->")


# ------------------------------------------------------------------------------------ sources


def markdown_files() -> list[Path]:
    docs = [p for p in sorted((ROOT / "docs").glob("*.md")) if rel(p) not in GENERATED]
    return [ROOT / "README.md", *docs]


def python_files() -> list[Path]:
    files = [p for p in sorted((ROOT / "recon_ft").rglob("*.py")) if "shipped" not in p.parts]
    files += [p for p in sorted((ROOT / "tests").glob("*.py")) if p.name != Path(__file__).name]
    return files + [ROOT / "train.py", ROOT / "eval.py"]


def other_files() -> list[Path]:
    return sorted((ROOT / "conf").rglob("*.yaml")) + sorted(p for p in (ROOT / "scripts").iterdir() if p.is_file())


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def prose(path: Path) -> str:
    """The text of a file that may cite paths: a Python file's comments and docstrings, else all."""
    text = path.read_text()
    if path.parent.name == "study" and path.suffix == ".yaml":  # a study config: its report is an output
        return re.sub(r"(?m)^docs:.*$", "", text)
    if path.suffix != ".py":
        return text
    parts = [tok.string.lstrip("#") for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def all_sources() -> list[tuple[Path, str]]:
    return [(p, prose(p)) for p in markdown_files() + python_files() + other_files()]


def is_example(cited: str, text: str) -> bool:
    """Whether `cited` names a made-up example that its page declares (see the module docstring)."""
    examples = {name for names in EXAMPLE.findall(text) for name in names.split()}
    return bool(examples) and bool(examples & set(re.split(r"[/._]", cited)))


def lines_of(text: str, needle: str) -> str:
    return ", ".join(str(i + 1) for i, line in enumerate(text.splitlines()) if needle in line) or "?"


# ------------------------------------------------------------------------------------ checks


def missing_path(cited: str, following: str) -> str | None:
    """Why `cited` (followed in the text by `following`) names nothing in the repository, or None."""
    path = cited.rstrip(".")  # a sentence's full stop
    if following[:1] in PLACEHOLDER or path.endswith(("-", "_")):
        # a pattern: recon_ft/zoo/shipped/<recipe>-<hash>/, conf/{captioner,generator}/zoo_<f>.yaml
        folder = path.rsplit("/", 1)[0] + "/"
        return None if (ROOT / folder).is_dir() else f"{folder} (the folder of a pattern)"
    target = ROOT / path
    if path.endswith("/"):
        return None if target.is_dir() else path
    has_suffix = "." in path.rsplit("/", 1)[-1]
    if not has_suffix and path.split("/")[0] not in ("recon_ft", "conf"):
        return None  # docs/coco, tests/<...>: an output folder or a name, not a cited file
    return None if target.exists() else path


def module_path(dotted: str) -> tuple[Path | None, list[str]]:
    """The file of the longest module prefix of `dotted` and the names after it."""
    parts = dotted.split(".")
    where, found, i = ROOT, None, 0
    for i, part in enumerate(parts):
        if (where / part / "__init__.py").exists():
            where = where / part
            found = where / "__init__.py"
        elif (where / f"{part}.py").exists():
            return where / f"{part}.py", parts[i + 1 :]
        else:
            return found, parts[i:]
    return found, []


def defined_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def missing_dotted(dotted: str) -> str | None:
    path, rest = module_path(dotted.rstrip("."))
    if path is None:
        return dotted
    if rest and rest[0] not in defined_names(path):
        return f"{dotted} ({rel(path)} defines no {rest[0]!r})"
    return None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append(line.lstrip("#").strip().replace("`", ""))
    return out


def missing_link(source: Path, link: str) -> str | None:
    if re.match(r"[a-z]+:", link) or link.startswith("#") and source.suffix != ".md":
        return None  # https:, mailto:
    file, _, anchor = link.partition("#")
    target = (source.parent / file).resolve() if file else source
    if not target.exists():
        return link
    if anchor and target.suffix == ".md" and anchor not in {slug(h) for h in headings(target)}:
        return f"{link} (no such section)"
    return None


def module_for_command(name: str) -> Path | None:
    """The file `python -m name` runs, or None."""
    base = ROOT / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__main__.py").is_file():
        return base / "__main__.py"
    return None


def command_flags(text: str) -> list[tuple[str, list[str]]]:
    """(module, flags) of every `python -m recon_ft...` command line in a markdown text (a backslash
    continues the line; a `#` starts a comment)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        for match in COMMAND.finditer(line):
            rest = line[match.end():].split("#", 1)[0].split("`", 1)[0]
            out.append((match.group(1), re.findall(r"(?<!\S)(--[\w-]+)", rest)))
    return out


# ------------------------------------------------------------------------------------ tests


def test_readme_is_a_guide_of_at_most_250_lines():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 250, f"README.md has {n} lines; move reference material into docs/"


def test_every_cited_path_exists():
    bad = []
    for path, text in all_sources():
        for match in PATH.finditer(text):
            why = missing_path(match.group(1), text[match.end():match.end() + 1])
            if why and not is_example(match.group(1), text):
                bad.append(f"{rel(path)}: {why}")
        for name in set(TOP_MD.findall(text)):
            if not (ROOT / name).exists():
                bad.append(f"{rel(path)}: {name}")
    assert not bad, "cited paths that do not exist:\n" + "\n".join(sorted(set(bad)))


def test_every_dotted_module_name_resolves():
    bad = []
    for path, text in all_sources():
        for match in DOTTED.finditer(text):
            why = missing_dotted(match.group(0))
            if why and not is_example(match.group(0), text):
                bad.append(f"{rel(path)}: {why}")
    assert not bad, "recon_ft.<...> names that name nothing:\n" + "\n".join(sorted(set(bad)))


def test_markdown_links_and_sections_resolve():
    bad = []
    for path in markdown_files():
        text = path.read_text()
        for link in LINK.findall(text):
            why = missing_link(path, link)
            if why:
                bad.append(f"{rel(path)} (line {lines_of(text, link)}): {why}")
    for path, text in all_sources():
        for doc, section in SECTION.findall(text):
            doc, section = ("README.md" if doc == "README" else doc), " ".join(section.split())
            if (ROOT / doc).exists() and not any(h.startswith(section) for h in headings(ROOT / doc)):
                bad.append(f'{rel(path)}: {doc} has no section "{section}"')
    assert not bad, "links or sections that do not resolve:\n" + "\n".join(sorted(set(bad)))


def test_every_python_m_command_runs_a_module_with_those_flags():
    bad = []
    for path in markdown_files():
        for name, flags in command_flags(path.read_text()):
            module = module_for_command(name)
            if module is None:
                bad.append(f"{rel(path)}: python -m {name} (no {name.replace('.', '/')}.py or __main__.py)")
                continue
            source = module.read_text()
            ast.parse(source, str(module))  # importable: it parses
            if module.name != "__main__.py" and "__name__ == \"__main__\"" not in source:
                bad.append(f"{rel(path)}: python -m {name} ({rel(module)} does nothing when run)")
            # flags are defined in the module or, for a package, in any of its files
            files = list(module.parent.glob("*.py")) if module.name == "__main__.py" else [module]
            defined = "".join(f.read_text() for f in files)
            bad += [f"{rel(path)}: python -m {name} {flag} (not an option of {rel(module)})"
                    for flag in flags if flag != "--help" and f'"{flag}"' not in defined]
    assert not bad, "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("cited, following, ok", [
    ("recon_ft/method/losses.py", " ", True),
    ("recon_ft/method/no_such_module.py", " ", False),
    ("recon_ft/zoo/", " ", True),
    ("recon_ft/nowhere/", " ", False),
    ("recon_ft/zoo/shipped/", "<", True),
    ("conf/captioner/zoo_", "<", True),
    ("conf/nowhere/zoo_", "<", False),
    ("docs/coco", " ", True),
    ("docs/no_such_page.md", ")", False),
    ("tests/test_layers.py.", " ", True),
])
def test_the_path_checker_itself(cited, following, ok):
    assert (missing_path(cited, following) is None) == ok


def test_the_path_pattern_skips_output_and_cache_paths():
    text = "outputs/train/<run>, ~/.cache/recon_ft/zoo/x, $OUT/recon_ft/y, my_docs/z.md; see docs/zoo.md."
    assert [m.group(1) for m in PATH.finditer(text)] == ["docs/zoo.md."]


def test_a_declared_example_is_not_checked():
    page = "<!-- docs-check: example fam -->\nSee conf/captioner/tiny_fam.yaml and recon_ft.models.fam."
    assert is_example("conf/captioner/tiny_fam.yaml", page) and is_example("recon_ft.models.fam", page)
    assert not is_example("conf/captioner/family.yaml", page)
    assert not is_example("conf/captioner/tiny_fam.yaml", page.split("\n", 1)[1])
