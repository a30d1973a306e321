"""The one-command pipeline: every stage on a tiny config, resume, refusal, report and CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coevo import load_generator
from coevo.config import load_config
from coevo.pipeline import STAGES, Pipeline
from coevo.evaluation.report import build_report
from coevo.core.runs import RunDirError

REPO = Path(__file__).resolve().parents[1]

# The demo's config, shrunk: 32 px, a ngf-8 two-block teacher, two search generations.
TINY = [
    "data.synthetic_n_train=8", "data.synthetic_n_test=4", "data.load_size=32", "data.crop_size=32",
    "data.val_fraction=0.25",
    "model.ngf=8", "model.n_blocks=2", "model.ndf=8",
    "train.epochs=1", "train.epochs_decay=0", "train.log_every=4",
    "search.population=6", "search.generations=2", "search.eval_images=4", "search.eval_size=32",
    "finetune.epochs=1", "finetune.epochs_decay=0", "finetune.log_every=4",
    "export.formats=[torchscript,safetensors]", "export.check_size=40",
    "bench.size=32", "bench.warmup=1", "bench.repeats=2", "bench.threads=1",
]


def tiny_config(*extra: str):
    return load_config(REPO / "configs" / "demo.yaml", TINY + list(extra))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "run"
    cfg = tiny_config()
    seen = []
    Pipeline(cfg, out, on_stage=seen.append).run()
    return out, cfg, seen


def test_every_stage_runs_and_leaves_its_outputs(finished_run):
    out, cfg, seen = finished_run
    assert [r.name for r in seen] == list(STAGES)
    assert not any(r.skipped for r in seen)
    for stage in STAGES:
        assert (out / stage / "stage.json").is_file(), stage
    # the teacher in both namings, the search contract, the slim pair, the exports, the timings
    for f in ("G_A.pt", "latest_net_G_A.pth", "latest_net_D_B.pth"):
        assert (out / "teacher" / f).is_file()
    assert (out / "search" / "genomes" / "best_G_A.json").is_file()
    assert (out / "search" / "config.yaml").is_file()
    assert (out / "data" / "testA_gt_B").is_dir()
    teacher = load_generator(out / "teacher" / "G_A.pt")
    student = load_generator(out / "finetune" / "G_A.pt")
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert (out / "export" / "G_B.ts").is_file() and (out / "export" / "G_B.safetensors").is_file()
    bench = json.loads((out / "bench" / "bench.json").read_text())
    names = {r["name"] for r in bench["results"]}
    assert {"teacher G_A", "coevo G_A", "teacher G_B", "coevo G_B"} <= names


def test_report_measures_teacher_and_compressed_side_by_side(finished_run):
    out, cfg, _ = finished_run
    report = build_report(out, cfg)
    assert (out / "report.md").is_file() and json.loads((out / "report.json").read_text()) == json.loads(
        json.dumps(report, default=float))
    for direction in ("AtoB", "BtoA"):
        e = report["directions"][direction]
        assert e["macs_ratio"] <= cfg.search.macs_ratio + 1e-9  # the search's budget holds end to end
        assert e["coevo"]["macs"] < e["teacher"]["macs"]
        assert e["teacher"]["psnr"] is not None and e["coevo"]["psnr"] is not None
        assert 0 < e["coevo"]["psnr_to_teacher"] <= 100 and e["coevo"]["l1_to_teacher"] >= 0
        assert e["speedup"] > 0
        assert (out / e["grid"]).is_file()
    assert isinstance(report["all_checks_pass"], bool)
    md = (out / "report.md").read_text()
    for direction, e in report["directions"].items():  # the numbers above, in the tables the reader sees
        assert (f"| {direction} | coevo {e['generator']} | {e['coevo']['macs'] / 1e9:.3f} | "
                f"{e['coevo']['params'] / 1e6:.3f} |") in md
        assert f"| {direction} | {e['macs_ratio']:.3f} | {e['speedup']:.2f}x |" in md
        assert f"| {e['coevo']['psnr_to_teacher']:.2f} | {e['coevo']['l1_to_teacher']:.4f} |" in md
        assert f"![{direction}]({e['grid']})" in md


def test_resume_skips_finished_stages(finished_run):
    out, cfg, _ = finished_run
    before = (out / "finetune" / "G_A.pt").read_bytes()
    seen = []
    Pipeline(tiny_config(), out, resume=True, on_stage=seen.append).run()
    assert [r.name for r in seen] == list(STAGES) and all(r.skipped for r in seen)
    assert (out / "finetune" / "G_A.pt").read_bytes() == before


def test_resume_with_another_config_is_refused(finished_run):
    out, _, _ = finished_run
    with pytest.raises(RunDirError, match="search.macs_ratio"):
        Pipeline(tiny_config("search.macs_ratio=0.5"), out, resume=True).run()


def test_existing_output_is_refused_without_resume_or_force(finished_run, tmp_path):
    out, _, _ = finished_run
    with pytest.raises(RunDirError, match="--resume"):
        Pipeline(tiny_config(), out).prepare()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError):
        Pipeline(tiny_config(), user).prepare()
    assert (user / "precious.txt").read_text() == "keep me"


def test_interrupted_stage_resumes_from_its_folder(finished_run, tmp_path):
    """A stage without stage.json is rerun; the stages before it are skipped."""
    src, _, _ = finished_run
    import shutil

    out = tmp_path / "run"
    shutil.copytree(src, out)
    shutil.rmtree(out / "export")
    (out / "bench" / "stage.json").unlink()
    seen = []
    Pipeline(tiny_config(), out, resume=True, on_stage=seen.append).run()
    skipped = {r.name: r.skipped for r in seen}
    assert skipped == {"data": True, "teacher": True, "search": True, "finetune": True,
                       "export": False, "bench": False}
    assert (out / "export" / "G_A.ts").is_file()


def test_given_teacher_is_not_retrained(finished_run, tmp_path):
    """`coevo compress --teacher DIR` with reference-named checkpoints skips training."""
    src, _, _ = finished_run
    ref = tmp_path / "reference"
    ref.mkdir()
    for name in ("G_A", "G_B", "D_A", "D_B"):
        (ref / f"latest_net_{name}.pth").write_bytes((src / "teacher" / f"latest_net_{name}.pth").read_bytes())
    out = tmp_path / "run"
    cfg = tiny_config("search.generations=1", f"data.root={src / 'data'}", "data.synthetic=false")
    seen = []
    Pipeline(cfg, out, teacher=ref, on_stage=seen.append).run()
    assert [r.name for r in seen] == list(STAGES)
    recorded = json.loads((out / "data" / "stage.json").read_text())["data"]
    assert recorded["root"] == str((src / "data").resolve()) and recorded["builtin"] is True
    assert not (out / "data" / "trainA").exists()  # the given folder is used where it is
    assert not (out / "teacher" / "G_A.pt").exists()
    assert json.loads((out / "teacher" / "teacher.json").read_text())["G_A"].endswith("latest_net_G_A.pth")
    x = torch.zeros(1, 3, 32, 32)
    assert load_generator(out / "finetune" / "G_B.pt")(x).shape == x.shape


def _copy_with_config(src: Path, tmp_path: Path):
    """A copy of the finished run, and the tiny config written to a file (as a user would pass it)."""
    import shutil

    from coevo.config import dump_config

    out = tmp_path / "run"
    shutil.copytree(src, out)
    cfg_file = dump_config(tiny_config(), tmp_path / "tiny.yaml")
    return out, cfg_file


def test_cli_compress_refuses_then_resumes(finished_run, tmp_path, capsys):
    from coevo.cli import main

    out, cfg_file = _copy_with_config(finished_run[0], tmp_path)
    assert main(["compress", "--config", str(cfg_file), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["compress", "--config", str(cfg_file), "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(STAGES)


def test_cli_demo_resumes_and_writes_report_and_timing(finished_run, tmp_path, capsys):
    from coevo.cli import main

    out, cfg_file = _copy_with_config(finished_run[0], tmp_path)
    assert main(["demo", "--config", str(cfg_file), "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "demo finished in" in printed and str(out / "report.md") in printed
    timing = json.loads((out / "demo.json").read_text())
    assert timing["resumed"] is True and set(timing["stage_seconds"]) == set(STAGES)
    assert timing["finetune_recipe"] == "gan"  # the default recipe of compress and demo
    assert json.loads((out / "finetune" / "stage.json").read_text())["recipe"] == "gan"
    assert json.loads((out / "report.json").read_text())["finetune_recipe"] == "gan"
    assert json.loads((out / "report.json").read_text())["directions"]["AtoB"]["grid"] == "grid_AtoB.png"


def test_demo_teacher_keeps_its_discriminators_for_search_and_finetune(finished_run):
    """search.perceptual=auto on a teacher trained by coevo (with discriminators) is the discriminator metric."""
    out, cfg, _ = finished_run
    assert cfg.search.perceptual == "auto"
    assert json.loads((out / "search" / "search.json").read_text())["metric"] == "discriminator"
    assert json.loads((out / "finetune" / "finetune.json").read_text())["discriminators"] == "teacher"


def test_export_deploys_for_the_cpu_and_the_speed_check_names_its_runtime(finished_run, tmp_path):
    """With ONNX among the formats the export stage deploys for the CPU (INT8 calibrated on the run's
    training images when it passes its check), and bench and report judge that runtime."""
    import shutil

    src, _, _ = finished_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    shutil.rmtree(out / "export")
    shutil.rmtree(out / "bench")
    cfg = tiny_config("export.formats=[torch-export,onnx,safetensors]", "export.calibration_images=2")
    Pipeline(cfg, out, resume=True).run()
    report = json.loads((out / "export" / "export_report.json").read_text())
    for g, domain in (("G_A", "trainA"), ("G_B", "trainB")):
        deploy = report[g]["deploy"]
        assert deploy["target"] == "cpu" and deploy["int8"]["calibration"]["folder"].endswith(domain)
        int8_deployed = deploy["int8"]["ok"] and deploy["int8"]["faster"]  # INT8 only where it is also faster
        assert deploy["deployed"]["backend"] == ("onnxruntime-int8" if int8_deployed else "onnxruntime")
    bench = json.loads((out / "bench" / "bench.json").read_text())
    rows = {(r["name"], r["backend"]) for r in bench["results"]}
    backend = report["G_A"]["deploy"]["deployed"]["backend"]
    assert {("teacher G_A", "eager"), ("teacher G_A", backend), ("coevo G_A", "eager"),
            ("coevo G_A deployed", backend)} <= rows
    e = build_report(out, cfg)["directions"]["AtoB"]
    assert e["speed"]["backend"] == backend and e["speed"]["batch"] == 1
    assert f"speedup >= 3x ({backend}, batch 1, vs teacher eager)" in e["checks"]
    assert e["speedup"] == pytest.approx(e["speed"]["teacher_eager_ms"] / e["speed"]["coevo_ms"])
    assert f"| AtoB | {backend} | 1 |" in (out / "report.md").read_text()
