"""The README's promises: the two set-up commands, .ci/run running the test command, a valid config example."""
from __future__ import annotations

import json
import re
from pathlib import Path

from captum_fgattr.bench.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_main_job_and_test_commands_are_there_and_ci_runs_the_test_command():
    commands = [line for block in _bash_blocks() for line in block.splitlines()]
    main_job = "python3 -m venv .venv && .venv/bin/pip install -e '.[lrp]' && .venv/bin/fgattr demo"
    tests = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"
    assert main_job in commands and tests in commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci


def test_configuration_reference_is_a_valid_run_configuration():
    example = re.search(r"### Configuration reference.*?```json\n(.*?)```", README, re.S).group(1)
    config = RunConfig.from_dict(json.loads(example))
    assert config.data.kind == "covid-qu-ex" and config.protocol.layers == tuple(range(2, 11))
    assert config.evaluation.metrics.fc_subset_size == 20
