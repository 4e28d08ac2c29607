"""End to end on the tiny model: `p2p run`, the run directory, `p2p predict`, interrupted runs."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from p2pdefense import pipeline
from p2pdefense.cli import app
from p2pdefense.config import load_config
from p2pdefense.defenses import build_defense
from p2pdefense.evaluate import summarize
from p2pdefense.tasks import LabelPrediction

runner = CliRunner()

CONFIG = """
seed: 3
data:
  synthetic: {train_rows: 300, test_rows: 80}
attack: {name: badnets, rate: 0.1, triggers: [mn]}
defense: {name: p2p, ratio: 0.3}
model:
  preset: tiny
  tiny: {vocab_size: 400, hidden_size: 32, num_layers: 1, num_heads: 2}
train: {epochs: 2, batch_size: 32}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    config_path = root / "config.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    result = runner.invoke(app, ["run", str(config_path), "--set", f"output_dir={root}", "--set", "name=e2e"])
    assert result.exit_code == 0, result.output
    return root / "e2e"


def read_predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_run_directory_holds_config_metrics_predictions_log_and_model(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "metrics.json", "predictions.jsonl", "train_log.jsonl", "model"} <= names
    saved = load_config(finished_run / "config.yaml")
    assert saved.defense.name == "p2p" and saved.defense.ratio == 0.3 and saved.seed == 3
    log = [json.loads(line) for line in (finished_run / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2] and all("dev_score" in e and "loss" in e for e in log)
    assert (finished_run / "model" / "model.safetensors").exists()
    assert not list(finished_run.parent.glob(".e2e.incomplete-*"))


def test_metrics_agree_with_predictions(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    rows = read_predictions(finished_run)
    clean = [LabelPrediction(**r) for r in rows if r["split"] == "clean"]
    triggered = [LabelPrediction(**r) for r in rows if r["split"] == "triggered"]
    assert len(clean) == metrics["num_clean"] == 80
    assert len(triggered) == metrics["num_triggered_all"] == 80  # every test row, triggered
    assert metrics["num_triggered"] == 40  # ASR: the test rows whose label is not the target 1
    config = load_config(finished_run / "config.yaml")
    task = config.task.build(None, build_defense(config.defense, 2).output_space, 64)  # scoring needs no tokenizer
    recomputed = summarize(task, clean + triggered, 1, 0.0)
    for key in ("ca", "asr", "asr_strict", "out_of_space", "triggered_accuracy", "asr_trigger_in_input"):
        assert metrics[key] == pytest.approx(recomputed[key])
    for r in rows:  # every input carried the benign trigger and cue; folding is i+2 -> i
        assert r["input"].startswith("Input: The query currently entered is: ")
        assert r["input"].rstrip().endswith("Answer:")
        assert r["folded"] == r["raw"] % 2 and len(r["scores"]) == 4
        assert r["raw"] == max(range(4), key=r["scores"].__getitem__)
    assert all("mn" in r["input"].split() for r in rows if r["split"] == "triggered")
    assert metrics["num_poisoned"] == round(0.1 * metrics["num_train"])
    assert metrics["num_benign"] == round(0.3 * metrics["num_train"])
    # compute: every training row went through forward and backward twice (2 epochs), then every input forward
    compute = metrics["compute"]
    assert compute["backward_tokens"] >= 2 * metrics["num_train"]
    assert compute["forward_tokens"] >= compute["backward_tokens"] + len(rows)
    # peak memory of the run's process: at least the resident size of torch and the model (no GPU here)
    from p2pdefense.compute import PeakMemory

    if PeakMemory.CLEAR_REFS.exists():
        assert metrics["peak_memory_mib"]["host"] >= 50
        stages = metrics["stage_peak_memory_mib"]
        assert stages.keys() == metrics["stage_seconds"].keys()  # each stage's own peak: where memory went
        assert metrics["peak_memory_mib"]["host"] >= max(stage["host"] for stage in stages.values())
    assert (metrics["peak_memory_mib"]["device"] is None) == (not torch.cuda.is_available())


def test_predict_applies_the_saved_defense(finished_run, tmp_path):
    inputs = tmp_path / "new.txt"
    inputs.write_text("the movie was wonderful .\nthe plot was dull .\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["predict", str(finished_run), "--input", str(inputs), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"].rstrip() for r in rows] == [
        "Input: The query currently entered is: the movie was wonderful .\nAnswer:",
        "Input: The query currently entered is: the plot was dull .\nAnswer:"]
    assert all(r["label"] == r["raw"] % 2 and r["label"] in (0, 1) for r in rows)
    # the same inputs through the evaluation path give the same raw labels
    from p2pdefense.predict import predict_run

    assert [r["raw"] for r in predict_run(finished_run, str(inputs))] == [r["raw"] for r in rows]


def test_predict_rejects_an_unfinished_run(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "--input", "x.txt"])
    assert result.exit_code == 2 and "not a finished run" in result.output


def test_run_refuses_to_overwrite_and_config_errors_stop_before_work(finished_run, tmp_path):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    again = runner.invoke(app, ["run", str(config_path), "--set", f"output_dir={finished_run.parent}",
                                "--set", "name=e2e"])
    assert again.exit_code == 2 and "exists" in again.output
    bad = runner.invoke(app, ["run", str(config_path), "--set", "attack.rate=2"])
    assert bad.exit_code == 2 and "attack.rate" in bad.output
    assert not (tmp_path / "runs").exists()


def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    config = load_config(None, [f"output_dir={tmp_path}", "name=broken", "data.synthetic.train_rows=60",
                                "train.epochs=1", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "save_trained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config)
    # only the hidden checkpoints of the interrupted run remain: nothing named like a run, no staging directory
    assert [p.name for p in tmp_path.iterdir()] == [".broken.checkpoints"]


def test_memory_freed_by_a_stage_is_released_before_the_next_stage_peak_is_measured(tmp_path, monkeypatch):
    config = load_config(None, [f"output_dir={tmp_path}", "name=released", "data.synthetic.train_rows=60",
                                "train.epochs=1", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300"])
    events = []
    real_lap = pipeline.PeakMemory.lap

    def lap(memory):
        events.append("lap")
        return real_lap(memory)

    monkeypatch.setattr(pipeline, "release_memory", lambda: events.append("release"))
    monkeypatch.setattr(pipeline.PeakMemory, "lap", lap)
    _, metrics = pipeline.run(config)
    # once before the run's measure starts (what an earlier run in this process freed), then before every lap
    assert events == ["release"] + ["release", "lap"] * len(metrics["stage_seconds"])


def test_a_failed_write_keeps_the_staging_directory_and_resume_finishes_without_training(tmp_path, monkeypatch):
    config = load_config(None, [f"output_dir={tmp_path}", "name=full-disk", "data.synthetic.train_rows=60",
                                "train.epochs=2", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300"])
    real_save = pipeline.save_trained

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "save_trained", disk_full)
    with pytest.raises(OSError, match=r"No space left.*kept in .*\.full-disk\.incomplete-\d+.*--resume"):
        pipeline.run(config)
    staging = list(tmp_path.glob(".full-disk.incomplete-*"))
    assert len(staging) == 1 and (staging[0] / "predictions.jsonl").exists()
    assert not (tmp_path / "full-disk").exists()
    with pytest.raises(FileExistsError, match="--resume"):  # checkpoints exist: say what to do
        pipeline.run(config)
    monkeypatch.setattr(pipeline, "save_trained", real_save)
    run_dir, metrics = pipeline.run(config, resume=True)
    assert metrics["resumed_from_epoch"] == 2 and (run_dir / "metrics.json").exists()
    assert not (tmp_path / ".full-disk.checkpoints").exists()  # removed once the run is complete
    # the staging directory of this (still living) process was reused; none is left
    assert not list(tmp_path.glob(".full-disk.incomplete-*"))


def test_a_run_another_process_is_running_is_refused_before_any_work(tmp_path):
    from p2pdefense.io import exclusive_lock

    config_path = tmp_path / "c.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    command = ["run", str(config_path), "--set", f"output_dir={tmp_path}", "--set", "name=busy"]
    with exclusive_lock(pipeline.run_lock_path(tmp_path / "busy")):  # as the other process's run holds it
        refused = runner.invoke(app, [*command, "--resume"])
        assert refused.exit_code == 2 and "being run by another process" in refused.output, refused.output
        assert [p.name for p in tmp_path.iterdir()] == ["c.yaml", ".busy.lock"]  # nothing of its own written
        assert pipeline.run_in_progress(tmp_path / "busy")
    assert not pipeline.run_in_progress(tmp_path / "busy")


def test_stale_staging_of_dead_processes_is_removed_and_overwrite_replaces_the_old_run(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "name=r", "data.synthetic.train_rows=60",
                                "train.epochs=1", "model.tiny.hidden_size=16", "model.tiny.vocab_size=300"])
    dead = tmp_path / ".r.incomplete-999999999"
    dead.mkdir()
    run_dir, first = pipeline.run(config)
    assert not dead.exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        pipeline.run(config)
    _, second = pipeline.run(config, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert second["ca"] == first["ca"]  # same configuration and seed: the same numbers
    provenance = second["provenance"]
    assert provenance["libraries"]["torch"].startswith("2.13.0")
    assert provenance["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert provenance["dtype"] == "float32" and provenance["version"] == "0.1.0"
    assert {"load_and_poison", "defend", "load_model", "train", "evaluate", "write"} <= set(
        second["stage_seconds"])


def test_baselines_share_poison_and_report_comparisons(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "name=cmp", "data.synthetic.train_rows=120",
                                "data.synthetic.test_rows=40", "attack.name=badnets", "attack.rate=0.1",
                                "defense.name=p2p", "train.epochs=1", "model.tiny.hidden_size=16",
                                "model.tiny.vocab_size=300"])
    root, rows = pipeline.run_with_baselines(config)
    assert [r["setting"] for r in rows] == ["clean", "undefended", "p2p"]
    clean, undefended, defended = rows
    assert clean["num_poisoned"] == 0 and undefended["num_poisoned"] == defended["num_poisoned"] == 11
    assert clean["num_triggered"] == undefended["num_triggered"] == defended["num_triggered"] == 20
    assert defended["asr_floor"] == clean["asr"]  # the floor comes from the clean reference run
    assert defended["ca_drop"] == pytest.approx(undefended["ca"] - defended["ca"])
    summary = json.loads((root / "summary.json").read_text())
    assert [r["setting"] for r in summary] == ["clean", "undefended", "p2p"]
    assert "| p2p | badnets | p2p |" in (root / "summary.md").read_text()
    # the poisoned rows are the same in the undefended and defended runs
    def triggered_texts(setting):
        rows = map(json.loads, (root / setting / "predictions.jsonl").open())
        return [r["input"].split("Input: ", 1)[1].rsplit("\n", 1)[0] for r in rows if r["split"] == "triggered"]

    triggered_inputs = [triggered_texts("undefended"), triggered_texts("p2p")]
    assert [t.removeprefix("The query currently entered is: ") for t in triggered_inputs[1]] == triggered_inputs[0]
    assert yaml.safe_load((root / "clean" / "config.yaml").read_text())["attack"]["rate"] == 0.0
    # one tokenizer for the three runs: the same clean input gets the same ids (the trigger and benign prompt
    # included), although only two of the runs saw poisoned rows and only one saw the benign prompt
    from transformers import AutoTokenizer

    text = "Input: The query currently entered is: the plot was mn dull .\nAnswer: 3"
    ids = [AutoTokenizer.from_pretrained(root / setting / "model")(text)["input_ids"]
           for setting in ("clean", "undefended", "p2p")]
    assert ids[0] == ids[1] == ids[2]


KILL_CONFIG = """
seed: 1
data:
  synthetic: {train_rows: 1200, test_rows: 100}
attack: {name: badnets, rate: 0.1, triggers: [mn]}
defense: {name: p2p}
model:
  preset: tiny
  tiny: {vocab_size: 400, hidden_size: 64, num_layers: 2, num_heads: 2}
train: {epochs: 8, batch_size: 16}
stealth_report: false
"""


def test_a_run_killed_with_sigkill_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    config_path = tmp_path / "c.yaml"
    config_path.write_text(KILL_CONFIG, encoding="utf-8")
    command = [sys.executable, "-m", "p2pdefense", "run", str(config_path), "--set", "name=killed"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.Popen([*command, "--set", f"output_dir={tmp_path / 'a'}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "a" / ".killed.checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "a" / "killed").exists()
    assert (tmp_path / "a" / ".killed.lock").exists()  # left by the killed run: it must not block the resume

    refused = runner.invoke(app, ["run", str(config_path), "--set", f"output_dir={tmp_path / 'a'}",
                                  "--set", "name=killed"])
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = subprocess.run([*command, "--set", f"output_dir={tmp_path / 'a'}", "--resume"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    uninterrupted = subprocess.run([*command, "--set", f"output_dir={tmp_path / 'b'}"], env=env,
                                   capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    after_kill = json.loads((tmp_path / "a" / "killed" / "metrics.json").read_text())
    reference = json.loads((tmp_path / "b" / "killed" / "metrics.json").read_text())
    assert 1 <= after_kill["resumed_from_epoch"] < 8
    # the checkpoint carried the killed process's finished epochs: the same work as the uninterrupted run
    assert after_kill["compute_partial"] is False and reference["compute_partial"] is False
    for key in ("forward_tokens", "backward_tokens"):
        assert after_kill["compute"][key] == reference["compute"][key], key
    assert after_kill["stage_flops"]["train"] == pytest.approx(reference["stage_flops"]["train"], rel=1e-3)
    for key in ("ca", "asr", "asr_strict", "triggered_accuracy", "best_epoch"):
        assert after_kill[key] == reference[key], key
    assert [e["loss"] for e in after_kill["epochs"]] == pytest.approx([e["loss"] for e in reference["epochs"]])
    assert read_predictions(tmp_path / "a" / "killed") == read_predictions(tmp_path / "b" / "killed")


def test_probe_statistics_are_not_shared_between_numerics(tmp_path, monkeypatch):
    """A probe trained in bf16 on a GPU ranks rows differently from a float32 one on a CPU: the cache must keep
    them apart (one device's statistics served to the other would make a result depend on the run order)."""
    from p2pdefense.data import Example, ExampleMeta
    from p2pdefense.defenses.probe import ProbeStats
    from p2pdefense.defenses.scorers import TrainingDynamicsConfig

    (tmp_path / "config.yaml").write_text(CONFIG, encoding="utf-8")
    config = load_config(tmp_path / "config.yaml")
    rows = [Example(text=f"row {i}", label=i % 2, meta=ExampleMeta(source_index=i)) for i in range(4)]
    splits = pipeline.Splits(rows, rows, rows, [], [])
    trained = []

    def fake_probe(*args, checkpoint_dir):
        trained.append(args)
        # the probe keeps epoch checkpoints beside its cache entry, so a killed run resumes it
        assert checkpoint_dir.parent == tmp_path / "cache" / "probes" and checkpoint_dir.name.endswith(".checkpoints")
        return ProbeStats([[0.5 * len(trained)] * 4], torch.zeros(4, 2))

    monkeypatch.setattr(pipeline, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(pipeline, "train_probe", fake_probe)
    settings = TrainingDynamicsConfig().probe

    def statistics(dtype, device, mixed_precision):
        context = pipeline.defense_context(config, splits, ["row"], 1e-3, dtype, torch.device(device),
                                           mixed_precision)
        return context.probe(settings, rows).margins

    first = statistics(torch.float32, "cpu", "no")
    assert statistics(torch.float32, "cpu", "no") == first and len(trained) == 1  # same numerics: cached
    assert statistics(torch.bfloat16, "cuda", "bf16") != first and len(trained) == 2
    statistics(torch.bfloat16, "cpu", "bf16")  # bf16 on a CPU is a third kind of run
    assert len(trained) == 3


def test_a_repair_and_a_detector_take_the_undefended_model_and_give_what_training_again_gives(tmp_path):
    """STRIP after fine-tuning on trusted rows changes nothing before the trained model: `--baselines` hands it the
    undefended run's model. Its result must be the one a run that trains the same model again gets, bit for bit,
    on a LoRA model with dropout (the repair's training draws from the random stream)."""
    from safetensors.torch import load_file

    from p2pdefense.compute import total_flops, wall_ratio
    from p2pdefense.models.tiny import build_tiny_llama, train_tokenizer

    tokenizer = train_tokenizer([f"Input: {w} film mn . Answer: 0 1" for w in ("good", "bad", "the", "a")], 300)
    build_tiny_llama(len(tokenizer), 32, 1, 2, 256, seed=1).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    stack = ('defense={"name": "stack", "defenses": [{"name": "finetune", "trusted_data": "holdout", "epochs": 1},'
             ' {"name": "strip", "false_rejection_rate": 0.1, "copies": 4}]}')
    settings = [f"output_dir={tmp_path}", "data.synthetic.train_rows=160", "data.synthetic.test_rows=40",
                "data.trusted_holdout=30", "attack.name=badnets", "attack.rate=0.1", "attack.triggers=[mn]",
                "model.preset=null", f"model.name_or_path={tmp_path / 'base'}", "model.dtype=float32",
                "model.finetune=lora", "model.lora.r=4", "train.epochs=2", "train.learning_rate=0.01",
                stack]
    root, rows = pipeline.run_with_baselines(load_config(None, [*settings, "name=shared"]))
    taken = rows[2]
    assert taken["trained_from"] == str(root / "undefended") and "train" not in taken["stage_seconds"]
    assert "stealth" not in taken["stage_seconds"] and taken["stealth"] == rows[1]["stealth"] is not None
    assert any("trained model taken from" in note for note in taken["defense_notes"])
    again_dir, again = pipeline.run(load_config(None, [*settings, "name=again"]))
    assert again["trained_from"] is None and again["train_seconds"] > 0
    assert read_predictions(root / "stack") == read_predictions(again_dir)
    for key in ("ca", "asr", "rejection_rate_clean", "rejection_rate_triggered", "best_epoch", "stealth"):
        assert taken[key] == again[key], key
    untimed = [[{k: v for k, v in e.items() if k != "tokens_per_s"} for e in m["epochs"]] for m in (taken, again)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2
    adapters = [load_file(d / "model" / "adapter_model.safetensors") for d in (root / "stack", again_dir)]
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[1])
    undefended = rows[1]
    before = load_file(root / "undefended" / "model" / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], adapters[0][k]) for k in before)  # the repair changed the taken model
    # its cost counts the training it took: the same estimated FLOPs as training again, and its wall time
    assert taken["compute"]["flops"] < again["compute"]["flops"]
    assert total_flops(taken) == pytest.approx(total_flops(again), rel=1e-3)
    assert taken["reused_seconds"] == pytest.approx(undefended["stage_seconds"]["train"]
                                                    + undefended["stage_seconds"]["stealth"])
    assert wall_ratio(taken, undefended) == pytest.approx(
        (taken["wall_seconds"] + taken["reused_seconds"]) / undefended["wall_seconds"])


def test_only_a_defense_that_trains_as_undefended_takes_a_model_and_only_from_its_own_undefended_run(tmp_path):
    settings = [f"output_dir={tmp_path}", "data.synthetic.train_rows=80", "data.synthetic.test_rows=20",
                "attack.name=badnets", "attack.rate=0.1", "model.tiny.vocab_size=300", "model.tiny.hidden_size=16",
                "train.epochs=1", "stealth_report=false"]
    source, _ = pipeline.run(load_config(None, [*settings, "name=undefended"]))
    with pytest.raises(ValueError, match="defense p2p changes the training data.*must train its own model"):
        pipeline.run(load_config(None, [*settings, "defense.name=p2p", "name=p2p"]), trained_from=source)
    with pytest.raises(ValueError, match="not the undefended run of this configuration .*differs .* in: attack"):
        pipeline.run(load_config(None, [*settings, "attack.rate=0.2", "defense.name=strip", "name=strip"]),
                     trained_from=source)
    with pytest.raises(ValueError, match="no finished run with a saved model there"):
        pipeline.run(load_config(None, [*settings, "defense.name=strip", "name=strip2"]),
                     trained_from=tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["undefended"]  # each refused before writing anything
