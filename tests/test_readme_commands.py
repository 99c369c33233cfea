"""The README's quick start is what CI runs, and its test command passes without the optional
export consumers (their tests skip with the reason; under CI's require flag they fail)."""

from __future__ import annotations

import re
import shlex
import sys

import pytest
from conftest import ROOT, need_consumer


def quick_start() -> list[str]:
    """The command lines of the README's "Quick start" code block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block under ## Quick start"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def ci_commands() -> list[str]:
    """`.ci/run`'s command lines, comments and blank lines left out."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def pip_install_args(command: str) -> list[str]:
    """What `[python -m] pip install` installs: its arguments without the options."""
    words = shlex.split(command)
    start = words.index("install") + 1
    return [w for w in words[start:] if not w.startswith("--")]


def test_the_readme_commands_are_the_ones_ci_runs():
    install_and_fit, test_command = quick_start()
    install, _, fit = install_and_fit.partition("&&")
    assert install.split()[:2] == ["pip", "install"]
    assert fit.split()[:4] == ["python", "-m", "steerlight", "fit"]
    ci = ci_commands()
    ci_installs = [pip_install_args(c) for c in ci if re.match(r"(python -m )?pip install", c)]
    assert pip_install_args(install) in ci_installs, (install, ci_installs)
    assert pip_install_args(install) == ["-e", ".[dev]"]
    assert ci[-1] == test_command == "python -m pytest -q"
    assert "export STEERLIGHT_REQUIRE_CONSUMERS=1" in ci[: ci.index(test_command)]


@pytest.mark.parametrize("module", ["steering_vectors.layer_matching", "lm_eval.api.instance"])
def test_a_missing_consumer_skips_with_the_reason_and_fails_under_ci(module, monkeypatch):
    top = module.partition(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, None)  # `import top` now raises ImportError
    dist = top.replace("_", "-")

    monkeypatch.delenv("STEERLIGHT_REQUIRE_CONSUMERS", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        need_consumer(module)
    assert f"{dist} is not installed" in str(skipped.value)
    assert f"pip install --no-deps {dist}" in str(skipped.value)

    monkeypatch.setenv("STEERLIGHT_REQUIRE_CONSUMERS", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        need_consumer(module)
    assert "STEERLIGHT_REQUIRE_CONSUMERS=1 requires it" in str(failed.value)


def test_an_installed_consumer_is_imported(monkeypatch):
    monkeypatch.setenv("STEERLIGHT_REQUIRE_CONSUMERS", "1")
    assert need_consumer("json").dumps([1]) == "[1]"
