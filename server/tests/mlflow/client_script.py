"""Drives CRT Lab's MLflow-compatible API with the real MLflow client (mlflow-skinny from PyPI).

Run by server/tests/mlflow.rs against a fresh server: MLFLOW_TRACKING_URI (and
MLFLOW_TRACKING_TOKEN when the server requires tokens) name it. Logs runs the way a PyTorch
script does, checks what the client reads back, checks ~20 search filters and order_by strings
against results computed here over the runs this script made, and prints a JSON summary on the
last line of stdout for the Rust side to check through /api/v1.
"""

import json
import math
import os
import sys
import tempfile

import mlflow
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


client = MlflowClient()

# ---- experiments ----
exp = mlflow.set_experiment("crt-mlflow-test")
again = mlflow.set_experiment("crt-mlflow-test")
check(exp.experiment_id == again.experiment_id, "set_experiment twice gives one experiment")
check(client.get_experiment_by_name("crt-mlflow-test").experiment_id == exp.experiment_id, "get by name")
check(client.get_experiment("0").name == "Default", "the Default experiment exists as id 0")
check(client.get_experiment_by_name("no such experiment") is None, "unknown name -> None")
eid = exp.experiment_id

# ---- one run the way a training script logs ----
with mlflow.start_run(run_name="main") as run:
    main_id = run.info.run_id
    mlflow.log_param("lr", 0.01)
    mlflow.log_params({"arch": "lenet", "sigma": "0.25"})
    mlflow.log_metric("loss", 2.0)  # no step: step 0
    for step in range(5):
        mlflow.log_metric("train/loss", 1.0 / (step + 1), step=step)
    mlflow.log_metric("train/loss", 0.123, step=4)  # a second value at step 4: both kept
    mlflow.log_metrics({"acc": 0.5, "bad": float("nan")}, step=1)
    mlflow.set_tag("family", "lenet")
    mlflow.set_tags({"team": "robust", "stage": "dev"})
    with tempfile.TemporaryDirectory() as d:
        single = os.path.join(d, "notes.txt")
        with open(single, "w") as f:
            f.write("hello from the MLflow client\n")
        mlflow.log_artifact(single)
        tree = os.path.join(d, "plots")
        os.makedirs(os.path.join(tree, "sub"))
        with open(os.path.join(tree, "a.csv"), "w") as f:
            f.write("x,y\n1,2\n")
        with open(os.path.join(tree, "sub", "b.json"), "w") as f:
            f.write('{"b": 1}')
        mlflow.log_artifacts(tree, artifact_path="plots")
    with mlflow.start_run(run_name="child", nested=True) as child:
        child_id = child.info.run_id
        mlflow.log_metric("acc", 0.7)

got = client.get_run(main_id)
check(got.info.status == "FINISHED", f"end_run stores FINISHED, got {got.info.status}")
check(got.data.params == {"lr": "0.01", "arch": "lenet", "sigma": "0.25"}, f"params {got.data.params}")
check(got.data.tags.get("family") == "lenet" and got.data.tags.get("team") == "robust", "tags")
check(got.info.run_name == "main", "run name")
check(got.data.metrics["train/loss"] == 0.123, f"latest value at the last step: {got.data.metrics}")
check(math.isnan(got.data.metrics["bad"]), "NaN round trip")
hist = client.get_metric_history(main_id, "train/loss")
check([(m.step, m.value) for m in hist] == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25), (4, 0.2), (4, 0.123)],
      f"history keeps every value: {[(m.step, m.value) for m in hist]}")
check([m.step for m in client.get_metric_history(main_id, "loss")] == [0], "no step means step 0")
check(client.get_run(child_id).data.tags.get("mlflow.parentRunId") == main_id, "nested run's parent tag")
arts = sorted(a.path for a in client.list_artifacts(main_id))
check(arts == ["notes.txt", "plots"], f"artifacts {arts}")
sub = sorted(a.path for a in client.list_artifacts(main_id, "plots"))
check(sub == ["plots/a.csv", "plots/sub"], f"plots/ {sub}")
with tempfile.TemporaryDirectory() as d:
    back = client.download_artifacts(main_id, "plots/sub/b.json", d)
    check(open(back).read() == '{"b": 1}', "artifact download")

# ---- resume by id ----
with mlflow.start_run(run_id=main_id):
    mlflow.log_metric("train/loss", 0.1, step=5)
check(client.get_run(main_id).data.metrics["train/loss"] == 0.1, "resumed run logs on")
check(client.get_run(main_id).info.status == "FINISHED", "resumed run ends FINISHED")

# ---- changing a param is refused, as in MLflow ----
try:
    with mlflow.start_run(run_id=main_id):
        mlflow.log_param("lr", 0.5)
    check(False, "changing a param must fail")
except mlflow.exceptions.MlflowException as e:
    check("Changing param values is not allowed" in str(e), f"param change message: {e}")

# ---- a grid of runs for search ----
model = {}  # run id -> dict(name, params, metrics, tags, status)
grid = [
    ("g-lenet-0.01", "lenet", "0.01", 0.91, "cnn", "FINISHED"),
    ("g-lenet-0.1", "lenet", "0.1", 0.85, "cnn", "FINISHED"),
    ("g-mlp-0.01", "mlp", "0.01", 0.80, "dense", "FINISHED"),
    ("g-mlp-0.1", "mlp", "0.1", 0.70, "dense", "FAILED"),
    ("g-resnet-0.01", "resnet20", "0.01", 0.95, "cnn", "FINISHED"),
    ("g-resnet-0.1", "resnet20", "0.1", None, "cnn", "KILLED"),
    ("g-vit-0.01", "vit", "0.01", 0.60, "Transformer", "FINISHED"),
    ("g-vit-0.001", "vit", "0.001", 0.65, "transformer", "RUNNING"),
]
for name, arch, lr, acc, family, status in grid:
    r = client.create_run(eid, run_name=name, tags={"family": family})
    rid = r.info.run_id
    client.log_param(rid, "arch", arch)
    client.log_param(rid, "lr", lr)
    if acc is not None:
        client.log_metric(rid, "acc", acc, step=3)
        client.log_metric(rid, "loss", 1 - acc, step=3)
    if status != "RUNNING":
        client.set_terminated(rid, status=status)
    model[rid] = {"name": name, "params": {"arch": arch, "lr": lr},
                  "metrics": {} if acc is None else {"acc": acc, "loss": 1 - acc},
                  "tags": {"family": family}, "status": status}

ids = set(model)


def like(s, pat, ci=False):
    import re
    rx = "^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pat) + "$"
    return re.match(rx, s, re.I if ci else 0) is not None


cases = [
    ("metrics.acc > 0.8", lambda m: m["metrics"].get("acc", -1) > 0.8),
    ("metrics.acc >= 0.85", lambda m: m["metrics"].get("acc", -1) >= 0.85),
    ("metrics.acc < 0.7", lambda m: "acc" in m["metrics"] and m["metrics"]["acc"] < 0.7),
    ("metrics.loss <= 0.2", lambda m: "loss" in m["metrics"] and m["metrics"]["loss"] <= 0.2),
    ("metrics.acc != 0.8", lambda m: "acc" in m["metrics"] and m["metrics"]["acc"] != 0.8),
    ("params.arch = 'lenet'", lambda m: m["params"]["arch"] == "lenet"),
    ("params.arch != 'lenet'", lambda m: m["params"]["arch"] != "lenet"),
    ("params.lr = '0.01' AND params.arch = 'mlp'", lambda m: m["params"]["lr"] == "0.01" and m["params"]["arch"] == "mlp"),
    ("params.arch LIKE 'res%'", lambda m: like(m["params"]["arch"], "res%")),
    ("params.arch LIKE '%e%'", lambda m: like(m["params"]["arch"], "%e%")),
    ("tags.family LIKE 'trans%'", lambda m: like(m["tags"]["family"], "trans%")),
    ("tags.family ILIKE 'trans%'", lambda m: like(m["tags"]["family"], "trans%", True)),
    ("tags.family = 'cnn' and metrics.acc > 0.9", lambda m: m["tags"]["family"] == "cnn" and m["metrics"].get("acc", -1) > 0.9),
    ("attributes.status = 'FAILED'", lambda m: m["status"] == "FAILED"),
    ("attributes.status IN ('KILLED', 'RUNNING')", lambda m: m["status"] in ("KILLED", "RUNNING")),
    ("attributes.status NOT IN ('FINISHED')", lambda m: m["status"] != "FINISHED"),
    ("attributes.run_name LIKE 'g-vit%'", lambda m: like(m["name"], "g-vit%")),
    ("run_name = 'g-mlp-0.1'", lambda m: m["name"] == "g-mlp-0.1"),
    ("params.lr IN ('0.1', '0.001')", lambda m: m["params"]["lr"] in ("0.1", "0.001")),
    ("params.lr = '0.1' and attributes.status != 'KILLED' and metrics.acc >= 0.7",
     lambda m: m["params"]["lr"] == "0.1" and m["status"] != "KILLED" and m["metrics"].get("acc", -1) >= 0.7),
]


def search(filter_string="", order_by=None, max_results=1000, view=ViewType.ACTIVE_ONLY):
    out, token = [], None
    while True:
        page = client.search_runs([eid], filter_string, view, max_results, order_by, token)
        out.extend(page)
        token = page.token
        if not token:
            return out


for flt, pred in cases:
    found = {r.info.run_id for r in search(flt)} & ids
    expected = {rid for rid, m in model.items() if pred(m)}
    check(found == expected, f"filter {flt!r}: got {sorted(model[i]['name'] for i in found)}, "
                             f"expected {sorted(model[i]['name'] for i in expected)}")

orders = [
    (["metrics.acc DESC"], lambda m: (-m["metrics"]["acc"],) if "acc" in m["metrics"] else (math.inf,)),
    (["metrics.acc ASC"], lambda m: (m["metrics"]["acc"],) if "acc" in m["metrics"] else (math.inf,)),
    (["params.arch ASC", "metrics.acc DESC"], lambda m: (m["params"]["arch"], -m["metrics"].get("acc", -math.inf))),
    (["attributes.run_name DESC"], None),
]
for order, key in orders:
    got = [r.info.run_id for r in search("attributes.run_name LIKE 'g-%'", order_by=order)]
    if key is None:
        expected = sorted(ids, key=lambda i: model[i]["name"], reverse=True)
    else:
        expected = sorted(ids, key=lambda i: key(model[i]))
    check([model[i]["name"] for i in got] == [model[i]["name"] for i in expected],
          f"order_by {order}: got {[model[i]['name'] for i in got]}")

paged = [r.info.run_id for r in search("attributes.run_name LIKE 'g-%'", ["attributes.run_name ASC"], max_results=3)]
check(paged == sorted(ids, key=lambda i: model[i]["name"]), "paging with page tokens returns each run once, in order")

# ---- statuses a client sets, delete / restore ----
killed = [rid for rid, m in model.items() if m["status"] == "KILLED"][0]
check(client.get_run(killed).info.status == "KILLED", "KILLED stored")
victim = [rid for rid, m in model.items() if m["name"] == "g-mlp-0.01"][0]
client.delete_run(victim)
check(victim not in {r.info.run_id for r in search()}, "a deleted run leaves active search")
check(victim in {r.info.run_id for r in search(view=ViewType.DELETED_ONLY)}, "and shows among deleted ones")
client.restore_run(victim)
check(victim in {r.info.run_id for r in search()}, "restore brings it back")

summary = {
    "experiment_id": eid,
    "main": main_id,
    "child": child_id,
    "runs": {m["name"]: rid for rid, m in model.items()},
    "failures": failures,
}
print(json.dumps(summary))
sys.exit(1 if failures else 0)
