"""Pages the docs site generates from the code at build time (mkdocs-gen-files), so they cannot go stale: the
command reference from each command's own ``--help``, the config groups from ``conf/``, and the measured results
from ``experiments/results/`` with their pictures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def helped(*command: str) -> str:
    """What ``lookalike COMMAND --help`` prints (its own process: each command answers --help at once)."""
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", *command, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"lookalike {' '.join(command)} --help failed: {done.stderr[-2000:]}")
    return done.stdout.rstrip()


def sub_commands(text: str) -> list[str]:
    """The sub-commands an argparse usage names (``{build,add,...}``)."""
    found = re.search(r"\{([\w,-]+)\}", text)
    return found.group(1).split(",") if found else []


def cli_reference() -> str:
    from lookalike.cli import COMMANDS

    out = ["# Commands\n", "Every `lookalike` command, as its own `--help` says (generated when the site is built). "
           "`lookalike train` takes the same Hydra overrides as `python train.py`, and `lookalike evaluate` those of "
           "`conf/eval.yaml`: see [config groups](config-groups.md).\n"]
    for command in COMMANDS:
        text = helped(command)
        out += [f"## lookalike {command}\n", "```text", text, "```\n"]
        for sub in sub_commands(text.split("\n\n")[0]):
            out += [f"### lookalike {command} {sub}\n", "```text", helped(command, sub), "```\n"]
    return "\n".join(out)


def config_reference() -> str:
    conf = ROOT / "conf"
    out = ["# Config groups\n", "Every config group under `conf/` and each of its options, as the files say "
           "(generated when the site is built). Pick an option with `group=option` on the command line "
           "(`python train.py model=resnet50 loss=multi_similarity`), a key with `group.key=value`.\n"]
    for top in sorted(conf.glob("*.yaml")):
        out += [f"## {top.name}\n", "```yaml", top.read_text().rstrip(), "```\n"]
    for group in sorted(p for p in conf.iterdir() if p.is_dir()):
        out.append(f"## {group.name}/\n")
        for option in sorted(group.rglob("*.yaml")):
            name = option.relative_to(group).with_suffix("").as_posix()
            out += [f"### {group.name}={name}\n", "```yaml", option.read_text().rstrip(), "```\n"]
    return "\n".join(out)


def api_reference() -> str:
    """Every module of the package but the commands (their reference is their --help), by layer."""
    package = ROOT / "src" / "lookalike"
    out = ["# Python API\n", "The library's modules, from their docstrings (generated when the site is built). The "
           "layers import only downward: core helpers, data, models and retrieval, the product side (embedder "
           "file, catalogue, verification, boxes), pipelines (train, evaluate), then the commands and the page.\n"]
    modules = sorted(p for p in package.rglob("*.py") if "cli" not in p.parts and p.name != "__main__.py")
    for module in modules:
        parts = module.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out += [f"## {name}\n", f"::: {name}", "    options:", "      show_root_heading: false",
                "      show_root_toc_entry: false",
                "      members_order: source\n"]
    return "\n".join(out)


def result_page(path: Path) -> str:
    """A results file with its links to other results kept and links to scripts shown as their names."""
    def link(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if target.startswith(("http", "#")) or (RESULTS / target).exists():
            return m.group(0)
        return label
    return re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", link, path.read_text())


def home() -> str:
    """The README as the site's home page, its links made the site's own."""
    def link(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if target.startswith(("http", "#")):
            return m.group(0)
        if target.startswith("docs/") and target != "docs/":
            return f"[{label}]({target[len('docs/'):]})"
        if target.startswith("experiments/results/"):
            return f"[{label}](results/{target[len('experiments/results/'):] or 'index.md'})"
        return label
    return re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", link, (ROOT / "README.md").read_text())


def main() -> None:
    with mkdocs_gen_files.open("index.md", "w") as f:
        f.write(home())
    with mkdocs_gen_files.open("reference/cli.md", "w") as f:
        f.write(cli_reference())
    with mkdocs_gen_files.open("reference/config-groups.md", "w") as f:
        f.write(config_reference())
    with mkdocs_gen_files.open("reference/api.md", "w") as f:
        f.write(api_reference())
    pages = sorted(RESULTS.glob("*.md"))
    for page in pages:
        with mkdocs_gen_files.open(f"results/{page.name}", "w") as f:
            f.write(result_page(page))
    for picture in sorted([*RESULTS.glob("*.jpg"), *RESULTS.glob("*.png")]):
        with mkdocs_gen_files.open(f"results/{picture.name}", "wb") as f:
            f.write(picture.read_bytes())
    with mkdocs_gen_files.open("results/index.md", "w") as f:
        f.write("# Results\n\nEvery measurement behind a claim in these pages: the script and command that made it, "
                "the machine, and the comparison it makes in the same run (`experiments/`).\n\n"
                + "".join(f"- [{_title(p)}]({p.name})\n" for p in pages))


def _title(page: Path) -> str:
    first = next((line for line in page.read_text().splitlines() if line.startswith("# ")), page.stem)
    return first[2:].strip().replace("`", "")


main()
