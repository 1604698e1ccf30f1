"""Bad input raises a specific error naming the value and the fix; the CLI prints one line, exit 2."""

import subprocess
import sys

import pytest

import vidpress
from vidpress.errors import IncompatibleStagesError, InvalidParameterError, UnknownMethodError


@pytest.mark.parametrize("kwargs, name", [(dict(k=1.2), "k"), (dict(p=-0.1), "p"), (dict(tau=2), "tau"),
                                          (dict(l=0), "l"), (dict(mode="exact"), "mode")])
def test_dycoke_parameters_checked(kwargs, name):
    with pytest.raises(InvalidParameterError, match=name):
        vidpress.DyCoke(**kwargs)


def test_unknown_method_and_parameter():
    with pytest.raises(UnknownMethodError, match="choose one of"):
        vidpress.get_method("fastvv")
    with pytest.raises(UnknownMethodError, match="did you mean 'k'"):
        vidpress.get_method("dycoke", kk=0.5)


def test_slot_clash():
    with pytest.raises(IncompatibleStagesError, match="pre_llm"):
        vidpress.compose(vidpress.DyCoke(), vidpress.DyCoke())


def test_cli_failure_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "vidpress.cli", "run", "/no/such/video.mp4", "--model", "random"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "video file not found" in proc.stderr
