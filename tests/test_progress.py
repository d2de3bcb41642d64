"""Progress output (issue 13, item 5): tqdm's carriage-return frames on a terminal only; plain lines, one
per epoch or per N items, in files, pipes and CI logs."""

import io
import os
import subprocess
import sys

import pytest

from rsbook.progress import echo, is_terminal, track


class Terminal(io.StringIO):
    """A stream that says it is a terminal, to see what a user at a console gets."""

    def isatty(self):
        return True


def test_a_pipe_gets_one_line_every_n_items_and_a_closing_line():
    stream = io.StringIO()
    assert list(track(range(25), "certify log.tsv", unit="example", every=10, interval=None, stream=stream)) == \
        list(range(25))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" in ")[0] for line in lines] == ["certify log.tsv: 10/25 example",
                                                         "certify log.tsv: 20/25 example",
                                                         "certify log.tsv: 25/25 example"]
    assert all(line.endswith(" s") for line in lines)


def test_the_default_period_is_a_tenth_of_the_total_at_most_100():
    for total, lines in [(25, 8 + 1), (7, 7), (5000, 50)]:  # every 3, 1 and 100 items
        stream = io.StringIO()
        list(track(range(total), "x", interval=None, stream=stream))
        assert len(stream.getvalue().splitlines()) == lines, total


def test_postfix_and_unknown_total_in_plain_lines():
    stream = io.StringIO()
    bar = track(iter(range(3)), "epoch 1/2", unit="batch", every=0, interval=None, stream=stream)
    for _ in bar:
        bar.set_postfix(loss="0.123")
    assert stream.getvalue().splitlines()[0].startswith("epoch 1/2: 3 batch in ")
    assert stream.getvalue().rstrip().endswith(", loss=0.123")


def test_final_false_and_disable_print_nothing():
    stream = io.StringIO()
    list(track(range(30), "epoch", every=0, final=False, stream=stream))
    list(track(range(30), "off", disable=True, stream=stream))
    assert stream.getvalue() == ""


def test_a_terminal_gets_the_live_bar():
    stream = Terminal()
    assert is_terminal(stream) and not is_terminal(io.StringIO())
    assert list(track(range(5), "certify", stream=stream)) == list(range(5))
    assert "\r" in stream.getvalue() and "5/5" in stream.getvalue()


def test_echo_writes_whole_lines_in_both_modes():
    plain, terminal = io.StringIO(), Terminal()
    echo("epoch 1/2: loss 0.5", stream=plain)
    echo("epoch 1/2: loss 0.5", stream=terminal)
    assert plain.getvalue() == "epoch 1/2: loss 0.5\n"
    assert "epoch 1/2: loss 0.5\n" in terminal.getvalue()


@pytest.mark.parametrize("every", [-1, 2.5, True])
def test_bad_every_is_refused(every):
    with pytest.raises(ValueError, match="every"):
        track(range(3), "x", every=every)


def test_the_command_line_writes_no_carriage_return_into_a_pipe(tmp_path):
    """What CI and `rsbook ... 2> log` record: the training's start line and one line per epoch."""
    result = subprocess.run([sys.executable, "-m", "rsbook", "train", "--dataset", "digits", "--arch", "digits_cnn",
                             "--noise-sd", "0.25", "--epochs", "2", "--batch", "64", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("train digits_cnn on digits at noise_sd 0.25: 2 epochs, batch 64")
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1/2", "epoch 2/2"]
