"""Plots and logs outside notebooks: `python -m mdm.plot`, the figures' data, TensorBoard event files."""

from __future__ import annotations

import json
import math
import pathlib
import struct

import numpy as np
import pytest
from matplotlib import image as mpimg

from mdm import plot
from mdm.data import ByteTokenizer
from mdm.metrics import MetricsWriter, read_metrics
from mdm.unmasking import Unmasking, reveal_steps


def _write_run(workdir: pathlib.Path, floor: float, steps: int = 50, config: dict | None = None, **kw) -> list[dict]:
    """A run's metrics.jsonl (train every step, eval every 10) through MetricsWriter; returns the records."""
    writer = MetricsWriter(workdir / "metrics.jsonl", **kw)
    records = [{"step": 0, "params": 1_234_567}]
    for step in range(1, steps + 1):
        records.append(
            {
                "step": step,
                "train/loss": floor + 3.0 / step + 0.1 * math.sin(step),
                "train/lr": 1e-3 * min(step / 10, 1),
                "train/tokens_per_s": 5000.0 + 10 * step,
                "train/grad_norm": 2.0 / math.sqrt(step),
            }
        )
        if step % 10 == 0:
            records.append(
                {
                    "step": step,
                    "eval/nats_per_token": floor + 2.0 / step,
                    "eval/nats_per_token_stderr": 0.03,
                    "eval/bits_per_byte": (floor + 2.0 / step) / math.log(2),
                    "eval_ema/nats_per_token": floor + 2.5 / step,
                    "eval_ema/bits_per_byte": (floor + 2.5 / step) / math.log(2),
                }
            )
    for r in records:
        writer.write(r["step"], {k: v for k, v in r.items() if k != "step"})
    if config is not None:  # the layout orbax gives a checkpoint's JSON config item
        path = workdir / "checkpoints" / str(steps) / "config" / "metadata"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(config))
    return records


def _check_png(path: pathlib.Path) -> None:
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 300 and pixels.shape[2] in (3, 4), pixels.shape
    assert pixels[..., :3].std() > 0.05, f"{path} is blank"


def test_plot_cli_writes_every_panel_as_a_png(tmp_path, capsys):
    _write_run(tmp_path / "mdm", 2.0, tensorboard=False)
    _write_run(tmp_path / "ar", 1.6, tensorboard=False)
    out = tmp_path / "plots"
    assert plot.main(["--workdirs", f"{tmp_path / 'mdm'},{tmp_path / 'ar'}", "--out", str(out), "--labels", "MDM,AR"]) == 0
    names = {"curves", "train_loss", "eval_loss", "bits", "lr", "tokens_per_s", "grad_norm"}
    assert {p.name for p in out.iterdir()} == {f"{n}.png" for n in names}
    assert capsys.readouterr().out.split() == [str(out / f"{n}.png") for n in ["curves"] + [c.name for c in plot.CURVES]]
    for path in out.iterdir():
        _check_png(path)
    # One run without --out: its own plots/ folder.
    assert plot.main(["--workdirs", str(tmp_path / "ar")]) == 0 and (tmp_path / "ar" / "plots" / "curves.png").is_file()


def test_curves_draw_exactly_the_logged_values(tmp_path):
    config = {"objective": "ar", "train": {"batch_size": 8}, "data": {"seq_len": 16}}
    written = {
        "mdm": _write_run(tmp_path / "mdm", 2.0, tensorboard=False),
        "ar": _write_run(tmp_path / "ar", 1.6, config=config, tensorboard=False),
    }
    runs = plot.load_runs([tmp_path / "mdm", tmp_path / "ar"])
    assert [r.label for r in runs] == ["mdm (1.23M params)", "ar (ar, 1.23M params)"]
    fig = plot.curves_figure(runs, x="step")
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert len(panels) == 6
    eval_ax = next(ax for title, ax in panels.items() if title.startswith("validation NLL"))
    lines = eval_ax.get_lines()
    assert len(lines) == 4  # per run: params (solid) and EMA (dashed)
    for i, name in enumerate(("mdm", "ar")):
        expected = [(r["step"], r["eval/nats_per_token"]) for r in written[name] if "eval/nats_per_token" in r]
        np.testing.assert_allclose(lines[2 * i].get_xydata(), expected, rtol=0, atol=0)
        ema = [(r["step"], r["eval_ema/nats_per_token"]) for r in written[name] if "eval_ema/nats_per_token" in r]
        np.testing.assert_allclose(lines[2 * i + 1].get_xydata(), ema, rtol=0, atol=0)
        assert lines[2 * i].get_linestyle() == "-" and lines[2 * i + 1].get_linestyle() == "--"
    assert [t.get_text() for t in eval_ax.get_legend().get_texts()] == [r.label for r in runs]
    # Train loss: the raw values (faint), then the trailing mean over 2 values, recomputed here in a loop.
    train_ax = next(ax for title, ax in panels.items() if title.startswith("training loss"))
    raw, smooth = train_ax.get_lines()[:2]
    values = [r["train/loss"] for r in written["mdm"] if "train/loss" in r]
    np.testing.assert_array_equal(raw.get_ydata(), values)
    window = max(len(values) // 25, 2)
    mean = [sum(values[max(0, i + 1 - window) : i + 1]) / len(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(smooth.get_ydata(), mean, rtol=1e-12)
    # Tokens on the x axis: step x batch x seq_len from the saved config; a run without one is refused.
    ar_only = plot.curves_figure(runs[1:], x="tokens")
    line = next(ax for ax in ar_only.axes if ax.get_title().startswith("validation NLL")).get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [10 * 128, 20 * 128, 30 * 128, 40 * 128, 50 * 128])
    with pytest.raises(Exception, match="--x tokens needs the batch size and seq_len"):
        plot.curves_figure(runs, x="tokens")


def test_runs_without_bytes_plot_bits_per_token(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=False)
    writer.write(5, {"eval/nats_per_token": 1.0, "eval/bits_per_token": 1 / math.log(2)})
    fig = plot.curves_figure(plot.load_runs([tmp_path]))
    assert [ax.get_title() for ax in fig.axes] == [
        "validation NLL bound (solid: params, dashed: EMA)",
        plot._BITS_PER_TOKEN.title,
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--workdirs", "/no/such/run"], "error: no metrics.jsonl in /no/such/run; pass a run's workdir"),
        (["--workdirs", "RUN", "--labels", "a,b"], "error: 2 labels for 1 workdirs; give one label per workdir"),
        (["--workdirs", "RUN", "--x", "tokens"], "error: --x tokens needs the batch size and seq_len of"),
    ],
)
def test_plot_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    _write_run(tmp_path / "run", 2.0, steps=10, tensorboard=False)
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in args] + ["--out", str(tmp_path / "out")]
    assert plot.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_plot_cli_out_that_is_a_file_is_one_line(tmp_path, capsys):
    _write_run(tmp_path / "run", 2.0, steps=10, tensorboard=False)
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"")
    assert plot.main(["--workdirs", str(tmp_path / "run"), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {taken} is a file: give a directory for the PNGs, e.g. --out {tmp_path / 'plots'}\n"


def test_plot_skips_metrics_lines_without_a_step_or_with_garbage(tmp_path):
    written = _write_run(tmp_path / "run", 2.0, steps=10, tensorboard=False)
    with open(tmp_path / "run" / "metrics.jsonl", "ab") as f:
        f.write(b'{"eval/nats_per_token": 9.0}\n\xff\xfe\x00 garbage\n')
    run = plot.load_run(tmp_path / "run")
    assert run.records == written
    steps, values = run.series("eval/nats_per_token")
    assert steps.tolist() == [10] and values.tolist() == [written[-1]["eval/nats_per_token"]]
    plot.curves_figure([run])


def test_unmasking_figure_shows_the_reveal_steps_and_tokens(tmp_path):
    tok = ByteTokenizer()
    mask = tok.vocab_size
    final = np.asarray([[tok.bos_id, 104, 105, 32, 10], [tok.bos_id, 97, 98, 99, 100]], np.int32)  # "hi \n", "abcd"
    order = [[1, 3, 0, 2], [2, 0, 3, 1]]  # the call that reveals positions 1..4 of each row
    states = np.repeat(final[None], 5, axis=0)
    for b in range(2):
        for pos, call in enumerate(order[b], start=1):
            states[: call + 1, b, pos] = mask
    traj = Unmasking(states, np.zeros((4, 2), np.float32), reveal_steps(states, mask), mask)
    np.testing.assert_array_equal(traj.reveal_step_BxL, [[-1] + order[0], [-1] + order[1]])
    fig = plot.unmasking_figure(traj, tok, row=0, width=5)
    heat = fig.axes[0].images[0].get_array()
    assert heat.mask[:, 0].all() and not heat.mask[:, 1:].any()
    np.testing.assert_array_equal(heat.data[:, 1:], order)
    grid_ax = fig.axes[-1]
    assert [t.get_text() for t in grid_ax.texts] == ["?", "h", "i", "·", "↵"]  # BOS is not text
    fig.savefig(tmp_path / "u.png", dpi=80)
    assert mpimg.imread(tmp_path / "u.png")[..., :3].std() > 0.05
    np.testing.assert_allclose(traj.revealed_fraction_SxB()[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
    assert traj.snapshot_states(0, [0.5, 1.0]) == [2, 4]


# ----------------------------------------------------------------------------------------------
# TensorBoard event files


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: an independent reference for the TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path: pathlib.Path) -> list:
    """Every Event of a TFRecord file, checking both CRCs of every record."""
    from tensorboardX.proto import event_pb2

    data, events, pos = path.read_bytes(), [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == _masked(_crc32c(header))
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == _masked(_crc32c(body))
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    return events


def _scalars(events) -> list[tuple[int, str, float]]:
    return [(e.step, v.tag, v.simple_value) for e in events if e.HasField("summary") for v in e.summary.value]


def _expected(records) -> list[tuple[int, str, float]]:
    return [(r["step"], k, float(np.float32(v))) for r in records for k, v in r.items() if k != "step"]


def test_tensorboard_event_file_holds_the_metrics_and_follows_truncation(tmp_path):
    pytest.importorskip("tensorboardX")
    assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    records = _write_run(tmp_path, 2.0, steps=30, tensorboard=True)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert path.name.endswith(".mdm")
    events = _read_events(path)
    assert events[0].file_version == "brain.Event:2"
    assert _scalars(events) == _expected(records)
    # A resumed run drops records after its checkpoint: the event file is rewritten to match.
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)
    writer.truncate_after(20)
    writer.write(21, {"train/loss": 9.5})
    kept = read_metrics(tmp_path / "metrics.jsonl")
    assert kept[-1] == {"step": 21, "train/loss": 9.5} and max(r["step"] for r in kept[:-1]) == 20
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert _scalars(_read_events(path)) == _expected(kept)
    # Off: no event file; other files in the folder are never touched.
    (tmp_path / "events.out.tfevents.other").write_bytes(b"x")
    MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=False).truncate_after(-1)
    assert (tmp_path / "events.out.tfevents.other").exists() and len(list(tmp_path.glob("*.mdm"))) == 1
    MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True).truncate_after(-1)
    assert not list(tmp_path.glob("*.mdm")) and (tmp_path / "events.out.tfevents.other").exists()
