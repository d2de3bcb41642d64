"""Issue 20, sec. 6: every command and pipeline entry point refuses a bad argument before it writes anything.

Flag by flag, in process (each command's main(argv)): the command exits with status 2 and one line
`<command>: error: ...` naming the flag (or the --settings key, or the file) and what it expects, and the run
folder or log it would have written does not exist afterwards; nothing else appears either. Before the issue
`rsbook certify --radius 0.25 --futility 2` wrote the log's header and manifest before refusing, so that the
corrected command was refused as "a run with different parameters"; train --workers -1, topk/attack --seed -1,
every bad certify-image setting and a missing GPU (--device cuda) did the same or ended in a traceback.
"""

import json
from pathlib import Path

import pytest
import torch

from rsbook.ancer import pipeline as ancer_pipeline
from rsbook.cli import main as rsbook_main
from rsbook.cohen import pipeline as cohen_pipeline
from rsbook.fars import pipeline as fars_pipeline
from rsbook.logs import read_log
from rsbook.models import build, save_checkpoint

BACKBONE = json.dumps({"widths": [4], "depths": [1], "embedding_dim": 8})
SETTINGS = {"fixed_sigma": 0.25, "sigma0": 0.25, "iso": {"iterations": 1, "learning_rate": 0.05, "num_samples": 4},
            "ancer": {"iterations": 1, "learning_rate": 0.04, "num_samples": 4, "kappa": 2.0},
            "rancer": {"iterations": 1, "learning_rate": 0.04, "num_samples": 4, "kappa": 2.0,
                       "clip_sigma": [0.15, 0.15], "rank": 2, "lanczos_steps": 4},
            "n0": 10, "n": 20, "alpha": 0.01, "batch_size": 20}
NO_GPU = "nonsense" if torch.cuda.is_available() else "cuda"  # a device this machine does not have


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An (untrained) digits checkpoint and a one-row certify log to attack: inputs, not outputs."""
    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_checkpoint(folder / "checkpoint.pt", build("digits_cnn", 10), "digits_cnn", "digits", noise_sd=0.25, epoch=1)
    (folder / "certify.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t0\t0\t0.3\t1\t1.0\n")
    (folder / "a_file").write_text("not a folder\n")
    return folder


def _argv(base: list, change: list) -> list:
    """base with each flag of `change` set to its value (appended when base lacks it)."""
    argv = list(base)
    i = 0
    while i < len(change):
        flag, values = change[i], []
        i += 1
        while i < len(change) and not (change[i].startswith("--") and len(change[i]) > 2):
            values.append(change[i])
            i += 1
        if flag in argv:
            start = argv.index(flag) + 1
            end = start
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            argv[start:end] = values
        else:
            argv += [flag, *values]
    return argv


def _refused(main, argv, prog, message, out: Path, inputs: Path, capsys):
    before = sorted(inputs.rglob("*"))
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    assert message in lines[0], lines[0]
    assert not out.exists(), sorted(out.rglob("*"))  # no run folder, log or manifest half-begun
    assert sorted(inputs.rglob("*")) == before  # and nothing beside the inputs


# ----------------------------------------------------------------------------------------- rsbook ...

def _smooth_base(command, inputs, out):
    base = [command, "--dataset", "digits", "--checkpoint", str(inputs / "checkpoint.pt"), "--sigma", "0.25",
            "--n", "20", "--alpha", "0.01", "--batch", "20", "--max", "2", "--out", str(out), "--no-progress"]
    return base + (["--n0", "10"] if command == "certify" else [])


SMOOTHING = [(["--sigma", "-0.5"], "--sigma must be a finite number > 0"),
             (["--sigma", "nan"], "--sigma must be a finite number > 0"),
             (["--n", "0"], "--n must be an integer >= 1"),
             (["--alpha", "1.5"], "--alpha must lie strictly between 0 and 1"),
             (["--batch", "0"], "--batch must be an integer >= 1"),
             (["--skip", "0"], "--skip must be an integer >= 1"),
             (["--max", "-2"], "--max must be -1 (every example) or an index >= 0"),
             (["--seed", "-1"], "--seed must be a non-negative integer"),
             (["--dataset", "mnist"], "--dataset must be one of"),
             (["--split", "validation"], "--split must be one of"),
             (["--arch", "resnet50"], "arch 'resnet50' was requested"),
             (["--checkpoint", "missing.pt"], "--checkpoint missing.pt does not exist"),
             (["--device", NO_GPU], "--device "),
             (["--out", "a_file/log.tsv"], "--out "),
             (["--out", "."], "--out must be a file path")]
CERTIFY = [(["--n0", "0"], "--n0 must be an integer >= 1"),
           (["--radius", "-1"], "--radius must be a finite number >= 0"),
           (["--radius", "inf"], "--radius must be a finite number >= 0"),
           (["--radius", "0.25", "--futility", "2"], "--futility must lie strictly between 0 and 1"),
           (["--radius", "0.25", "--futility", "0"], "--futility must lie strictly between 0 and 1"),
           (["--radius", "0.25", "--n-max", "0"], "--n-max must be an integer >= 1"),
           (["--radius", "100"], "radius 100.0 cannot be certified at sigma 0.25"),
           (["--n-max", "50"], "--n-max needs --radius"),
           (["--method", "union"], "--method needs --radius"),
           (["--futility", "0.01"], "--futility needs --radius")]


def _paths(change, inputs):
    """Flag values naming inputs ('missing.pt', 'a_file/...', '.') made paths under the inputs folder."""
    named = {"missing.pt", "a_file/log.tsv", "a_file", ".", "missing.tsv"}
    return [str(inputs / value) if value in named else value for value in change]


@pytest.mark.parametrize("command, change, message", [("certify", c, m) for c, m in SMOOTHING + CERTIFY]
                         + [("predict", c, m) for c, m in SMOOTHING])
def test_certify_and_predict_refuse_each_bad_flag_before_writing(inputs, tmp_path, capsys, command, change, message):
    out = tmp_path / "run" / "log.tsv"
    argv = _argv(_smooth_base(command, inputs, out), _paths(change, inputs))
    target = Path(argv[argv.index("--out") + 1])
    _refused(rsbook_main, argv, f"rsbook {command}", message.replace("missing.pt", str(inputs / "missing.pt")),
             out if target == out else tmp_path / "run", inputs, capsys)


def test_a_refused_futility_leaves_the_log_free_for_the_corrected_command(inputs, tmp_path, capsys):
    """The issue's own sequence: --futility 2 is refused, then --futility 0.01 into the same path runs."""
    out = tmp_path / "robust.tsv"
    sequential = ["--radius", "0.25", "--n-max", "40"]
    assert rsbook_main(_argv(_smooth_base("certify", inputs, out), [*sequential, "--futility", "2"])) == 2
    assert not out.exists()
    assert rsbook_main(_argv(_smooth_base("certify", inputs, out), [*sequential, "--futility", "0.01"])) == 0
    assert len(read_log(out, "sequential")) == 2
    capsys.readouterr()


def test_an_unknown_method_is_refused_by_the_parser(inputs, tmp_path):
    out = tmp_path / "log.tsv"
    with pytest.raises(SystemExit) as exit_:
        rsbook_main(_argv(_smooth_base("certify", inputs, out), ["--radius", "0.25", "--method", "sprt"]))
    assert exit_.value.code == 2 and not out.exists()


TRAIN = [(["--noise-sd", "-1"], "--noise-sd must be a finite number > 0"),
         (["--epochs", "0"], "--epochs must be an integer >= 1"),
         (["--batch", "0"], "--batch must be an integer >= 1"),
         (["--lr", "0"], "--lr must be a finite number > 0"),
         (["--momentum", "1"], "--momentum must be a finite number in [0, 1)"),
         (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
         (["--gamma", "2"], "--gamma must be a finite number in (0, 1]"),
         (["--lr-step", "0"], "--lr-step must be an integer >= 1"),
         (["--schedule", "linear", "--lr-step", "3"], "--lr-step belong to the step schedule"),
         (["--workers", "-1"], "--workers must be a non-negative integer"),
         (["--seed", "-1"], "--seed must be a non-negative integer"),
         (["--arch", "vgg"], "--arch must be one of"),
         (["--dataset", "rancer_toy"], "--dataset must be one of"),
         (["--device", NO_GPU], "--device "),
         (["--out", "a_file"], "--out must be a folder path")]


@pytest.mark.parametrize("change, message", TRAIN)
def test_train_refuses_each_bad_flag_before_writing(inputs, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    argv = _argv(["train", "--dataset", "digits", "--arch", "digits_cnn", "--noise-sd", "0.25", "--epochs", "1",
                  "--out", str(out), "--no-progress"], _paths(change, inputs))
    _refused(rsbook_main, argv, "rsbook train", message, out, inputs, capsys)


def test_fetch_refuses_an_unknown_artifact_and_caches_nothing(runs, inputs, capsys):
    _refused(rsbook_main, ["fetch", "locuslab/smoothing/no/such/log"], "rsbook fetch", "unknown artifact", runs, inputs,
             capsys)


# ------------------------------------------------------------------------------------ the pipelines

TOPK = [(["--sigma", "-1"], "--sigma must be a finite number > 0"),
        (["--ks", "0"], "--ks must be an integer >= 1"),
        (["--ks", "1", "1"], "ks must be distinct positive integers"),
        (["--n", "0"], "--n must be an integer >= 1"),
        (["--alpha", "2"], "--alpha must lie strictly between 0 and 1"),
        (["--batch", "0"], "--batch must be an integer >= 1"),
        (["--skip", "0"], "--skip must be an integer >= 1"),
        (["--max-index", "-3"], "--max-index must be -1 (every example) or an index >= 0"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--split", "validation"], "--split must be one of"),
        (["--dataset", "mnist"], "--dataset must be one of"),
        (["--checkpoint", "missing.pt"], "does not exist"),
        (["--device", NO_GPU], "--device "),
        (["--root", "a_file"], "--root must be a folder path")]
ATTACK = [(["--sigma", "0"], "--sigma must be a finite number > 0"),
          (["--multipliers", "-1"], "--multipliers must be a finite number > 0"),
          (["--n-predict", "0"], "--n-predict must be an integer >= 1"),
          (["--alpha", "0"], "--alpha must lie strictly between 0 and 1"),
          (["--batch", "0"], "--batch must be an integer >= 1"),
          (["--steps", "0"], "--steps must be an integer >= 1"),
          (["--num-noise", "0"], "--num-noise must be an integer >= 1"),
          (["--max-examples", "0"], "--max-examples must be an integer >= 1"),
          (["--clip", "1", "0"], "--clip must satisfy low < high"),
          (["--seed", "-1"], "--seed must be a non-negative integer"),
          (["--certify-log", "missing.tsv"], "certify log"),
          (["--checkpoint", "missing.pt"], "does not exist"),
          (["--device", NO_GPU], "--device "),
          (["--root", "a_file"], "--root must be a folder path")]


@pytest.mark.parametrize("command, change, message", [("topk", c, m) for c, m in TOPK]
                         + [("attack", c, m) for c, m in ATTACK])
def test_the_cohen_pipeline_refuses_each_bad_flag_before_writing(inputs, tmp_path, capsys, command, change, message):
    root = tmp_path / "root"
    common = ["--dataset", "digits", "--checkpoint", str(inputs / "checkpoint.pt"), "--sigma", "0.25", "--alpha",
              "0.01", "--batch", "20", "--root", str(root), "--no-progress"]
    base = ([command, *common, "--ks", "1", "2", "--n", "20", "--max-index", "2"] if command == "topk" else
            [command, *common, "--certify-log", str(inputs / "certify.tsv"), "--n-predict", "20", "--steps", "1",
             "--num-noise", "2"])
    _refused(cohen_pipeline.main, _argv(base, _paths(change, inputs)), f"rsbook.cohen {command}", message, root,
             inputs, capsys)


FARS = [(["--epochs", "0"], "--epochs must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
        (["--margin", "-1"], "--margin must be a finite number >= 0"),
        (["--logit-scale", "inf"], "--logit-scale must be a finite number > 0"),
        (["--embedding-noise", "-1"], "--embedding-noise must be a finite number > 0"),
        (["--hidden", "-3"], "--hidden must be an integer >= 1"),
        (["--margin", "0.1", "--hidden", "8"], "--margin-mode 'pairwise' needs a linear head"),
        (["--backbone", '{"bogus": 1}'], "unknown backbone option(s) ['bogus']"),
        (["--backbone", "[4, 8]"], "--backbone must be a JSON object"),
        (["--backbone-checkpoint", "missing.pt"], "does not exist"),
        (["--no-train-backbone"], "train_backbone=False needs a backbone_checkpoint"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--workers", "-1"], "--workers must be a non-negative integer"),
        (["--dataset", "mnist"], "--dataset must be one of"),
        (["--device", NO_GPU], "--device "),
        (["--out", "a_file"], "--out must be a folder path")]


@pytest.mark.parametrize("change, message", FARS)
def test_fars_training_refuses_each_bad_flag_before_writing(inputs, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    argv = _argv(["train", "--dataset", "digits", "--backbone", BACKBONE, "--epochs", "1", "--batch-size", "256",
                  "--out", str(out), "--no-progress", "--no-evaluate"], _paths(change, inputs))
    _refused(fars_pipeline.main, argv, "rsbook.fars train", message, out, inputs, capsys)


def _settings(**changes) -> list:
    settings = json.loads(json.dumps(SETTINGS))
    for key, value in changes.items():
        if isinstance(value, dict):
            settings[key].update(value)
        else:
            settings[key] = value
    return ["--settings", json.dumps(settings)]


IMAGE = [(["--num-examples", "0"], "--num-examples must be an integer >= 1"),
         (["--chunk-size", "0"], "--chunk-size must be an integer >= 1"),
         (["--seed", "-1"], "--seed must be a non-negative integer"),
         (["--num-threads", "0"], "--num-threads must be an integer >= 1"),
         (["--label", "../elsewhere"], "--label must be a plain name"),
         (["--dataset", "mnist"], "--dataset must be one of"),
         (["--arch", "resnet50"], "arch 'resnet50' was requested"),
         (["--checkpoint", "missing.pt"], "does not exist"),
         (["--device", NO_GPU], "--device "),
         (["--root", "a_file"], "--root must be a folder path"),
         (_settings(n0=0), "n0 (in --settings) must be an integer >= 1"),
         (_settings(n=0), "n (in --settings) must be an integer >= 1"),
         (_settings(alpha=2), "alpha (in --settings) must lie strictly between 0 and 1"),
         (_settings(batch_size=0), "batch_size (in --settings) must be an integer >= 1"),
         (_settings(fixed_sigma=-1), "fixed_sigma (in --settings) must be a finite number > 0"),
         (_settings(sigma0=0), "sigma0 (in --settings) must be a finite number > 0"),
         (_settings(iso={"iterations": 0}), "iso, the Isotropic optimiser's settings: iterations must be"),
         (_settings(iso={"bogus": 1}), "iso, the Isotropic optimiser's settings: Isotropic settings take"),
         (_settings(iso={"outputs": "softmax"}), "outputs must be 'logits'"),
         (_settings(ancer={"kappa": -1}), "ancer, the ANCER optimiser's settings: kappa must be a number >= 0"),
         (_settings(rancer={"clip_sigma": [2, 0]}), "rancer, the RANCER optimiser's settings: clip_sigma must be"),
         (_settings(rancer={"lanczos_steps": 0}), "lanczos_steps must be an integer >= 1"),
         (["--settings", "{not json"], "--settings must be a JSON object")]


@pytest.mark.parametrize("change, message", IMAGE)
def test_ancer_certify_image_refuses_each_bad_flag_and_setting_before_writing(inputs, tmp_path, capsys, change,
                                                                              message):
    root = tmp_path / "root"
    argv = _argv(["certify-image", "--checkpoint", str(inputs / "checkpoint.pt"), "--dataset", "digits",
                  "--num-examples", "2", "--chunk-size", "2", "--num-threads", "1", "--root", str(root),
                  "--no-progress", *_settings()], _paths(change, inputs))
    _refused(ancer_pipeline.main, argv, "rsbook.ancer certify-image", message, root, inputs, capsys)


def test_the_fars_chapter_calls_refuse_before_writing(tmp_path):
    """The FaRS chapter's resumable calls (no command line) check CERTIFY's and the attacks' arguments, the
    seed included, before their run folders are begun."""
    from torch import nn

    from rsbook.fars import FaRS, sll_backbone

    root = tmp_path / "root"
    model = FaRS(sll_backbone((1, 8, 8), widths=[4], depths=[1], embedding_dim=8), nn.Linear(8, 10)).eval()
    z, labels, data = torch.zeros(2, 8), [0, 1], [(torch.zeros(1, 8, 8), 0), (torch.zeros(1, 8, 8), 1)]
    certify = {"num_classes": 10, "sigma": 0.25, "n0": 10, "n": 20, "alpha": 0.01, "batch_size": 20}
    attack = {"steps": 1, "batch_size": 2}
    calls = [
        (lambda: fars_pipeline.smoothing_certificates(root, "h", model.head, z, labels, [0, 1],
                                                      **{**certify, "n0": 0}), "n0 must be an integer >= 1"),
        (lambda: fars_pipeline.smoothing_certificates(root, "h", model.head, z, labels, [0, 1], seed=-1, **certify),
         "seed must be a non-negative integer"),
        (lambda: fars_pipeline.sparsemax_certificates(root, "s", model.head, z, labels, [0, 1], r=1.0,
                                                      bound="chernoff", **certify), "bound must be one of"),
        (lambda: fars_pipeline.pgd_robustness(root, "p", model, data, [0, 1], [0.1], seed=-1, **attack),
         "seed must be a non-negative integer"),
        (lambda: fars_pipeline.smoothed_pgd_robustness(root, "q", model, data, [0, 1], [0.1], num_classes=10,
                                                       sigma=0.25, r=1.0, num_noise=0, n_predict=10, **attack),
         "num_noise must be an integer >= 1"),
    ]
    for call, message in calls:
        with pytest.raises(ValueError, match=message):
            call()
        assert not root.exists()
