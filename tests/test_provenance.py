import subprocess

from p2pdefense.provenance import git_state


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_dirty_flag_follows_code_not_results_or_prose(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    files = {"src/model.py": "x = 1\n", "benchmarks/results/results.jsonl": "{}\n", "README.md": "# r\n",
             "docs/findings.md": "# f\n",
             "configs.yaml": "a: 1\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # Run from a subfolder, as the installed package does.
    assert git_state(tmp_path / "src") == {"commit": head, "dirty": False}

    (tmp_path / "benchmarks/results/results.jsonl").write_text('{"asr": 1}\n')
    (tmp_path / "README.md").write_text("# edited\n")
    (tmp_path / "docs/findings.md").write_text("# edited\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_state(tmp_path / "src")["dirty"] is False

    (tmp_path / "configs.yaml").write_text("a: 2\n")
    assert git_state(tmp_path / "src")["dirty"] is True
    git(tmp_path, "checkout", "configs.yaml")
    (tmp_path / "src/model.py").write_text("x = 2\n")
    assert git_state(tmp_path / "src")["dirty"] is True


def test_outside_a_checkout_commit_and_dirty_are_unknown(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
