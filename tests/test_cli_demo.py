"""`p2p demo`: its configuration and the defenses it runs beside P2P."""

import pytest
from typer.testing import CliRunner

from p2pdefense.cli import DEMO_DEFENSES, app, demo_config
from p2pdefense.config import validate_config


def test_demo_configurations_and_their_extra_defenses_are_valid():
    for task in ("classification", "math", "summarization"):
        config = demo_config(task, "tiny", None, None, 0, "runs")
        assert config.attack.name == "badnets" and config.defense.name == "p2p"
    for names in DEMO_DEFENSES.values():
        assert all(validate_config({"defense": {"name": name}}).defense.name == name for name in names)


def test_an_unknown_demo_defense_is_a_clear_error():
    result = CliRunner().invoke(app, ["demo", "--defense", "nonsense"])
    assert result.exit_code == 2 and "defense" in result.output


@pytest.mark.slow
def test_the_demo_runs_clean_undefended_p2p_and_bki(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in ("clean", "undefended", "p2p", "bki"))
