"""The README's commands and quick-start as a new user copies them: the quick-start's Python block runs as
written, and CI runs exactly the README's test command."""

import pathlib
import re

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(heading: str) -> str:
    """The README text under ``## heading`` up to the next ``## `` heading."""
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_quick_start_runs(capsys):
    (block,) = code_blocks(section("Quick start"), "python")
    threads = torch.get_num_threads()
    try:
        exec(compile(block, "README.md (Quick start)", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "masked_conv2d (4, 32, 12, 12) | gumbel_softmax (64, 10) | ran on" in out, out


def test_ci_runs_the_readme_commands():
    (block,) = code_blocks(section("Install, run, test"), "bash")
    install, test = block.strip().splitlines()
    assert install.startswith('pip install -e ".[test]" --extra-index-url https://download.pytorch.org/whl/cpu')
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci  # the README's test command, exactly, as a line of the CI script


def test_convert_example_runs(capsys):
    (block,) = code_blocks(section("Converting an existing PixelCNN (`fastgen.nn.convert`)"), "python")
    exec(compile(block, "README.md (convert)", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "2 masked convolution(s) converted, 0 left alone" in out, out
