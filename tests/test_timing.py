"""The measuring core both coevo bench and the latency tables time through."""
import torch

from coevo.deploy import timing


def test_rotating_rounds_start_one_later_each_round():
    assert list(timing.rotating_rounds("abc", 4)) == list("abcbcacabab" + "c")


def test_median_ms_discards_the_warmup_calls(monkeypatch):
    times = iter([100.0, 100.0, 1.0, 3.0, 2.0])
    monkeypatch.setattr(timing, "wall_ms", lambda call, device=None: (call(), next(times))[1])
    calls = []
    assert timing.median_ms(lambda: calls.append(1), warmup=2, repeats=3) == 2.0
    assert len(calls) == 5


def test_wall_ms_times_the_call_on_the_cpu():
    assert timing.wall_ms(lambda: torch.ones(8).sum(), torch.device("cpu")) >= 0


def test_machine_info_names_the_machine():
    info = timing.machine_info("cpu", threads=2)
    assert info["threads"] == 2 and info["device"] == "cpu" and info["cpu"] and info["torch"] == torch.__version__
