"""The evidence benchmark's bookkeeping (benchmarks/evidence.py): MAC matching, uniform widths, cells, merging."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coevo.config import config_from_dict
from coevo.core.runs import mark_run_dir
from coevo.models import GeneratorArch, ResnetGenerator, save_generator
from coevo.prune import Genome, macs_ratio_of, slim
from coevo.prune.baselines import filter_importance
from coevo.search import MACS_CONVENTION, MACS_SIZE
from coevo.train.init import init_weights

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # evidence.py imports paired_stats as the scripts do
SPEC = importlib.util.spec_from_file_location("evidence", BENCH / "evidence.py")
ev = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ev)


def _teacher(ngf=8, n_blocks=2, seed=0):
    g = ResnetGenerator(GeneratorArch.full(ngf=ngf, n_blocks=n_blocks))
    return init_weights(g, torch.Generator().manual_seed(seed)).eval()


@pytest.fixture(scope="module")
def teacher():
    return {"G_A": _teacher(seed=0), "G_B": _teacher(seed=1)}


def _cfg():
    return config_from_dict({"model": {"ngf": 8, "n_blocks": 2}, "search": {"channel_multiple": 1}})


@pytest.mark.parametrize("budget", [0.1, 0.05])
@pytest.mark.parametrize("arm", ["l1", "random", "uniform", "uniform-scratch"])
def test_every_arm_lands_within_one_percent_of_the_budget(teacher, arm, budget, tmp_path):
    genomes, info = ev.matched_pair(arm, budget, 3, _cfg(), None, teacher, tmp_path, ev.TOLERANCE)
    for d in ("G_A", "G_B"):
        ratio = macs_ratio_of(genomes[d], MACS_SIZE, MACS_CONVENTION)
        assert abs(ratio / budget - 1) <= ev.TOLERANCE, (d, ratio)
        assert info["match"][d]["within_tolerance"] and info["match"][d]["macs_ratio"] == pytest.approx(ratio)


def test_matching_keeps_the_filters_it_had_and_moves_by_importance(teacher):
    g = teacher["G_A"]
    scores = filter_importance(g)
    start = ev.uniform_genome(g, 0.05)
    # far from the budget on purpose: 0.05's genome matched to 0.1 must only add filters
    out, info = ev.matched(start, g, 0.1, scores)
    assert info["within_tolerance"] and info["macs_ratio_before_match"] < 0.09
    for name, mask in start.masks.items():
        assert (out.masks[name] | mask == out.masks[name]).all(), name  # nothing it kept was dropped
        added = np.flatnonzero(out.masks[name] & ~mask)
        if len(added):  # the added ones are the best of those it had dropped
            dropped_before = np.flatnonzero(~mask)
            best = dropped_before[np.argsort(-scores[name][dropped_before], kind="stable")][:len(added)]
            assert sorted(best.tolist()) == added.tolist(), name


def test_match_reports_a_budget_it_cannot_reach(teacher):
    g = teacher["G_A"]
    fitter = ev.WidthFitter(g.arch, MACS_SIZE, False, 1, 1, MACS_CONVENTION)
    too_small = float(fitter.min_macs()) * 0.5
    _, within = ev.match_macs(fitter, fitter.lo.copy(), too_small)
    assert not within


def test_uniform_widths_are_one_fraction_of_every_group(teacher):
    g = teacher["G_A"]
    for budget in (0.1, 0.05, 0.3):
        genome = ev.uniform_genome(g, budget)
        f = genome.meta["fraction"]
        for name, full in g.arch.widths.items():
            assert genome.widths()[name] == max(1, int(np.floor(f * full + 0.5 + 1e-9))), (budget, name)
        assert macs_ratio_of(genome, MACS_SIZE, MACS_CONVENTION) <= budget + 1e-12
        # the kept filters are the ones with the largest L1 norm
        scores = filter_importance(g)
        for name, mask in genome.masks.items():
            top = np.argsort(-scores[name], kind="stable")[:int(mask.sum())]
            assert sorted(top.tolist()) == np.flatnonzero(mask).tolist()


# ----------------------------------------------------------------------------- cells
fake_training_epochs: list = []  # (finetune.epochs, finetune.epochs_decay) of every fake fine-tuning


@pytest.fixture
def fake_training(monkeypatch, teacher):
    """finetune_genomes writes the slim pair untrained; the test scores are made up but deterministic."""
    import coevo.train.finetune as ft

    calls = []
    fake_training_epochs.clear()

    def fake_finetune(cfg, paths, genomes, out, resume=False, force=False, source=None):
        calls.append((source["arm"], cfg.finetune.mode, cfg.finetune.init, cfg.seed)
                     + tuple(source[k] for k in ("search_dir", "supernet_dir") if k in source))
        fake_training_epochs.append((cfg.finetune.epochs, cfg.finetune.epochs_decay))
        Path(out).mkdir(parents=True, exist_ok=True)
        for d in ("G_A", "G_B"):
            save_generator(slim(teacher[d], genomes[d]), Path(out) / f"{d}.pt")
        return Path(out)

    def fake_scores(students, teacher_, data):
        w = sum(students["G_A"].arch.widths.values())
        return {"psnr_teacher_AB": 20.0 + w / 100, "psnr_teacher_BA": 21.0, "psnr_gt_AB": 15.0, "psnr_gt_BA": 16.0}

    monkeypatch.setattr(ft, "finetune_genomes", fake_finetune)
    monkeypatch.setattr(ev, "evaluate_pair", fake_scores)
    return calls


@pytest.fixture
def work(tmp_path):
    mark_run_dir(tmp_path / "work", "test")
    return tmp_path / "work"


def test_a_cell_is_written_once_then_skipped_and_twins_reuse(work, teacher, fake_training, monkeypatch):
    cfg = _cfg()
    # make L1 give the uniform pair, so that two arms land on the same pair (as a search can return L1's)
    monkeypatch.setattr(ev, "global_l1_genome", ev.uniform_genome)
    rec = ev.run_cell("l1", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert set(ev.CELL_KEYS) <= set(rec) and rec["same_as_l1"] and rec["macs_within_tolerance"]
    assert ev.cell_path(work, "distill", "l1", 0.1, 0).is_file()
    assert fake_training == [("l1", "distill", "teacher", 0)]
    assert ev.run_cell("l1", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE) == rec
    assert len(fake_training) == 1  # finished: read back, not trained again
    # uniform is the same pair as L1 (patched above): its numbers are L1's, not a second training
    uni = ev.run_cell("uniform", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert uni["same_as_l1"] and uni["reused_from"] == "l1_b0.1_s0" and len(fake_training) == 1
    assert uni["psnr_teacher_AB"] == rec["psnr_teacher_AB"]
    # the scratch arm has the same widths but other weights: trained, and said to be L1's widths
    scr = ev.run_cell("uniform-scratch", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert scr["init"] == "scratch" and scr["same_as_l1"] and "reused_from" not in scr
    assert fake_training[-1] == ("uniform-scratch", "distill", "scratch", 0)
    # another recipe or seed is another cell
    ev.run_cell("l1", 0.1, 1, "gan", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert fake_training[-1] == ("l1", "gan", "teacher", 1)


def test_the_supernet_arm_cuts_its_students_from_the_supernet_and_is_compared(work, teacher, fake_training,
                                                                              monkeypatch):
    cfg = _cfg()

    def fake_supernet_search(cfg_, paths, work_, budget, seed):
        return {d: ev.uniform_genome(teacher[d], budget) for d in ev.DIRECTIONS}, {"search_folder": "SEARCH"}

    monkeypatch.setattr(ev, "supernet_search_pair", fake_supernet_search)
    rec = ev.run_cell("coevo-supernet", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    # the students come from the supernet (the search folder records it), not from scratch nor a teacher twin
    assert rec["init"] == "supernet" and "reused_from" not in rec
    assert fake_training == [("coevo-supernet", "distill", "teacher", 0, "SEARCH")]
    ev.run_cell("uniform", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert len(fake_training) == 2  # the same widths from the teacher's weights are another cell
    assert "coevo-supernet" not in ev.parse_args(["--task", "snow"]).arms  # on request only
    cells = [{"recipe": "distill", "budget": 0.05, "arm": a, "seed": s, "psnr_teacher_AB": v + s * 0.1,
              "psnr_teacher_BA": v, "psnr_gt_AB": 1.0, "psnr_gt_BA": 1.0}
             for a, v in (("coevo", 20.0), ("coevo-supernet", 21.0), ("l1", 19.0)) for s in range(3)]
    names = set(ev.summarise(cells)["psnr_teacher"])
    # coevo-supernet against the baselines and the proxy search (once, not also as coevo - coevo-supernet)
    assert names == {"distill b0.05: coevo - l1", "distill b0.05: coevo-supernet - l1",
                     "distill b0.05: coevo-supernet - coevo"}


def test_the_supernet_controls_train_longer_or_from_the_supernet_and_are_compared(work, teacher, fake_training,
                                                                                 monkeypatch):
    """l1-long: the L1 pair with supernet.steps more fine-tuning steps (not a reuse of the L1 cell); l1-supernet:
    the L1 pair cut from the budget's supernet; both are compared with the supernet arm."""
    cfg = ev._cfg_with(_cfg(), ["supernet.steps=100", "finetune.epochs=2", "finetune.epochs_decay=1"])
    monkeypatch.setattr(ev, "long_schedule", lambda cfg_, data: ev.stretched_epochs(2, 1, 100, 30))
    monkeypatch.setattr(ev, "budget_supernet", lambda cfg_, paths, work_, budget: work_ / f"SN{budget:g}")
    ev.run_cell("l1", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    rec = ev.run_cell("l1-long", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    # 30 steps an epoch: 100 more steps are 4 more epochs, split 2:1 like the config's 2 + 1
    assert rec["finetune_epochs"] == [5, 2] and "reused_from" not in rec and rec["same_as_l1"]
    assert fake_training_epochs == [(2, 1), (5, 2)]
    sn = ev.run_cell("l1-supernet", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert sn["init"] == "supernet" and sn["supernet_folder"] == str(work / "SN0.1") and "reused_from" not in sn
    assert fake_training[-1] == ("l1-supernet", "distill", "teacher", 0, str(work / "SN0.1"))
    cells = [{"recipe": "distill", "budget": 0.05, "arm": a, "seed": s, "psnr_teacher_AB": v + s * 0.1,
              "psnr_teacher_BA": v, "psnr_gt_AB": 1.0, "psnr_gt_BA": 1.0}
             for a, v in (("coevo-supernet", 21.0), ("l1-long", 19.0), ("uniform-long", 19.5), ("l1-supernet", 20.0),
                          ("coevo", 20.5), ("coevo-long", 22.0)) for s in range(3)]
    # the controls face the supernet arm only (coevo - l1-long would only widen the Holm family)
    assert set(ev.summarise(cells)["psnr_teacher"]) == {
        f"distill b0.05: coevo-supernet - {a}" for a in ("l1-long", "uniform-long", "l1-supernet", "coevo")} | {
        f"distill b0.05: coevo-long - {a}" for a in ("l1-long", "uniform-long")}


def test_the_rerank_arm_re_ranks_a_copy_of_the_finished_supernet_search(work, teacher, fake_training, monkeypatch):
    """coevo-supernet-rerank: the supernet arm's finished search is copied (the original untouched) and resumed
    with the re-rank settings (no generation runs again); its choice is cut from the supernet; a finished copy
    is read back; it is compared with the baselines, the supernet arm and its controls."""
    import coevo.search as search_pkg

    cfg = _cfg()
    base = work / ev.SEARCH_FOLDERS["coevo-supernet"] / "b0.1_s0"

    def fake_base(cfg_, paths, work_, budget, seed, rerank=False):
        assert not rerank
        (base / "genomes").mkdir(parents=True, exist_ok=True)
        for d in ev.DIRECTIONS:
            ev.uniform_genome(teacher[d], budget).save_json(base / "genomes" / f"best_{d}.json")
        (base / "search.json").write_text(json.dumps({"generations": 1, "wall_time_s": 5.0}))
        return {d: ev.uniform_genome(teacher[d], budget) for d in ev.DIRECTIONS}, {"search_folder": str(base),
                                                                                   "supernet_folder": "SN"}

    runs = []

    nets = teacher

    def fake_run_search(cfg_, folder, teacher=None, resume=False, progress=True, **kw):
        runs.append((Path(folder), resume, cfg_.search.fitness, cfg_.search.rerank_top, cfg_.search.trained_steps))
        assert not (Path(folder) / "search.json").exists()  # the copy's own summary is written by its re-rank
        for d in ev.DIRECTIONS:
            ev.global_l1_genome(nets[d], 0.1).save_json(Path(folder) / "genomes" / f"best_{d}.json")
        (Path(folder) / "search.json").write_text(json.dumps({"generations": 1, "wall_time_s": 9.0, "rerank": {"top": 8}}))

    plain = ev.supernet_search_pair
    monkeypatch.setattr(ev, "supernet_search_pair",
                        lambda *a, rerank=False: plain(*a, rerank=True) if rerank else fake_base(*a))
    monkeypatch.setattr(search_pkg, "run_search", fake_run_search)
    rec = ev.run_cell("coevo-supernet-rerank", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    folder = work / ev.SEARCH_FOLDERS["coevo-supernet-rerank"] / "b0.1_s0"
    assert runs == [(folder, True, "supernet", ev.RERANK["top"], ev.RERANK["steps"])]
    assert json.loads((base / "search.json").read_text()) == {"generations": 1, "wall_time_s": 5.0}  # the original is untouched
    assert rec["init"] == "supernet" and rec["same_as_l1"] and rec["rerank"] == ev.RERANK
    assert rec["search_seconds"] == 9.0  # the copy's summary: the search and its re-rank
    assert fake_training == [("coevo-supernet-rerank", "distill", "teacher", 0, str(folder))]
    ev.supernet_search_pair(cfg, None, work, 0.1, 0, rerank=True)
    assert len(runs) == 1  # finished: read back
    cells = [{"recipe": "distill", "budget": 0.05, "arm": a, "seed": s, "psnr_teacher_AB": v + s * 0.1,
              "psnr_teacher_BA": v, "psnr_gt_AB": 1.0, "psnr_gt_BA": 1.0}
             for a, v in (("coevo-supernet-rerank", 22.0), ("coevo-supernet", 21.0), ("l1-supernet", 20.0),
                          ("l1", 19.0)) for s in range(3)]
    assert {n for n in ev.summarise(cells)["psnr_teacher"] if n.startswith("distill b0.05: coevo-supernet-rerank")} == {
        f"distill b0.05: coevo-supernet-rerank - {a}" for a in ("coevo-supernet", "l1-supernet", "l1")}


def test_long_schedule_adds_the_supernet_steps_in_epochs_of_the_data(tmp_path):
    assert ev.stretched_epochs(3, 3, 2000, 180) == [9, 9]  # the benchmark's: 6 + 12 epochs of 180 steps
    assert ev.stretched_epochs(3, 3, 25, 10) == [5, 4]  # 3 more epochs (not 2: at least as many steps)
    assert ev.stretched_epochs(1, 0, 0, 10) == [1, 0]
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", n=10, size=32)
    cfg = ev._cfg_with(_cfg(), [f"data.root={data}", "data.synthetic=false", "data.val_fraction=0",
                                "supernet.steps=25", "finetune.epochs=3", "finetune.epochs_decay=3"])
    assert ev.long_schedule(cfg, data) == ev.stretched_epochs(3, 3, 25, 10)


def test_force_removes_only_the_named_cells_and_merge_keeps_the_rest(work, teacher, fake_training):
    cfg = _cfg()
    for seed in (0, 1):
        ev.run_cell("l1", 0.1, seed, "gan", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    named = [("gan", "l1", 0.1, 1)]
    assert ev.remove_cells(work, named) == 2  # its record and its fine-tune folder
    assert ev.cell_path(work, "gan", "l1", 0.1, 0).is_file()
    assert not ev.cell_path(work, "gan", "l1", 0.1, 1).exists()
    assert (work / "runs" / "gan" / "l1_b0.1_s0").is_dir() and not (work / "runs" / "gan" / "l1_b0.1_s1").exists()

    def cell(arm, seed, value, recipe="gan"):
        return {"recipe": recipe, "arm": arm, "budget": 0.1, "seed": seed, "psnr_teacher_AB": value}

    old = [cell("l1", 0, 1.0), cell("l1", 1, 2.0), cell("coevo", 0, 3.0), cell("l1", 0, 9.0, "distill")]
    merged = ev.merge_cells(old, [cell("l1", 1, 5.0)], named)
    assert {(c["recipe"], c["arm"], c["seed"]): c["psnr_teacher_AB"] for c in merged} == {
        ("gan", "l1", 0): 1.0, ("gan", "l1", 1): 5.0, ("gan", "coevo", 0): 3.0, ("distill", "l1", 0): 9.0}
    # a forced cell that did not finish again leaves no stale entry behind
    assert ("gan", "l1", 1) not in {(c["recipe"], c["arm"], c["seed"]) for c in ev.merge_cells(old, [], named)}


def test_summary_pairs_by_seed_and_corrects_over_the_table():
    cells = []
    noise = (0.03, -0.02, 0.01, -0.03)
    for seed in range(4):
        for arm, shift in (("coevo", 1.0), ("l1", 0.01 * (seed % 2)), ("uniform", 1.0 + noise[seed])):
            v = 20 + seed + shift
            cells.append({"recipe": "gan", "arm": arm, "budget": 0.05, "seed": seed, "psnr_teacher_AB": v,
                          "psnr_teacher_BA": v, "psnr_gt_AB": 10.0 + seed, "psnr_gt_BA": 10.0 + seed})
    cells.append({**cells[0], "seed": 9, "arm": "l1"})  # a seed coevo lacks: not paired
    s = ev.summarise(cells)["psnr_teacher"]
    assert set(s) == {"gan b0.05: coevo - l1", "gan b0.05: coevo - uniform"}
    l1 = s["gan b0.05: coevo - l1"]
    assert l1["n"] == 4 and l1["seeds"] == [0, 1, 2, 3] and l1["mean"] == pytest.approx(0.995)
    assert l1["verdict"] == "better" and l1["p_t_holm"] >= l1["p_t"]
    assert s["gan b0.05: coevo - uniform"]["verdict"] == "equivalent"  # a few hundredths either way: inside 0.15
    json.dumps(s)


# ----------------------------------------------------------------------------- teacher
def test_the_stopping_rule_compares_the_means_of_two_windows():
    # every 500 steps; window 1000: the last two evaluations against the two before them
    curve = [{"step": s, "psnr": p} for s, p in ((0, 10.0), (500, 14.0), (1000, 15.0), (1500, 15.5), (2000, 15.6))]
    assert ev.converged(curve[:4], 1000, 0.1) is None  # 1500 steps: no two full windows yet
    assert ev.converged(curve, 1000, 0.1) is None  # (15.5 + 15.6) / 2 against (14.0 + 15.0) / 2
    more = curve + [{"step": 2500, "psnr": 15.4}, {"step": 3000, "psnr": 15.8}]
    # (15.4 + 15.8) / 2 = 15.6 against 15.55: settled, although 15.8 - 15.4 alone is 0.4 dB
    assert ev.converged(more, 1000, 0.1) == {"from_step": 1000, "to_step": 3000, "change_db": pytest.approx(0.05),
                                             "mean_before_db": pytest.approx(15.55), "mean_last_db": pytest.approx(15.6)}
    # two single points agreeing by chance do not stop it while the windows still rise
    rising = curve + [{"step": 2500, "psnr": 16.4}, {"step": 3000, "psnr": 15.55}]
    assert ev.converged(rising, 1000, 0.1) is None
    assert ev.converged(curve[:1], 1000, 0.1) is None and ev.converged([], 1000, 0.1) is None
    # a fall stops it too: the teacher stopped improving
    falling = curve + [{"step": 2500, "psnr": 14.9}, {"step": 3000, "psnr": 14.7}]
    assert ev.converged(falling, 1000, 0.1)["change_db"] == pytest.approx(14.8 - 15.55)


def test_global_l1_gives_each_group_its_own_width_under_the_budget():
    from coevo.models.generator import GeneratorArch, ResnetGenerator

    torch.manual_seed(0)
    gen = ResnetGenerator(GeneratorArch.full(ngf=16, n_blocks=2))
    with torch.no_grad():  # make one group's filters clearly stronger than the rest
        dict(gen.named_convs())["stem"].weight.mul_(torch.linspace(0.1, 3.0, 16).view(16, 1, 1, 1))
    g = ev.global_l1_genome(gen, 0.1)
    u = ev.uniform_genome(gen, 0.1)
    assert ev.macs_ratio_of(g, ev.MACS_SIZE, ev.MACS_CONVENTION) <= 0.1
    assert g.widths() != u.widths()
    assert min(g.widths().values()) >= 1
    scores = filter_importance(gen)
    for name, mask in g.masks.items():  # the kept filters are each group's strongest
        kept, dropped = scores[name][mask], scores[name][~mask]
        assert not len(dropped) or kept.min() >= dropped.max()


@pytest.fixture
def teacher_cfg(tmp_path):
    from coevo.data.synthetic import make_synthetic_dataset

    data = tmp_path / "data"
    make_synthetic_dataset(data, size=32, n_train=8, n_test=2, seed=0, task="snow")
    return config_from_dict({
        "data": {"root": str(data), "synthetic": False, "load_size": 32, "crop_size": 32, "val_fraction": 0.25},
        "model": {"ngf": 4, "n_blocks": 1, "ndf": 4, "n_layers_d": 2},
        "train": {"log_every": 1, "pool_size": 2, "sample_every": 0},
    })


def test_the_teacher_learning_rate_stays_constant_to_the_cap(tmp_path, teacher_cfg):
    # 6 training images: an interval is one pass (6 steps), not eval_every (10); 5 intervals to the cap.
    # The schedule must not decay (nor turn negative) after cap / eval_every intervals.
    from coevo.models.io import safe_torch_load

    rec = ev.converge_teacher(teacher_cfg, tmp_path / "t", window=1000, cap=30, eval_every=10)
    assert [p["step"] for p in rec["curve"]] == [0, 6, 12, 18, 24, 30]
    assert rec["rule"]["eval_every_steps"] == 6
    ckpt = safe_torch_load(tmp_path / "t" / "checkpoint.pt")
    for opt in ("G", "D"):
        assert [g["lr"] for g in ckpt["optimizers"][opt]["param_groups"]] == [teacher_cfg.train.lr]


def test_an_interrupted_teacher_resumes_to_the_same_curve_and_weights(tmp_path, teacher_cfg, monkeypatch):
    from coevo.models.io import safe_torch_load
    from coevo.train.loop import CycleGANTrainer

    straight = ev.converge_teacher(teacher_cfg, tmp_path / "straight", window=100, cap=6, eval_every=2)
    assert straight["status"] == "done" and not straight["converged"] and straight["stopped_by"] == "cap"
    assert [p["step"] for p in straight["curve"]] == [0, 2, 4, 6] and straight["steps"] == 6
    assert (tmp_path / "straight" / "convergence.png").is_file()

    real = CycleGANTrainer.run_epoch
    calls = {"n": 0}

    def interrupted(self, dataset, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, dataset, epoch)

    monkeypatch.setattr(CycleGANTrainer, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.converge_teacher(teacher_cfg, tmp_path / "resumed", window=100, cap=6, eval_every=2)
    monkeypatch.setattr(CycleGANTrainer, "run_epoch", real)
    resumed = ev.converge_teacher(teacher_cfg, tmp_path / "resumed", window=100, cap=6, eval_every=2)
    assert resumed["curve"] == straight["curve"]
    for name in ("G_A.pt", "G_B.pt", "D_A.pt", "D_B.pt"):
        a = safe_torch_load(tmp_path / "straight" / name)["state_dict"]
        b = safe_torch_load(tmp_path / "resumed" / name)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # finished: read back, not trained again
    monkeypatch.setattr(CycleGANTrainer, "run_epoch", lambda *a: pytest.fail("trained a finished teacher again"))
    assert ev.converge_teacher(teacher_cfg, tmp_path / "resumed", window=100, cap=6, eval_every=2) == resumed


def test_the_readme_table_and_plot_come_from_the_cells(tmp_path, monkeypatch):
    import tables

    rng = np.random.default_rng(0)
    cells = [{"recipe": "distill", "budget": b, "arm": a, "seed": s, "macs_ratio_A": b, "macs_ratio_B": b * 1.005,
              "psnr_teacher_AB": 25 + (1.0 if a == "coevo" else 0.0) + rng.normal(0, 0.05),
              "psnr_teacher_BA": 26 + rng.normal(0, 0.05), "psnr_gt_AB": 15.0, "psnr_gt_BA": 16.0,
              "same_as_l1": a == "l1"} for b in (0.05, 0.02) for a in ("coevo", "l1", "uniform") for s in range(4)]
    result = {"tiny": False, "task": "snow", "cells": cells, "summary": ev.summarise(cells),
              "settings": {"config": {"model": {"ngf": 32, "n_blocks": 6}}, "macs_convention": "published",
                           "macs_size": 256, "tolerance": 0.01},
              "teacher": {"status": "done", "steps": 4000, "stopped_by": "cap", "final": {"psnr_AB": 20.0, "psnr_BA": 21.0},
                          "rule": {"window_steps": 2000}}}
    (tmp_path / "evidence_snow.json").write_text(json.dumps(result))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    text = tables.evidence_table()
    assert "capped at 4000 steps" in text
    assert "| distill | 0.05 | coevo (search) | 4 | 0.0500-0.0502 |" in text and text.count(" | - |") == 6  # not timed
    assert text.count("**better**") == 4  # coevo vs l1 and vs uniform, at both budgets
    assert "distill b0.02: coevo - uniform" in text
    assert ev.plot_cells(cells, tmp_path / "p.png").stat().st_size > 0


def test_speed_times_seed_0_of_every_cell_against_the_teacher(tmp_path, teacher, monkeypatch):
    from coevo.models import save_generator
    from coevo.prune.slim import slim

    work = tmp_path / "work"
    folder = work / "runs" / "distill" / "uniform_b0.1_s0"
    folder.mkdir(parents=True)
    for d in ev.DIRECTIONS:
        save_generator(slim(teacher[d], ev.uniform_genome(teacher[d], 0.1)), folder / f"{d}.pt")
    # the record's own path was relative to where it ran: the models are found under --work
    cells = [{"recipe": "distill", "arm": "uniform", "budget": 0.1, "seed": s,
              "finetune_folder": "elsewhere/runs/distill/uniform_b0.1_s0"}
             for s in (0, 1)] + [{"recipe": "distill", "arm": "l1", "budget": 0.1, "seed": 0, "reused_from": "x"}]
    monkeypatch.setattr(ev, "MACS_SIZE", 32)
    out = ev.measure_speed(cells, teacher, work, repeats=2)
    assert list(out["cells"]) == ["distill uniform_b0.1_s0"]  # seed 0 only; a reused cell has no models of its own
    v = out["cells"]["distill uniform_b0.1_s0"]
    assert set(v) == {"G_A", "G_B"} and all(v[d]["speedup"] > 0 for d in v)


def test_cells_are_grouped_by_recipe_budget_and_seed_with_their_arms_in_order():
    cells = [(r, a, b, s) for r in ("gan",) for b in (0.05, 0.1) for s in range(2) for a in ("coevo", "coevo-scratch")]
    groups = ev.cell_groups(cells)
    assert len(groups) == 4 and sum(map(len, groups)) == len(cells)
    for g in groups:  # a search and its scratch twin stay in one process, search first
        assert [c[1] for c in g] == ["coevo", "coevo-scratch"] and len({(c[0], c[2], c[3]) for c in g}) == 1


def test_cells_run_in_parallel_processes_give_the_one_process_results(tmp_path, teacher_cfg, monkeypatch):
    from coevo.models.teacher import find_teacher

    monkeypatch.setitem(sys.modules, "evidence", ev)  # spawned workers import the benchmark by name
    ev.converge_teacher(teacher_cfg, tmp_path / "teacher", window=100, cap=2, eval_every=2)
    paths = find_teacher(tmp_path / "teacher")
    teacher = {d: ev.load_generator(getattr(paths, d)).eval() for d in ev.DIRECTIONS}
    cfg = ev._cfg_with(teacher_cfg, ["search.channel_multiple=1", "finetune.epochs=1", "finetune.epochs_decay=0",
                                     "finetune.max_steps_per_epoch=2", "finetune.sample_every=0"])
    data = Path(teacher_cfg.data.root)
    cells = [("distill", a, 0.3, s) for s in range(2) for a in ("l1", "uniform")]
    one = {}
    for recipe, arm, budget, seed in cells:
        mark_run_dir(tmp_path / "one", "test")
        rec = ev.run_cell(arm, budget, seed, recipe, cfg, paths, teacher, data, tmp_path / "one", ev.TOLERANCE)
        one[(arm, seed)] = rec
    mark_run_dir(tmp_path / "two", "test")
    two = {(r["arm"], r["seed"]): r for r, _ in ev.run_parallel(cells, 2, cfg, paths, data, tmp_path / "two",
                                                               ev.TOLERANCE, threads=1)}
    assert set(two) == set(one)
    for key, rec in one.items():
        for k in ("psnr_teacher_AB", "psnr_teacher_BA", "psnr_gt_AB", "psnr_gt_BA", "macs_ratio_A", "widths"):
            assert two[key][k] == rec[k], (key, k)
        assert ev.cell_path(tmp_path / "two", "distill", key[0], 0.3, key[1]).is_file()


def test_cuda_cells_get_their_own_files_and_a_machine_without_cuda_is_told(tmp_path, monkeypatch):
    args = ev.parse_args(["--task", "dense", "--device", "cuda"])
    assert args.tag == "dense_cuda" and args.work == Path("benchmarks/work/evidence-dense-cuda")
    assert ev.parse_args(["--task", "dense"]).tag == "dense"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        ev.main(["--tiny", "--device", "cuda", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before any work


def test_the_floor_arm_searches_with_the_uniform_students_narrowest_width(work, teacher, fake_training,
                                                                           monkeypatch):
    cfg = _cfg()
    floor = ev.width_floor(teacher, 0.3)
    assert floor == min(min(ev.uniform_genome(teacher[d], 0.3).widths().values()) for d in ev.DIRECTIONS) > 1
    searched = []

    def fake_search(cfg_, paths, work_, budget, seed, min_channels=None):
        searched.append(min_channels)
        # a search result with one group at the floor: MAC matching must not take it below
        genomes = {}
        for d in ev.DIRECTIONS:
            g = Genome.all_keep(teacher[d].arch)  # far above the budget: matching must cut, but not the floor
            widths = g.widths()
            widths[min(widths, key=widths.get)] = min_channels
            genomes[d] = ev.with_widths(g, widths, filter_importance(teacher[d]))
        return genomes, {"search_folder": "FLOOR", **({} if min_channels is None else {"min_channels": min_channels})}

    monkeypatch.setattr(ev, "search_pair", fake_search)
    rec = ev.run_cell("coevo-floor", 0.3, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert searched[0] == floor and rec["min_channels"] == floor and rec["macs_within_tolerance"]
    assert all(min(rec["widths"][d].values()) >= floor for d in ev.DIRECTIONS)
    cells = [{"recipe": "distill", "budget": 0.05, "arm": a, "seed": s, "psnr_teacher_AB": v + s * 0.1,
              "psnr_teacher_BA": v, "psnr_gt_AB": 1.0, "psnr_gt_BA": 1.0}
             for a, v in (("coevo", 20.0), ("coevo-floor", 21.0), ("uniform", 19.0)) for s in range(3)]
    assert set(ev.summarise(cells)["psnr_teacher"]) == {
        "distill b0.05: coevo - uniform", "distill b0.05: coevo-floor - uniform", "distill b0.05: coevo-floor - coevo"}


def test_a_capped_teacher_goes_on_under_a_higher_cap_as_if_never_stopped(tmp_path, teacher_cfg):
    from coevo.models.io import safe_torch_load

    straight = ev.converge_teacher(teacher_cfg, tmp_path / "straight", window=100, cap=8, eval_every=2)
    capped = ev.converge_teacher(teacher_cfg, tmp_path / "later", window=100, cap=4, eval_every=2)
    assert capped["stopped_by"] == "cap" and capped["steps"] == 4
    assert ev.converge_teacher(teacher_cfg, tmp_path / "later", window=100, cap=4, eval_every=2) == capped
    later = ev.converge_teacher(teacher_cfg, tmp_path / "later", window=100, cap=8, eval_every=2)
    assert later["steps"] == 8 and later["curve"] == straight["curve"] and later["rule"]["cap_steps"] == 8
    for name in ("G_A.pt", "G_B.pt"):
        a = safe_torch_load(tmp_path / "straight" / name)["state_dict"]
        b = safe_torch_load(tmp_path / "later" / name)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_cells_record_the_held_out_training_fidelity_and_old_cells_get_it_when_read(work, teacher, fake_training):
    cfg = _cfg()
    rec = ev.run_cell("l1", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert "val_l1_teacher_AB" not in rec  # the fake fine-tuning wrote no finetune.json
    # the real one does: its selection metric on the held-out training images
    (work / "runs" / "distill" / "l1_b0.1_s0" / "finetune.json").write_text(
        json.dumps({"val": {"val_l1_A": 0.07, "val_l1_B": 0.03, "val_l1": 0.05}}))
    again = ev.run_cell("l1", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert again["val_l1_teacher_AB"] == 0.07 and again["val_l1_teacher_BA"] == 0.03
    assert json.loads(ev.cell_path(work, "distill", "l1", 0.1, 0).read_text())["val_l1_teacher_AB"] == 0.07
    assert len(fake_training) == 1  # read back, not trained again


def test_the_narrowest_width_table_ranks_cells_on_held_out_and_test_fidelity():
    import tables

    cells = []
    for i in range(8):  # G_A: wider bottleneck, better on both splits; G_B: the reverse on held-out data
        cells.append({"recipe": "distill", "budget": 0.05, "arm": "l1" if i % 2 else "coevo", "seed": i,
                      "init": "teacher", "widths": {"G_A": {"stem": 2 + i, "trunk": 30}, "G_B": {"stem": 2 + i}},
                      "val_l1_teacher_AB": 0.1 - 0.01 * i, "val_l1_teacher_BA": 0.01 * i,
                      "psnr_teacher_AB": 20.0 + i, "psnr_teacher_BA": 20.0 - 0.1 * i})
    scratch = dict(cells[0], arm="uniform-scratch", init="scratch")  # starts elsewhere: left out
    long = dict(cells[1], arm="l1-long", finetune_epochs=[9, 9])  # trained longer: left out
    text = tables.narrowest_width_table(cells + [scratch, long])
    row = [line for line in text.splitlines() if line.startswith("| distill | 0.05 |")]
    assert len(row) == 1 and "| 8 (coevo, l1) |" in row[0]
    held_a, held_b, test_a = (row[0].split(" | ")[i] for i in (3, 4, 5))
    assert held_a.startswith("+1.00") and held_b.startswith("-1.00") and test_a.startswith("+1.00")
    assert tables.narrowest_width_table(cells[:7]) == ""  # fewer than 8 cells at every budget


def test_cells_record_what_their_search_supernet_and_fine_tuning_cost(work, teacher, fake_training, monkeypatch):
    cfg = _cfg()

    def fake_supernet_search(cfg_, paths, work_, budget, seed):
        folder = work_ / ev.SEARCH_FOLDERS["coevo-supernet"] / f"b{budget:g}_s{seed}"
        folder.mkdir(parents=True)
        (folder / "search.json").write_text(json.dumps({"wall_time_s": 12.5, "generations": 50}))
        (work_ / "supernet" / f"b{budget:g}").mkdir(parents=True)
        (work_ / "supernet" / f"b{budget:g}" / "supernet.json").write_text(json.dumps({"train_seconds": 300.0}))
        return {d: ev.uniform_genome(teacher[d], budget) for d in ev.DIRECTIONS}, {"search_folder": str(folder)}

    monkeypatch.setattr(ev, "supernet_search_pair", fake_supernet_search)
    real_finetune = sys.modules["coevo.train.finetune"].finetune_genomes

    def finetune_with_record(cfg_, paths, genomes, out, **kw):
        real_finetune(cfg_, paths, genomes, out, **kw)
        (Path(out) / "finetune.json").write_text(json.dumps({"train_seconds": 31.5, "val": {}}))
        return Path(out)

    monkeypatch.setattr(sys.modules["coevo.train.finetune"], "finetune_genomes", finetune_with_record)
    rec = ev.run_cell("coevo-supernet", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert (rec["search_seconds"], rec["search_generations"], rec["supernet_seconds"], rec["finetune_seconds"]) == (
        12.5, 50, 300.0, 31.5)
    uni = ev.run_cell("uniform", 0.1, 0, "distill", cfg, None, teacher, Path("."), work, ev.TOLERANCE)
    assert uni["finetune_seconds"] == 31.5 and "search_seconds" not in uni and "supernet_seconds" not in uni


def test_the_cost_table_charges_the_supernet_to_the_whole_job():
    import tables

    def cell(arm, seed, search, ft, supernet=None):
        c = {"recipe": "distill", "budget": 0.05, "arm": arm, "seed": seed, "search_seconds": search,
             "search_generations": 49, "finetune_seconds": ft}
        return c if supernet is None else {**c, "supernet_seconds": supernet}

    cells = [cell("coevo", s, 100.0, 20.0) for s in range(3)] + [cell("coevo-supernet", s, 110.0, 20.0, 360.0)
                                                                 for s in range(3)]
    text = tables.evidence_cost_table(cells + [{"recipe": "distill", "budget": 0.05, "arm": "l1", "seed": 0}])
    rows = [line for line in text.splitlines() if line.startswith("| distill |")]
    assert rows[0] == "| distill | 0.05 | coevo (search) | 3 | 100 | 2.0 | 0 | 20 | 2.0 | - |"
    assert rows[1] == "| distill | 0.05 | coevo on a supernet | 3 | 110 | 2.2 | 360 | 20 | 8.2 | 4.08x |"
    assert tables.evidence_cost_table([{"recipe": "distill", "budget": 0.05, "arm": "coevo", "seed": 0}]) == ""


def test_refresh_reads_finished_cells_back_and_trains_nothing(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        ev.parse_args(["--refresh", "--force"])
    # no finished teacher: refused before anything is trained
    monkeypatch.setattr(ev, "converge_teacher", lambda *a, **k: pytest.fail("trained a teacher under --refresh"))
    argv = ["--tiny", "--refresh", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    with pytest.raises(SystemExit, match="no finished teacher"):
        ev.main(argv)
    # a finished teacher and one finished cell of the four named: only that one is read back, nothing trained
    teacher = tmp_path / "work" / "teacher"
    teacher.mkdir(parents=True)
    for d in ("G_A", "G_B"):
        save_generator(_teacher(seed=0), teacher / f"{d}.pt")
    record = {"status": "done", "converged": True, "curve": [{"step": 0, "psnr": 1.0, "psnr_AB": 1.0, "psnr_BA": 1.0}],
              "rule": {"window_steps": 2, "tol_db": 0.1}, "final": {}, "steps": 0}
    (teacher / "convergence.json").write_text(json.dumps(record))
    monkeypatch.setattr(ev, "converge_teacher", lambda *a, **k: record)
    monkeypatch.setattr(ev, "run_cell", lambda arm, budget, seed, recipe, *a: json.loads(
        ev.cell_path(tmp_path / "work", recipe, arm, budget, seed).read_text()))
    cell = {"arm": "coevo", "budget": 0.1, "seed": 1, "recipe": "gan", "macs_ratio_A": 0.1, "macs_ratio_B": 0.1,
            "psnr_teacher_AB": 20.0, "psnr_teacher_BA": 21.0, "psnr_gt_AB": 15.0, "psnr_gt_BA": 16.0,
            "same_as_l1": False, "macs_within_tolerance": True}
    path = ev.cell_path(tmp_path / "work", "gan", "coevo", 0.1, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(cell))
    assert ev.main(argv) == 0
    out = json.loads((tmp_path / "out" / "evidence_snow.json").read_text())
    assert [(c["arm"], c["seed"]) for c in out["cells"]] == [("coevo", 1)]


def test_held_out_comparisons_pair_by_seed_on_the_held_out_l1():
    import tables

    cells = [{"recipe": "distill", "budget": 0.05, "arm": a, "seed": s,
              "val_l1_teacher_AB": v + 0.001 * s, "val_l1_teacher_BA": v}
             for a, v in (("coevo", 0.05), ("l1", 0.06)) for s in range(4)]
    text = tables.held_out_comparisons(cells + [{"recipe": "distill", "budget": 0.05, "arm": "uniform", "seed": 0}])
    rows = [line for line in text.splitlines() if line.startswith("| distill b0.05")]
    # coevo's L1 is 0.01 lower on every seed: +10 in -L1 x 1000, no spread, so decided
    assert len(rows) == 1 and rows[0].startswith("| distill b0.05: coevo - l1 | 4 | +10.00 [+10.00, +10.00] |")
    assert rows[0].endswith("| better |")
    assert tables.held_out_comparisons(cells[:1]) == ""
