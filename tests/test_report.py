"""`cdc-aug report` over evaluation directories made in the test: two models (a sphere and
a box reconstructor) on a clean render set and on a masked-ILVR-like generate dir."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
import trimesh

from cdc_aug.cli import main as cli_main
from cdc_aug.errors import UserError
from cdc_aug.shards import ShardStore, iter_tar_samples, shard_paths
from eval.evaluate import evaluate
from eval.report import build_report, load_run


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    from render.api import render_dataset

    root = tmp_path_factory.mktemp("report")
    renders = root / "data" / "renders"
    render_dataset(renders, source="procedural", categories=("chair", "table"), max_shapes=2, views=1, size=48,
                   workers=1, seed=0, progress=False)
    # A generate-like run: the same keys with an image.png (colours inverted) and T_in 0.5.
    aug = root / "data" / "aug-t050"
    store = ShardStore(aug, "aug", stage="aug")

    def augmented():
        for path in shard_paths(renders):
            for raw in iter_tar_samples(path):
                from cdc_aug.samples import decode_png
                rgba = decode_png(raw["rgba.png"])
                yield {"__key__": raw["__key__"], "image.png": 255 - rgba[..., :3], "mask.png": raw["mask.png"],
                       "camera.json": raw["camera.json"], "meta.json": raw["meta.json"],
                       "aug.json": {"mode": "ilvr", "t_in": 0.5}}

    store.write(0, augmented())
    store.finalize(1, extra={"renders_dir": "../renders", "mode": "ilvr", "t_in": 0.5})
    shutil.copy(renders / "splits.json", aug / "splits.json")

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    box = trimesh.creation.box(extents=(0.6, 0.8, 0.6))
    models = {"svr-clean": lambda im, cam: sphere, "svr-t050": lambda im, cam: box}
    dirs = []
    for model, fn in models.items():
        for dom, data in (("clean", renders), ("t050", aug)):
            out = root / "eval" / f"{model}__{dom}"
            # no identity: the report reads the model from the directory name
            evaluate(data, fn, out, n_points=2000, save_meshes=2, progress=False)
            dirs.append(out)
    return root, dirs


def test_report_tables_plots_grid_and_html(eval_runs):
    root, dirs = eval_runs
    page = build_report(dirs, root / "report")
    out = page.parent
    md = (out / "report.md").read_text()
    s = json.loads((dirs[1] / "summary.json").read_text())  # svr-clean on the T_in 0.5 data
    assert s["domain"] == "t_in=0.5" and s["t_in"] == 0.5 and s["mode"] == "ilvr" and s["stage"] == "aug"
    cd = f"{s['overall']['chamfer_l1']:.4f}"
    # the Chamfer-L1 table: models x test domains, the clean model first
    table = md.split("### Chamfer-L1")[1].split("###")[0]
    assert "| model | clean | t_in=0.5 |" in table
    clean_row = next(line for line in table.splitlines() if line.startswith("| svr-clean"))
    assert cd in clean_row
    assert table.index("svr-clean") < table.index("svr-t050")
    for cat in ("chair", "table"):
        assert f"### {cat}" in md
    for name in ("vs_t_in_chamfer_l1.png", "vs_t_in_fscore_0_01.png", "vs_t_in_iou_2d.png", "augmentations.png",
                 "recon_svr-clean__clean.png", "recon_svr-t050__t_in_0_5.png"):
        assert (out / "figures" / name).stat().st_size > 1000, name
        assert f"figures/{name}" in md
    html = page.read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == md.count("![") and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http" not in html.split("<body>")[1].split("data:image")[0]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 * 3 * 5  # evaluations x (all + 2 categories) x metrics
    got = next(r for r in rows if r["model"] == "svr-clean" and r["test_domain"] == "t_in=0.5"
               and r["category"] == "all" and r["metric"] == "chamfer_l1")
    assert float(got["value"]) == pytest.approx(s["overall"]["chamfer_l1"])
    assert got["train_t_in"] == "" and load_run(dirs[2]).train_t_in == 0.5  # svr-t050 from its name
    # the grid: 2 test shapes x 2 domains, 2 inches a cell at 100 dpi
    from PIL import Image
    grid = np.asarray(Image.open(out / "figures" / "augmentations.png"))
    assert grid.shape[:2] == (400, 400)


def test_report_of_a_single_run_and_the_command(eval_runs, capsys):
    root, dirs = eval_runs
    assert cli_main(["report", str(dirs[0]), "--out", str(root / "single")]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (root / "single" / "report.md").read_text()
    assert "| model | clean |" in md and "No model in these evaluations was trained" in md


def test_report_bad_inputs(eval_runs, tmp_path, capsys):
    root, dirs = eval_runs
    with pytest.raises(UserError, match="no summary.json"):
        build_report([tmp_path], tmp_path / "r")
    with pytest.raises(UserError, match="both evaluate svr-clean on clean"):
        build_report([dirs[0], dirs[0]], tmp_path / "r")
    assert cli_main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_hostile_names_and_sample_paths_are_data_not_markup(eval_runs, tmp_path):
    """A `$`, `|` or formula in a model name, and a samples entry that climbs out of the
    evaluation directory: the report builds, escapes, and reads nothing outside."""
    root, dirs = eval_runs
    copies = []
    for d in dirs[:2]:
        c = tmp_path / d.name
        shutil.copytree(d, c)
        s = json.loads((c / "summary.json").read_text())
        s["model"] = "=cmd|$x$ <b>"
        s["samples"] = ["../../../etc/passwd", *s.get("samples", [])]
        (c / "summary.json").write_text(json.dumps(s))
        copies.append(c)
    page = build_report(copies, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "=cmd\\|$x$ &lt;b&gt;" in md and "<b>" not in md
    assert "etc/passwd" not in md and "etc/passwd" not in page.read_text()
    rows = list(csv.reader(open(tmp_path / "report" / "results.csv")))
    assert {r[0] for r in rows[1:]} == {"'=cmd|$x$ <b>"}  # a spreadsheet sees text, not a formula
    assert load_run(copies[0]).samples == [k for k in json.loads((copies[0] / "summary.json").read_text())["samples"]
                                           if not k.startswith("..")]
