//! The OpenAPI 3.1 document, served at /api/openapi.json (hand-written; docs/api.md has the prose).

use axum::Json;
use serde_json::{json, Map, Value};

use crt_trainer::config::{Arch, Dataset, Method, RunKind};

use crate::runs::RunStatus;

pub async fn document() -> Json<Value> {
    Json(spec())
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(schema: Value) -> Value {
    json!({ "content": { "application/json": { "schema": schema } } })
}

fn ok(description: &str, schema: Value) -> Value {
    let mut r = json_body(schema);
    r["description"] = json!(description);
    r
}

fn error(description: &str) -> Value {
    ok(description, schema_ref("Error"))
}

fn id_param(what: &str) -> Value {
    json!({ "name": "id", "in": "path", "required": true, "description": format!("{what} id"), "schema": { "type": "integer" } })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn op(summary: &str, params: Vec<Value>, body: Option<Value>, responses: Vec<(&str, Value)>) -> Value {
    let mut o = json!({ "summary": summary, "parameters": params });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    let mut r = Map::new();
    for (code, resp) in responses {
        r.insert(code.to_string(), resp);
    }
    o["responses"] = Value::Object(r);
    o
}

fn enum_of(values: &[&str]) -> Value {
    json!({ "type": "string", "enum": values })
}

fn sse(summary: &str, what: &str) -> Value {
    op(
        summary,
        vec![
            id_param(what),
            query(
                "after",
                "Send events with a sequence number greater than this (default 0: all)",
                json!({"type": "integer"}),
            ),
            json!({ "name": "Last-Event-ID", "in": "header", "required": false,
                    "description": "Set by reconnecting clients; wins over `after`", "schema": { "type": "integer" } }),
        ],
        None,
        vec![
            (
                "200",
                json!({ "description": "text/event-stream; each event: `id` = sequence number, `event` = type \
                (status, started, metrics, progress, log, artifact, certificate), `data` = RunEvent JSON",
                "content": { "text/event-stream": { "schema": schema_ref("RunEvent") } } }),
            ),
            ("404", error("Unknown id")),
        ],
    )
}

pub fn spec() -> Value {
    let statuses: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = RunKind::ALL.iter().map(|k| k.as_str()).collect();
    let archs: Vec<&str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
    let datasets: Vec<&str> = Dataset::ALL.iter().map(|d| d.as_str()).collect();
    let mut methods: Vec<&str> = Method::NAMES.to_vec();
    methods.extend(["crt", "kd"]);

    let run_filters = vec![
        query("experiment_id", "Only runs of this experiment", json!({"type": "integer"})),
        query("status", "Only runs in this status", enum_of(&statuses)),
        query("kind", "Only runs of this kind", enum_of(&kinds)),
        query("arch", "Model architecture (a certification's is its model's)", enum_of(&archs)),
        query("method", "Training method (transfer: crt or kd)", enum_of(&methods)),
        query("dataset", "Dataset", enum_of(&datasets)),
        query("sort", "id, name, status, kind, created_at, started_at, finished_at, wall_time_s, sigma, or metric:<key>; prefix '-' for descending", json!({"type": "string"})),
        query("limit", "1..1000, default 100", json!({"type": "integer"})),
        query("offset", "default 0", json!({"type": "integer"})),
    ];
    let mut exp_run_filters = vec![id_param("Experiment")];
    exp_run_filters.extend(run_filters.iter().filter(|p| p["name"] != "experiment_id").cloned());

    let mut paths = Map::new();
    paths.insert("/api/v1/health".into(), json!({ "get": op("Liveness and database check", vec![], None, vec![("200", ok("OK", json!({"type": "object"})))]) }));
    paths.insert("/api/v1/devices".into(), json!({ "get": op("The CPU and the GPUs (from nvidia-smi, refreshed every 5 s), with the run each GPU is busy with", vec![], None, vec![("200", ok("Devices", schema_ref("Devices")))]) }));
    paths.insert("/api/v1/experiments".into(), json!({
                "get": op("List experiments", vec![], None, vec![("200", ok("Experiments", json!({"type": "array", "items": schema_ref("Experiment")})))]),
                "post": op("Create an experiment", vec![], Some(json_body(schema_ref("NewExperiment"))), vec![
                    ("201", ok("Created", schema_ref("Experiment"))), ("400", error("Malformed JSON")), ("422", error("Invalid field"))]),
            }));
    paths.insert("/api/v1/experiments/{id}".into(), json!({
                "get": op("Get an experiment", vec![id_param("Experiment")], None, vec![("200", ok("The experiment", schema_ref("Experiment"))), ("404", error("Unknown id"))]),
                "patch": op("Update name, description or tags", vec![id_param("Experiment")], Some(json_body(schema_ref("ExperimentPatch"))), vec![
                    ("200", ok("Updated", schema_ref("Experiment"))), ("404", error("Unknown id")), ("422", error("Invalid field"))]),
                "delete": op("Delete an experiment with its runs, their rows and files", vec![id_param("Experiment")], None, vec![
                    ("204", json!({"description": "Deleted"})), ("404", error("Unknown id")), ("409", error("It has queued or running runs"))]),
            }));
    paths.insert("/api/v1/experiments/{id}/runs".into(), json!({
                "get": op("List an experiment's runs", exp_run_filters, None, vec![("200", ok("Runs", json!({"type": "array", "items": schema_ref("Run")}))), ("404", error("Unknown id"))]),
            }));
    paths.insert(
        "/api/v1/experiments/{id}/events".into(),
        json!({ "get": sse("Live events of all runs of an experiment (SSE)", "Experiment") }),
    );
    paths.insert("/api/v1/runs".into(), json!({
                "get": op("List runs with filters and sorting", run_filters, None, vec![
                    ("200", ok("Runs", json!({"type": "array", "items": schema_ref("Run")}))), ("400", error("Bad filter"))]),
                "post": op("Create (queue) a run; the server fills in out_dir, dataset dir, teacher/model and resume", vec![],
                    Some(json_body(schema_ref("CreateRun"))), vec![
                    ("201", ok("Queued", schema_ref("Run"))), ("400", error("Malformed JSON")),
                    ("415", error("Not JSON")), ("422", error("Invalid field: `field` names it, e.g. config.method.sigma"))]),
            }));
    paths.insert("/api/v1/runs/{id}".into(), json!({
                "get": op("Get a run with its latest metric values", vec![id_param("Run")], None, vec![("200", ok("The run", schema_ref("Run"))), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/stop".into(), json!({
                "post": op("Stop a run: a queued one at once; a running one gets SIGTERM (it checkpoints), then SIGKILL after the grace period",
                    vec![id_param("Run")], None, vec![
                    ("202", ok("Stop requested; poll or stream until status is stopped", schema_ref("Run"))),
                    ("404", error("Unknown id")), ("409", error("Not queued or running"))]),
            }));
    paths.insert("/api/v1/runs/{id}/resume".into(), json!({
                "post": op("Resume a stopped or crashed train/transfer run from its checkpoint (same id, metrics kept)",
                    vec![id_param("Run")], None, vec![
                    ("202", ok("Queued again", schema_ref("Run"))), ("404", error("Unknown id")), ("409", error("Not resumable"))]),
            }));
    paths.insert("/api/v1/runs/{id}/metrics".into(), json!({
                "get": op("Metric history, optionally downsampled (each bucket keeps min, max and last)", vec![
                    id_param("Run"),
                    query("keys", "Comma-separated metric keys (default: all)", json!({"type": "string"})),
                    query("points", "At most this many points per key (>= 3; default: all)", json!({"type": "integer"})),
                ], None, vec![("200", ok("History", schema_ref("MetricHistory"))), ("400", error("Unknown key or bad points")), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/logs".into(), json!({
                "get": op("Log lines (stdout, stderr, trainer log events, server notes), paged by id", vec![
                    id_param("Run"),
                    query("after", "Lines with id greater than this", json!({"type": "integer"})),
                    query("before", "Lines with id less than this", json!({"type": "integer"})),
                    query("stream", "stdout, stderr, trainer or server", enum_of(&["stdout", "stderr", "trainer", "server"])),
                    query("tail", "The newest lines instead of the oldest", json!({"type": "boolean"})),
                    query("limit", "1..10000, default 500", json!({"type": "integer"})),
                ], None, vec![("200", ok("A page of lines", schema_ref("LogPage"))), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/artifacts".into(), json!({
                "get": op("Files the run wrote, with size and sha256", vec![id_param("Run")], None, vec![
                    ("200", ok("Artifacts", json!({"type": "array", "items": schema_ref("Artifact")}))), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/artifacts/{path}".into(), json!({
                "get": op("Download an artifact (streamed, with Content-Type and Content-Length)", vec![
                    id_param("Run"),
                    json!({"name": "path", "in": "path", "required": true, "description": "Artifact path as listed (may contain '/')", "schema": {"type": "string"}}),
                ], None, vec![
                    ("200", json!({"description": "The file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})),
                    ("404", error("Unknown run or artifact"))]),
            }));
    paths.insert("/api/v1/runs/{id}/certificates".into(), json!({
                "get": op("Per-image certification results, by image index", vec![
                    id_param("Run"),
                    query("after", "Images with index greater than this", json!({"type": "integer"})),
                    query("limit", "1..100000, default 10000", json!({"type": "integer"})),
                ], None, vec![("200", ok("Results", json!({"type": "array", "items": schema_ref("Certificate")}))), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/certificates/summary".into(), json!({
                "get": op("Certified accuracy by radius and average certified radius (ACR)", vec![
                    id_param("Run"),
                    query("radii", "Comma-separated radii (default 0, 0.25, … up to the largest radius, at least 1)", json!({"type": "string"})),
                ], None, vec![("200", ok("Summary", schema_ref("CertSummary"))), ("400", error("Bad radii")), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/events".into(), json!({ "get": sse("Live events of one run (SSE)", "Run") }));

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "CRT Lab API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Experiments and runs of randomized-smoothing training, Certified Robustness Transfer and certification. \
                Times are Unix seconds. Errors are JSON {\"error\", \"field\"?}. See docs/api.md."
        },
        "paths": Value::Object(paths),
        "components": { "schemas": schemas(&statuses, &kinds) }
    })
}

fn schemas(statuses: &[&str], kinds: &[&str]) -> Value {
    let num = json!({"type": "number"});
    let int = json!({"type": "integer"});
    let str_ = json!({"type": "string"});
    let opt = |t: &str| json!({"type": [t, "null"]});
    let mut s = Map::new();
    s.insert("Error".into(), json!({ "type": "object", "required": ["error"], "properties": {
            "error": { "type": "string", "description": "What is wrong and what is allowed" },
            "field": { "type": "string", "description": "The request field to blame, e.g. config.method.sigma, parents[0]" } } }));
    s.insert(
        "NewExperiment".into(),
        json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": str_, "description": str_, "tags": { "type": "array", "items": str_ } } }),
    );
    s.insert(
        "ExperimentPatch".into(),
        json!({ "type": "object", "additionalProperties": false, "properties": {
            "name": str_, "description": str_, "tags": { "type": "array", "items": str_ } } }),
    );
    s.insert("Experiment".into(), json!({ "type": "object", "properties": {
            "id": int, "name": str_, "description": str_, "tags": { "type": "array", "items": str_ },
            "created_at": num, "updated_at": num,
            "run_counts": { "type": "object", "additionalProperties": int, "description": "Runs by status" },
            "last_seq": { "type": "integer", "description": "Newest event sequence number (single experiment only)" } } }));
    s.insert("CreateRun".into(), json!({ "type": "object", "required": ["experiment_id", "config"], "additionalProperties": false, "properties": {
            "experiment_id": int,
            "name": { "type": "string", "description": "Default: '<kind> <arch> <method> <dataset> #<id>'" },
            "parents": { "type": "array", "items": int, "description": "transfer: [teacher run]; certify/predict: [model run]; train: []" },
            "config": schema_ref("RunConfig"),
            "device": { "type": ["string", "null"], "pattern": "^(auto|cpu|gpu|cuda:[0-9]+)$",
                "description": "auto (default: a GPU if the server has any, waiting for a free one; else the CPU), cpu, gpu (the first free GPU) or cuda:N (nvidia-smi's index N). One run per GPU at a time. 422 with field `device` when no such GPU is detected. On Slurm: gpu/cuda:N ask for --gres=gpu:1" },
            "backend": { "type": ["string", "null"], "enum": ["local", "slurm", null], "description": "Where the run executes (default: the server's --backend)" },
            "slurm": { "type": ["object", "null"], "additionalProperties": false, "description": "Slurm resources (backend slurm only); gaps filled from the server's --slurm-* defaults",
                "properties": {
                    "partition": opt("string"),
                    "cpus": { "type": ["integer", "null"], "minimum": 1, "maximum": 256 },
                    "mem_mb": { "type": ["integer", "null"], "minimum": 1, "maximum": 4194304 },
                    "time_limit_min": { "type": ["integer", "null"], "minimum": 1, "maximum": 525600 },
                    "gpus": { "type": ["integer", "null"], "minimum": 0, "maximum": 16 },
                    "extra_args": { "type": "array", "maxItems": 16, "items": { "type": "string", "maxLength": 200, "pattern": "^--" } } } } } }));
    s.insert("RunConfig".into(), json!({ "type": "object", "required": ["kind"], "description":
            "The trainer's RunConfig (crt_trainer::config), tagged by kind. The server sets out_dir, data.data_dir / data_dir, \
             teacher (transfer), model (certify/predict with a parent) and resume.",
            "properties": { "kind": { "type": "string", "enum": kinds } } }));
    s.insert("Run".into(), json!({ "type": "object", "properties": {
            "id": int, "experiment_id": int, "name": str_, "kind": { "type": "string", "enum": kinds },
            "status": { "type": "string", "enum": statuses },
            "config": schema_ref("RunConfig"), "resolved_config": { "description": "As the trainer resolved it (all defaults)" },
            "arch": opt("string"), "method": opt("string"), "dataset": opt("string"), "sigma": opt("number"),
            "parents": { "type": "array", "items": int }, "out_dir": str_,
            "created_at": num, "queued_at": num, "started_at": opt("number"), "finished_at": opt("number"),
            "wall_time_s": { "type": "number", "description": "Summed over attempts" },
            "attempt": { "type": "integer", "description": "Trainer processes started so far" },
            "pid": { "type": ["integer", "null"], "description": "Local backend: the attempt's supervisor (its process group holds the trainer)" },
            "pgid": opt("integer"), "exit_code": opt("integer"), "exit_signal": opt("integer"),
            "error": opt("string"), "summary": { "description": "Final metrics of a finished run" },
            "device_request": { "type": "string", "description": "What the run asked for: auto, cpu, gpu or cuda:N" },
            "device": { "type": ["string", "null"], "description": "Where its latest attempt ran: cpu or cuda:N (the trainer's --device); null until it starts" },
            "progress": { "type": ["object", "null"], "properties": { "phase": str_, "done": int, "total": int, "unit": str_ } },
            "metrics": { "type": "object", "additionalProperties": schema_ref("MetricPoint"), "description": "Latest value per key" },
            "makes_model": { "type": "boolean", "description": "A train or transfer run: it has a checkpoint and can be a transfer's teacher or be certified" },
            "resumable": { "type": "boolean", "description": "Stopped or crashed: POST …/resume continues it" },
            "last_seq": { "type": "integer", "description": "Newest event sequence number of this run" } } }));
    // The launch fields apart: one json! this size passes serde_json's macro recursion limit.
    if let Some(Value::Object(props)) = s.get_mut("Run").and_then(|r| r.get_mut("properties")) {
        props.insert("backend".into(), json!({ "type": "string", "enum": ["local", "slurm"] }));
        props.insert(
            "resources".into(),
            json!({ "description": "The Slurm resources the run asked for (null: the server's defaults)" }),
        );
        props.insert("handle".into(), json!({ "type": ["object", "null"], "description": "The current attempt: {backend: local, pid, attempt_dir} or {backend: slurm, job_id, attempt_dir}" }));
        props.insert("backend_state".into(), json!({ "type": ["object", "null"], "description": "What the backend last said: {state: PENDING, reason} or {state: RUNNING, job_id?, node?, pid?}" }));
        props.insert("stop_requested_at".into(), opt("number"));
    }
    s.insert("Devices".into(), json!({ "type": "object", "properties": {
            "cpu": { "type": "object", "properties": {
                "cores": int, "max_concurrent_runs": { "type": "integer", "description": "CPU runs at once (--max-concurrent-runs)" },
                "running": { "type": "integer", "description": "Runs on the CPU now" } } },
            "gpus": { "type": "array", "description": "Empty when nvidia-smi is absent or finds none", "items": { "type": "object", "properties": {
                "index": { "type": "integer", "description": "nvidia-smi's index: run with device cuda:<index>" },
                "name": str_, "uuid": str_,
                "utilization_pct": opt("number"), "memory_used_mib": opt("integer"), "memory_total_mib": opt("integer"),
                "busy_run": { "type": ["integer", "null"], "description": "The run on this GPU (one at a time)" } } } },
            "gpu_error": { "type": ["string", "null"], "description": "Why the last nvidia-smi query failed or what it printed that is not a GPU" },
            "slurm": { "type": ["object", "null"], "description": "With --backend slurm: {partition, nodes: [{name, state, cpus, gres, partition}], error} from sinfo, refreshed every 10 s" } } }));
    s.insert(
        "MetricPoint".into(),
        json!({ "type": "object", "properties": { "step": int, "epoch": opt("number"), "ts": num,
            "value": { "type": ["number", "string"], "description": "A number, or \"NaN\", \"Infinity\", \"-Infinity\"" } } }),
    );
    s.insert(
        "MetricHistory".into(),
        json!({ "type": "object", "properties": {
            "run_id": int,
            "metrics": { "type": "object", "additionalProperties": { "type": "object", "properties": {
                "total": int, "downsampled": { "type": "boolean" },
                "points": { "type": "array", "items": schema_ref("MetricPoint") } } } } } }),
    );
    s.insert(
        "LogLine".into(),
        json!({ "type": "object", "properties": {
            "id": int, "ts": num, "stream": { "type": "string", "enum": ["stdout", "stderr", "trainer", "server"] },
            "level": opt("string"), "line": str_ } }),
    );
    s.insert(
        "LogPage".into(),
        json!({ "type": "object", "properties": {
            "lines": { "type": "array", "items": schema_ref("LogLine") },
            "next_after": { "type": "integer", "description": "Pass as `after` for the next page" } } }),
    );
    s.insert("Artifact".into(), json!({ "type": "object", "properties": {
            "path": str_, "kind": { "type": "string", "enum": ["model", "metadata", "checkpoint", "certificates", "summary", "other"] },
            "size": int, "sha256": str_, "ts": num } }));
    s.insert(
        "Certificate".into(),
        json!({ "type": "object", "properties": {
            "idx": int, "label": int, "predict": { "type": "integer", "description": "-1: abstained" },
            "radius": opt("number"), "correct": { "type": "boolean" }, "count_a": opt("integer"),
            "p_lower": opt("number"), "time": num,
            "samples": { "type": "integer", "description": "sequential modes: estimation samples drawn" },
            "decision": { "type": "string", "description": "sequential modes: certified, not_certified, converged, abstain or cap" },
            "p_upper": { "type": "number", "description": "sequential modes: upper bound on p_A" } } }),
    );
    s.insert(
        "CertSummary".into(),
        json!({ "type": "object", "properties": {
            "n": int, "accuracy": num, "abstain_rate": num, "acr": num, "mean_time_s": num,
            "radii": { "type": "array", "items": { "type": "object", "properties": {
                "radius": num, "certified_accuracy": num, "count": int } } },
            "samples": { "type": "object", "description": "sequential modes only: estimation samples per image",
                "properties": { "mean": num, "min": int, "median": int, "p90": int, "max": int,
                    "decisions": { "type": "object", "additionalProperties": int } } },
            "p_lower_histogram": { "type": "array", "items": int,
                "description": "images by lower bound on p_A, 20 equal bins over [0, 1]" } } }),
    );
    s.insert("RunEvent".into(), json!({ "type": "object", "required": ["seq", "run_id", "experiment_id", "ts", "type"], "properties": {
            "seq": int, "run_id": int, "experiment_id": int, "ts": num,
            "type": { "type": "string", "enum": ["status", "launched", "backend", "started", "metrics", "progress", "log", "artifact", "certificate"] } },
            "additionalProperties": true,
            "description": "status: {status, error?, exit_code?, exit_signal?, attempt?, device?, where?}; launched: {attempt, device, handle}; \
                backend: the backend's new state (see Run.backend_state); metrics: {step, epoch, values} (non-finite values as \"NaN\", \"Infinity\", \"-Infinity\"); \
                progress: {phase, done, total, unit}; log: {id, stream, level, line}; artifact: Artifact; certificate: Certificate; \
                started: {version, device, threads, resumed_from_step}" }));
    Value::Object(s)
}
