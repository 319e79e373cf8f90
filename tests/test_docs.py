"""The design contract lives in the repository (docs/architecture.md): no tracked file points outside it, and
every reference to one of its sections (the file name, then the quoted `##` heading) names one that exists."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# Built by concatenation so that this file does not match itself.
OUTSIDE_REFERENCES = [".." + "/shared", "DESIGN" + ".md", "DESIGN" + " §"]
SECTION_REFERENCE = re.compile("docs/architecture" + r"\.md,?\s+\"([^\"\n]+)\"")


def tracked_text_files() -> dict[str, str]:
    """path -> text of every file git tracks (binary files left out)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    texts = {}
    for name in filter(None, listing.decode().split("\0")):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet in the index
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def headings(markdown: str) -> set[str]:
    return {line[3:].strip() for line in markdown.splitlines() if line.startswith("## ")}


def outside_references(texts: dict[str, str]) -> list[str]:
    return [f"{name}:{_line_of(text, text.find(ref))}: {ref}"
            for name, text in texts.items() for ref in OUTSIDE_REFERENCES if ref in text]


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def dangling_section_references(texts: dict[str, str], sections: set[str]) -> list[str]:
    return [f"{name}: \"{m.group(1)}\"" for name, text in texts.items()
            for m in SECTION_REFERENCE.finditer(text) if m.group(1) not in sections]


def test_no_tracked_file_refers_to_the_folder_beside_the_repo():
    texts = tracked_text_files()
    texts.pop(str(Path(__file__).relative_to(ROOT)), None)
    assert "README.md" in texts and "docs/architecture.md" in texts
    assert outside_references(texts) == []


def test_every_architecture_section_reference_exists():
    texts = tracked_text_files()
    sections = headings(ARCHITECTURE.read_text())
    assert {"Product", "Layers", "Op registry", "Export artifact", "Graph I/O", "Correctness"} <= sections
    references = [m.group(1) for text in texts.values() for m in SECTION_REFERENCE.finditer(text)]
    assert len(references) >= 5, "the code's references to docs/architecture.md sections were not found"
    assert dangling_section_references(texts, sections) == []


def test_the_checks_catch_what_they_look_for():
    """Both checks fail on a bad reference (so the tests above can fail)."""
    bad = {"x.py": "see " + ".." + "/sha" + "red/notes and " + "docs/architecture" + '.md "No Such Section"'}
    assert outside_references(bad) == ["x.py:1: " + ".." + "/shared"]
    assert dangling_section_references(bad, headings("## Product\n")) == ["x.py: \"No Such Section\""]
