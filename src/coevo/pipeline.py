"""The one-command compression pipeline: teacher -> search -> fine-tune -> export -> benchmark.

Each stage reads the previous stage's folder and writes its own under the run
folder. A stage that finished leaves ``stage.json``; on ``resume`` finished
stages are skipped and an interrupted stage resumes from its own checkpoint.

    RUN_DIR/
      config.yaml      resolved config of the whole job
      data/            the built-in data set (when the config asks for it)
      teacher/         coevo training run (or teacher.json pointing at the user's checkpoints)
      search/          co-evolutionary search run
      finetune/        fine-tuned slim pair (G_A.pt, G_B.pt)
      export/          TorchScript / ONNX / safetensors files with parity report
      bench/           latency of teacher and compressed, side by side
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import Config, dump_config
from .models.io import atomic_write_text
from .models.teacher import TeacherPaths, find_teacher
from .runs import RunDirError

log = logging.getLogger(__name__)

STAGES = ("data", "teacher", "search", "finetune", "export", "bench")


@dataclass
class StageResult:
    name: str
    path: Path
    seconds: float
    skipped: bool = False
    info: Dict = field(default_factory=dict)


def stage_done(path: Path) -> bool:
    return (path / "stage.json").is_file()


def _mark_done(path: Path, name: str, seconds: float, info: Dict | None = None) -> None:
    record = {"stage": name, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    record.update(info or {})
    atomic_write_text(path / "stage.json", json.dumps(record, indent=2))


def _stage_seconds(path: Path) -> float:
    try:
        return float(json.loads((path / "stage.json").read_text()).get("seconds", 0.0))
    except (OSError, ValueError):
        return 0.0


class Pipeline:
    """Runs the stages of a compression job in order; see the module docstring for the layout.

    ``teacher`` is an existing teacher (coevo run or reference checkpoint folder);
    without it the teacher is trained from ``cfg``. ``on_stage`` is called with
    each :class:`StageResult` (the CLI uses it to print progress).
    """

    def __init__(self, cfg: Config, out_dir: str | Path, teacher: Optional[str | Path] = None,
                 resume: bool = False, force: bool = False,
                 on_stage: Optional[Callable[[StageResult], None]] = None) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.teacher_src = Path(teacher) if teacher else None
        self.resume = resume
        self.force = force
        self.on_stage = on_stage or (lambda r: None)
        self.results: List[StageResult] = []

    # -- folders
    def dir(self, stage: str) -> Path:
        return self.out / stage

    def prepare(self) -> None:
        if self.out.exists() and any(self.out.iterdir()):
            if self.force:
                shutil.rmtree(self.out)
            elif not self.resume:
                raise RunDirError(
                    f"{self.out} already exists and is not empty; pass --resume to continue that run, "
                    "--force to overwrite it, or choose another --out"
                )
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume and (self.out / "config.yaml").exists():
            from .config import config_to_dict, load_config

            old = config_to_dict(load_config(self.out / "config.yaml"))
            new = config_to_dict(self.cfg)
            diff = _diff_keys(old, new)
            if diff:
                raise RunDirError(
                    f"cannot resume {self.out}: the config differs from the run's in {', '.join(diff)}; "
                    "resume with the same config and --set values, or start a new run"
                )
        dump_config(self.cfg, self.out / "config.yaml")

    # -- stages
    def _run_stage(self, name: str, fn: Callable[[Path, bool], Dict]) -> StageResult:
        path = self.dir(name)
        if stage_done(path):
            result = StageResult(name, path, _stage_seconds(path), skipped=True)
        else:
            # A stage folder holding its config.yaml was interrupted mid-run: resume it.
            # One without (killed before its first write) starts over.
            resume = (path / "config.yaml").is_file()
            if resume:
                log.info("stage %s: resuming in %s", name, path)
            elif path.exists():
                shutil.rmtree(path)
            t0 = time.perf_counter()
            info = fn(path, resume) or {}
            seconds = time.perf_counter() - t0
            _mark_done(path, name, seconds, info)
            result = StageResult(name, path, seconds, info=info)
        self.results.append(result)
        self.on_stage(result)
        return result

    def data_root(self) -> Path:
        if self.cfg.data.synthetic:
            return self.dir("data")
        return Path(self.cfg.data.root)

    def run(self) -> List[StageResult]:
        from .runs import apply_threads

        apply_threads(self.cfg.threads)
        self.cfg.data.root = str(self.data_root().resolve())
        self.prepare()
        if self.cfg.data.synthetic:
            self._run_stage("data", self._data)
        self._run_stage("teacher", self._teacher)
        self._run_stage("search", self._search)
        self._run_stage("finetune", self._finetune)
        self._run_stage("export", self._export)
        self._run_stage("bench", self._bench)
        return self.results

    def _data(self, path: Path, resume: bool) -> Dict:
        from .data.synthetic import make_synthetic_dataset

        d = self.cfg.data
        make_synthetic_dataset(path, size=d.load_size, n_train=d.synthetic_n_train,
                               n_test=d.synthetic_n_test, seed=self.cfg.seed, force=True)
        return {"root": str(path)}

    def _teacher(self, path: Path, resume: bool) -> Dict:
        if self.teacher_src is not None:
            paths = find_teacher(self.teacher_src)
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path / "teacher.json", json.dumps(paths.to_dict(), indent=2))
            return {"source": str(self.teacher_src.resolve())}
        from .train.teacher import train_teacher

        train_teacher(self.cfg, path, resume=resume)
        return {"source": "trained"}

    def teacher_paths(self) -> TeacherPaths:
        path = self.dir("teacher")
        if (path / "teacher.json").exists():
            return TeacherPaths.from_dict(json.loads((path / "teacher.json").read_text()))
        return find_teacher(path)

    def _search(self, path: Path, resume: bool) -> Dict:
        from .search import run_search

        teacher = self.teacher_src if self.teacher_src is not None else self.dir("teacher")
        result = run_search(self.cfg, path, teacher=teacher, resume=resume)
        return {"best_fitness": {d: result.summary.get("best", {}).get(d) for d in ("G_A", "G_B")}}

    def _finetune(self, path: Path, resume: bool) -> Dict:
        from .train.finetune import finetune

        finetune(self.dir("search"), path, resume=resume)
        return {}

    def _export(self, path: Path, resume: bool) -> Dict:
        from . import load_generator
        from .export import export_generator

        if path.exists():
            shutil.rmtree(path)  # exporting is cheap and idempotent: redo rather than patch
        path.mkdir(parents=True)
        report = {}
        for name in ("G_A", "G_B"):
            model = load_generator(self.dir("finetune") / f"{name}.pt")
            report[name] = export_generator(model, path, name, formats=tuple(self.cfg.export.formats),
                                            check_size=self.cfg.export.check_size, opset=self.cfg.export.opset,
                                            seed=self.cfg.seed)
        return {"max_abs_diff": {g: {f: r.get("max_abs_diff") for f, r in rep.items() if isinstance(r, dict)}
                                 for g, rep in report.items()}}

    def _bench(self, path: Path, resume: bool) -> Dict:
        from . import load_generator
        from .bench import benchmark_models, machine_info, plot_results, save_results

        path.mkdir(parents=True, exist_ok=True)
        b = self.cfg.bench
        teacher = self.teacher_paths()
        summary = {}
        all_results = []
        for name in ("G_A", "G_B"):
            models = {
                f"teacher {name}": load_generator(getattr(teacher, name)),
                f"coevo {name}": load_generator(self.dir("finetune") / f"{name}.pt"),
            }
            results = benchmark_models(models, size=b.size, batch=b.batch, threads=b.threads or None,
                                       device=self.cfg.device, backends=("eager",), warmup=b.warmup,
                                       repeats=b.repeats, seed=self.cfg.seed)
            all_results += results
            summary[name] = {r.name: {"latency_ms_median": r.latency_ms_median,
                                      "speedup_vs_first": r.speedup_vs_first} for r in results}
        save_results(all_results, path / "bench.json", machine_info())
        plot_results(all_results, path / "bench.png")
        return summary


# Settings that may change between an interrupted run and its resumption: where the
# data lies, and how many CPU threads (results are equal up to float rounding).
RESUMABLE_CHANGES = ("data.root", "threads")


def _diff_keys(old: Dict, new: Dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_keys(a, b, f"{prefix}{k}.")
        elif a != b and f"{prefix}{k}" not in RESUMABLE_CHANGES:
            out.append(f"{prefix}{k} ({a!r} -> {b!r})")
    return out
