import subprocess
import sys

from click.testing import CliRunner

import kinema
from kinema.cli import main


def test_version_and_info():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and kinema.__version__ in result.output
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0
    assert "torch" in result.output and "device" in result.output and "threads" in result.output


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "kinema", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout
