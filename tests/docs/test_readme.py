"""The root README stays short, runs the same test command as CI, and links only to files that exist."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"
# the READMEs beside the code that the root README links to; their links are checked too
DOCS = [README] + [REPO / p for p in ("qk_train/README.md", "export/README.md", "runtime/README.md",
                                      "runtime/cpp/README.md", "runtime/serve/README.md", "runtime/web/README.md",
                                      "benchmarks/README.md")]
MAX_LINES = 300
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)


def _ci_test_command() -> str:
    lines = [ln.strip() for ln in CI.read_text().splitlines() if "python -m pytest" in ln]
    assert len(lines) == 1, f"{CI} should run the tests in exactly one line; found {lines}"
    return lines[0]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", path.read_text(), re.M)}


def test_the_readme_runs_the_tests_exactly_as_ci_does():
    ci = _ci_test_command()
    in_readme = [ln.strip() for ln in README.read_text().splitlines() if "python -m pytest" in ln]
    assert in_readme, "README.md no longer shows the command that runs the tests"
    for line in in_readme:
        assert line == ci, f"README.md's test command differs from {CI.relative_to(REPO)}:\n  README: {line}\n  CI:     {ci}"


def test_the_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n < MAX_LINES, f"README.md has {n} lines; keep it under {MAX_LINES} and move details to the READMEs beside the code"


def test_every_relative_link_points_to_an_existing_file():
    missing = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            where = f"{doc.relative_to(REPO)}: ({target})"
            if not dest.exists():
                missing.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                missing.append(f"{where}: no heading with anchor #{anchor}")
    assert not missing, "broken links:\n" + "\n".join(missing)


def test_the_readme_links_to_the_docs_beside_the_code():
    linked = {t.partition("#")[0] for t in LINK.findall(README.read_text())}
    for doc in DOCS[1:]:
        assert str(doc.relative_to(REPO)) in linked, f"README.md does not link to {doc.relative_to(REPO)}"
