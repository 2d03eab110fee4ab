"""docs/: the config reference is generated from kdtune/config.py and current, every key is in
it, and what the pages link to and tell you to run exists."""

import dataclasses
import re
from pathlib import Path

import pytest

from kdtune import config as C
from kdtune import reference
from kdtune.cli import main
from kdtune.config import _f

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/tutorial.md", "docs/reference.md", "docs/dashboard.md"]
SUBCOMMANDS = ("trial", "sweep", "validate", "dashboard", "export", "bench")


def test_reference_is_current():
    committed = (ROOT / reference.REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == reference.reference_markdown(), \
        "docs/reference.md is out of date with kdtune/config.py: run `make docs`"


def test_every_config_key_is_in_the_reference_with_a_doc():
    keys = reference.all_keys()
    assert {"data.root", "kd.alpha", "prune.ratio", "seed", "cache_dir", "search.log_to",
            "search.asha.grace_period", "search.resources.gpu",
            "search.space.KEY.type"} <= set(keys)
    text = (ROOT / reference.REFERENCE_PATH).read_text(encoding="utf-8")
    assert [k for k in keys if f"| `{k}` |" not in text] == []
    fields = (reference.fields_of(C.TrialConfig) + reference.fields_of(C.SearchConfig, "search.")
              + reference.fields_of(C.ParamSpec, "search.space.KEY."))
    assert [k for k, f, _ in fields if not f.metadata.get("doc")] == [], \
        "give these fields a doc= in kdtune/config.py"


@dataclasses.dataclass
class _Inner:
    depth: int = _f(3, ge=1, le=9, doc="inner")


@dataclasses.dataclass
class _Toy:
    mode: str | bool = _f("auto", choices=lambda: ("auto", True), doc="a | b <x>")
    ratio: float = _f(0.5, ge=0, lt=1, doc="r")
    tags: list = _f(["a"], doc="t")
    n: int | None = _f(None, gt=0)
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_table_rows_come_from_the_field_metadata():
    rows = reference.fields_of(_Toy, "toy.")
    assert [k for k, _, _ in rows] == ["toy.mode", "toy.ratio", "toy.tags", "toy.n",
                                       "toy.inner.depth"]
    assert reference.table(rows).splitlines()[2:] == [
        "| `toy.mode` | string or bool | `auto` | `auto`, `true` | a \\| b &lt;x> |",
        "| `toy.ratio` | float | `0.5` | `>= 0` and `< 1` | r |",
        "| `toy.tags` | list | `[a]` | — | t |",
        "| `toy.n` | int or null | `null` | `> 0` |  |",
        "| `toy.inner.depth` | int | `3` | `>= 1` and `<= 9` | inner |",
    ]


def test_reference_rows_of_real_keys():
    text = reference.reference_markdown()
    assert ("| `kd.alpha` | float | `0.9` | `>= 0` and `<= 1` | weight of the teacher's "
            "logit term") in text
    assert "| `search.objectives` | mapping | `{val_acc: max}` | keys: `val_acc`," in text
    for target in C.LOG_TARGETS:
        assert f"`{target}`" in text.split("| `search.log_to` |")[1].splitlines()[0]


def test_regenerating_writes_the_same_page(tmp_path, capsys):
    out = tmp_path / "sub" / "reference.md"
    assert reference.main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == reference.reference_markdown()
    assert capsys.readouterr().out.strip() == str(out)
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs:.*\n\t\$\(BIN\)/python -m kdtune\.reference docs/reference\.md$",
                     make, re.M)


# --- links and commands ---------------------------------------------------------------------

def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return h.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _strip_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            s = _slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def test_slug_is_githubs():
    assert _slug("Teacher cache: why `views`") == "teacher-cache-why-views"
    assert _slug("Sweep: `search:`") == "sweep-search"
    assert _slug("7. Export it to ONNX and load it") == "7-export-it-to-onnx-and-load-it"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    src = ROOT / page
    links = re.findall(r"\]\(([^)\s]+)\)", _strip_fences(src.read_text(encoding="utf-8")))
    for target in links:
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (src.parent / path).resolve() if path else src
        assert dest.exists(), f"{page}: {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page}: {target}: no such heading"


def _code(text: str) -> list[str]:
    """Lines of fenced blocks and inline code spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", _strip_fences(text))
    # a comment after a command is prose ("# installs kdtune into .venv")
    return [line.split(" #")[0] for b in blocks for line in b.splitlines()] + spans


def _help(sub: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([sub, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("page", ["docs/tutorial.md", "docs/dashboard.md"])
def test_commands_in_the_pages_exist(page, capsys):
    text = (ROOT / page).read_text(encoding="utf-8")
    code = _code(text)
    used: dict[str, set[str]] = {}
    for line in code:
        for sub, rest in re.findall(r"(?:^|[\s/])kdtune ([a-z]+)([^|]*)", line):
            used.setdefault(sub, set()).update(re.findall(r"(--[a-z][a-z-]*)", rest))
    assert used, f"{page}: no kdtune command found"
    for sub, options in used.items():
        assert sub in SUBCOMMANDS, f"{page}: kdtune {sub}: no such command"
        helptext = _help(sub, capsys)
        assert [o for o in sorted(options) if o not in helptext] == [], f"kdtune {sub}"
    make = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", make, re.M))
    for line in code:
        for target, args in re.findall(r"\bmake ([a-z]+)((?: [A-Z]+=\S*)*)", line):
            assert target in targets, f"{page}: make {target}"
            for var in re.findall(r"([A-Z]+)=", args):
                assert re.search(rf"\$\({var}\)", make), f"{page}: make {var}="
    for name in set(re.findall(r"\bsweeps/[\w.-]+\.yaml", text)):
        assert (ROOT / name).is_file(), f"{page}: {name}"
