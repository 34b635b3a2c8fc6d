//! The OpenAPI 3.1 document, served at /api/openapi.json (hand-written; docs/api.md has the prose).
//!
//! Every operation lists every status code the server can answer it with: besides each route's own
//! (200/201/202/204, 404, 409, 422), the ones that follow from how the request is taken apart and
//! guarded are added by [`complete`]: 400 for a malformed path segment or query parameter (an
//! unknown query parameter too), 400/413/415/422 for a JSON body, 401/403 from the token guard on
//! every operation but the public ones, and 500 (an error id, never internal text). `scripts/fuzz.sh`
//! checks the server against this document with schemathesis.

use axum::Json;
use serde_json::{json, Map, Value};

use crt_trainer::config::{Arch, Dataset, Method, RunKind};

use super::{certificates, experiments, logs, metrics, runs, tokens, MAX_BODY_BYTES};
use crate::runs::validate::{MAX_PARENTS, MAX_RUN_NAME_CHARS};
use crate::runs::RunStatus;
use crate::study::MAX_BASELINES;

pub async fn document() -> Json<Value> {
    Json(spec())
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

/// A JSON body with an example the fuzzer starts from (a valid request).
fn json_body_example(schema: Value, example: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema, "example": example } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn error(description: &str) -> Value {
    ok(description, schema_ref("Error"))
}

/// A database id in a path: the server parses it as a signed 64-bit integer (400 otherwise) and
/// answers 404 for one that does not exist.
fn id_param(what: &str) -> Value {
    json!({ "name": "id", "in": "path", "required": true, "description": format!("{what} id"),
            "schema": { "type": "integer", "format": "int64" }, "example": 1 })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn int64() -> Value {
    json!({ "type": "integer", "format": "int64" })
}

fn int_range(min: i64, max: i64) -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": min, "maximum": max })
}

/// A query parameter's upper bounds are answered with 422 (below its lower bound: 400).
fn bounded(description: &str) -> (&str, Value) {
    ("422", error(description))
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

/// An operation anyone may call, without a token.
fn public(mut o: Value) -> Value {
    o["security"] = json!([]);
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
            query("after", "Send events with a sequence number greater than this (default 0: all)", int64()),
            json!({ "name": "Last-Event-ID", "in": "header", "required": false,
                    "description": "Set by reconnecting clients; wins over `after` (400 when not an integer)", "schema": int64() }),
        ],
        None,
        vec![
            (
                "200",
                json!({ "description": "text/event-stream; each event: `id` = sequence number, `event` = type \
                (status, launched, backend, started, metrics, progress, log, artifact, certificate), `data` = RunEvent JSON. \
                The stream does not end while the server runs.",
                "content": { "text/event-stream": { "schema": schema_ref("RunEvent") } } }),
            ),
            ("404", error("Unknown id")),
        ],
    )
}

/// `POST /api/v1/experiments/{id}/imports/model`: the checkpoint is the body, the settings are
/// query parameters.
fn import_model_path() -> Value {
    use super::import_model::{ARCHS, MAX_CHECKPOINT_BYTES};
    let mut arch =
        query("arch", "The reference architecture of the checkpoint", json!({ "type": "string", "enum": ARCHS }));
    arch["required"] = json!(true);
    let mut dataset = query(
        "dataset",
        "The dataset the model classifies",
        json!({ "type": "string", "enum": ["mnist", "fashion-mnist", "cifar10"] }),
    );
    dataset["required"] = json!(true);
    let params = vec![
        id_param("Experiment"),
        arch,
        dataset,
        query(
            "name",
            &format!("The run's name (at most {MAX_RUN_NAME_CHARS} characters; default: imported <arch>)"),
            json!({ "type": "string", "maxLength": MAX_RUN_NAME_CHARS }),
        ),
        query(
            "normalization",
            "reference (default: the reference codes' constants for the dataset), none, or M1,M2,M3:S1,S2,S3",
            json!({ "type": "string", "maxLength": 200 }),
        ),
        query(
            "sigma",
            "The noise level the model was trained with",
            json!({ "type": "number", "exclusiveMinimum": 0, "maximum": 100 }),
        ),
    ];
    let body = json!({ "required": true,
        "description": "The checkpoint as the reference codes save it ({'arch', 'state_dict'} in PyTorch's zip format)",
        "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } });
    json!({ "post": op(
        "Import a reference-code PyTorch checkpoint as a model (a finished run of kind external with makes_model: true)",
        params,
        Some(body),
        vec![
            ("201", ok("The imported model's run", schema_ref("Run"))),
            ("404", error("Unknown experiment")),
            ("413", error(&format!("The file is larger than {} MiB", MAX_CHECKPOINT_BYTES >> 20))),
            ("415", error("The body is not `Content-Type: application/octet-stream`")),
            ("422", error("A bad setting, or a file the trainer refuses (`field`: file; the message names the key and what was expected); nothing is stored")),
        ],
    ) })
}

/// `POST /api/v1/experiments/{id}/imports/certification`: the TSV is the body, the settings are
/// query parameters.
fn import_certification_path() -> Value {
    use super::imports::{MAX_SAMPLES, MAX_SOURCE_CHARS};
    use crate::import::{MAX_TSV_BYTES, MAX_TSV_ROWS};
    let required = |name: &str, description: &str, schema: Value| {
        let mut q = query(name, description, schema);
        q["required"] = json!(true);
        q
    };
    let params = vec![
        id_param("Experiment"),
        required(
            "sigma",
            "The noise level σ the file was certified with (> 0)",
            json!({ "type": "number", "exclusiveMinimum": 0, "example": 0.25 }),
        ),
        required(
            "n",
            "Samples that estimated p_A (certify.py's --N)",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_SAMPLES, "example": 100000 }),
        ),
        required(
            "n0",
            "Samples that chose the class (certify.py's --N0)",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_SAMPLES, "example": 100 }),
        ),
        required(
            "alpha",
            "Significance (certify.py's --alpha), in (0, 1)",
            json!({ "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "example": 0.001 }),
        ),
        query(
            "name",
            &format!("The run's name (at most {MAX_RUN_NAME_CHARS} characters; default: imported certification σ=…)"),
            json!({ "type": "string", "maxLength": MAX_RUN_NAME_CHARS }),
        ),
        query("dataset", "The dataset certified (recorded on the run)", json!({ "type": "string" })),
        query(
            "source",
            &format!("Where the file comes from (a URL, a paper; at most {MAX_SOURCE_CHARS} characters)"),
            json!({ "type": "string", "maxLength": MAX_SOURCE_CHARS }),
        ),
    ];
    let tsv = json!({ "schema": { "type": "string" },
        "example": "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t7\t7\t0.953\t1\t0:00:00.579953\n" });
    let body = json!({ "required": true,
        "description": "The reference codes' certification file as it is: the header `idx label predict radius correct time` \
            (tab-separated), one line per image; predict -1 abstains (radius 0); correct is 1 exactly when predict = label; \
            time is H:MM:SS.ffffff",
        "content": { "text/tab-separated-values": tsv, "text/plain": tsv } });
    json!({ "post": op(
        "Import a certification made elsewhere (a reference TSV) as a finished run of kind external",
        params,
        Some(body),
        vec![
            ("201", ok("The imported run (is_certification: true)", schema_ref("Run"))),
            ("404", error("Unknown experiment")),
            ("413", error(&format!("The file is larger than {MAX_TSV_BYTES} bytes or has more than {MAX_TSV_ROWS} image lines"))),
            ("415", error("The body is not `Content-Type: text/tab-separated-values` or `text/plain`")),
            ("422", error("A bad setting (`field` names it) or a bad line of the file (`field`: tsv, with `line` and `column`); nothing is stored")),
        ],
    ) })
}

/// Adds the responses every operation shares, by what it takes: see the module comment.
fn complete(paths: &mut Map<String, Value>) {
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut() {
            let takes_params = operation["parameters"].as_array().is_some_and(|p| !p.is_empty());
            let takes_body = operation.get("requestBody").is_some();
            let is_public = operation.get("security").is_some_and(|s| s == &json!([]));
            let responses = operation["responses"].as_object_mut().expect("responses");
            let mut add = |code: &str, response: Value| {
                responses.entry(code.to_string()).or_insert(response);
            };
            if takes_body {
                add("400", error("Malformed JSON, or a malformed path segment or query parameter (`field` names it)"));
                add("413", error(&format!("The body is larger than {MAX_BODY_BYTES} bytes")));
                add("415", error("The body is not `Content-Type: application/json`"));
                add("422", error("Valid JSON with a wrong, missing or unknown field or value (`field` names it)"));
            } else if takes_params {
                add("400", error("A malformed path segment, or a bad or unknown query parameter (`field` names it)"));
            }
            if !is_public {
                let mut unauthorized =
                    error("No valid token (missing, unknown or revoked) where the server requires one");
                unauthorized["headers"] = json!({ "WWW-Authenticate": {
                    "description": "`Bearer`", "schema": { "type": "string" } } });
                add("401", unauthorized);
                add(
                    "403",
                    error("The token's scope does not allow this (read < write < admin), or a browser change from a foreign origin"),
                );
            }
            add(
                "500",
                error("Internal error: logged on the server with `error_id`; the message carries no internal detail"),
            );
        }
    }
}

pub fn spec() -> Value {
    let statuses: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = RunKind::ALL.iter().map(|k| k.as_str()).collect();
    let archs: Vec<&str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
    let datasets: Vec<&str> = Dataset::ALL.iter().map(|d| d.as_str()).collect();
    let mut methods: Vec<&str> = Method::NAMES.to_vec();
    methods.extend(["crt", "kd"]);

    let run_filters = vec![
        query("experiment_id", "Only runs of this experiment", int64()),
        query("status", "Only runs in this status", enum_of(&statuses)),
        query("kind", "Only runs of this kind", enum_of(&kinds)),
        query("arch", "Model architecture (a certification's is its model's)", enum_of(&archs)),
        query("method", "Training method (transfer: crt or kd)", enum_of(&methods)),
        query("dataset", "Dataset", enum_of(&datasets)),
        query(
            "sort",
            &format!(
                "id, name, status, kind, created_at, started_at, finished_at, wall_time_s, sigma, or metric:<key> \
            (a key of at most {} characters); prefix '-' for descending",
                runs::MAX_METRIC_KEY_CHARS
            ),
            json!({"type": "string", "maxLength": runs::MAX_METRIC_KEY_CHARS + "-metric:".len()}),
        ),
        query("limit", &format!("1..{}, default 100", runs::MAX_RUNS_PAGE), int_range(1, runs::MAX_RUNS_PAGE)),
        query("offset", "default 0", json!({ "type": "integer", "format": "int64", "minimum": 0 })),
    ];
    let mut exp_run_filters = vec![id_param("Experiment")];
    exp_run_filters.extend(run_filters.iter().filter(|p| p["name"] != "experiment_id").cloned());

    let mut paths = Map::new();
    paths.insert(
        "/api/v1/health".into(),
        json!({ "get": public(op("Liveness and database check (no token needed)", vec![], None, vec![("200", ok("OK", schema_ref("Health")))])) }),
    );
    paths.insert("/api/v1/devices".into(), json!({ "get": op("The CPU and the GPUs (from nvidia-smi, refreshed every 5 s), with the run each GPU is busy with", vec![], None, vec![("200", ok("Devices", schema_ref("Devices")))]) }));
    paths.insert("/api/v1/experiments".into(), json!({
                "get": op("List experiments", vec![], None, vec![("200", ok("Experiments", json!({"type": "array", "items": schema_ref("Experiment")})))]),
                "post": op("Create an experiment", vec![], Some(json_body_example(schema_ref("NewExperiment"), json!({"name": "CRT on MNIST", "description": "σ = 0.25", "tags": ["mnist"]}))), vec![
                    ("201", ok("Created", schema_ref("Experiment")))]),
            }));
    paths.insert("/api/v1/experiments/{id}".into(), json!({
                "get": op("Get an experiment", vec![id_param("Experiment")], None, vec![("200", ok("The experiment", schema_ref("Experiment"))), ("404", error("Unknown id"))]),
                "patch": op("Update name, description or tags", vec![id_param("Experiment")], Some(json_body(schema_ref("ExperimentPatch"))), vec![
                    ("200", ok("Updated", schema_ref("Experiment"))), ("404", error("Unknown id"))]),
                "delete": op("Delete an experiment with its runs, their rows and files", vec![id_param("Experiment")], None, vec![
                    ("204", json!({"description": "Deleted"})), ("404", error("Unknown id")), ("409", error("It has queued or running runs"))]),
            }));
    paths.insert("/api/v1/experiments/{id}/runs".into(), json!({
                "get": op("List an experiment's runs", exp_run_filters, None, vec![("200", ok("Runs", json!({"type": "array", "items": schema_ref("Run")}))), ("404", error("Unknown id")),
                    bounded("limit or the sort key beyond its bound")]),
            }));
    paths.insert(
        "/api/v1/experiments/{id}/events".into(),
        json!({ "get": sse("Live events of all runs of an experiment (SSE)", "Experiment") }),
    );
    paths.insert("/api/v1/experiments/{id}/imports/certification".into(), import_certification_path());
    paths.insert("/api/v1/experiments/{id}/imports/model".into(), import_model_path());
    paths.insert("/api/v1/runs".into(), json!({
                "get": op("List runs with filters and sorting", run_filters, None, vec![
                    ("200", ok("Runs", json!({"type": "array", "items": schema_ref("Run")}))), bounded("limit or the sort key beyond its bound")]),
                "post": op("Create (queue) a run; the server fills in out_dir, dataset dir, teacher/model and resume", vec![],
                    Some(json_body_example(schema_ref("CreateRun"), json!({"experiment_id": 1, "config": {
                        "kind": "train", "arch": "lenet", "data": {"dataset": "mnist", "train_subset": 2000, "test_subset": 500},
                        "method": {"name": "gaussian", "sigma": 0.25}, "optim": {"epochs": 1, "batch_size": 128}}}))), vec![
                    ("201", ok("Queued", schema_ref("Run"))),
                    ("422", error("Invalid field: `field` names it, e.g. config.method.sigma"))]),
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
                "post": op("Resume a stopped or crashed run (train/transfer from its checkpoint; certify/predict where it stopped); same id, metrics kept",
                    vec![id_param("Run")], Some(json!({ "required": false, "description": "Optional: no body resumes the run as it was",
                        "content": { "application/json": { "schema": schema_ref("ResumeRequest"), "example": {"lr": 0.01} } } })), vec![
                    ("202", ok("Queued again", schema_ref("Run"))), ("404", error("Unknown id")), ("409", error("Not resumable"))]),
            }));
    paths.insert("/api/v1/runs/{id}/metrics".into(), json!({
                "get": op("Metric history, optionally downsampled (each bucket keeps min, max and last)", vec![
                    id_param("Run"),
                    query("keys", &format!("Comma-separated metric keys, at most {} (default: all); 400 for a key the run does not have", metrics::MAX_KEYS), json!({"type": "string"})),
                    query("points", &format!("At most this many points per key (3..{}; default: all)", metrics::MAX_POINTS), int_range(3, metrics::MAX_POINTS as i64)),
                ], None, vec![("200", ok("History", schema_ref("MetricHistory"))), ("404", error("Unknown id")), bounded("points or the number of keys beyond its bound")]),
            }));
    paths.insert("/api/v1/runs/{id}/logs".into(), json!({
                "get": op("Log lines (stdout, stderr, trainer log events, server notes), paged by id", vec![
                    id_param("Run"),
                    query("after", "Lines with id greater than this", int64()),
                    query("before", "Lines with id less than this", int64()),
                    query("stream", "stdout, stderr, trainer or server", enum_of(&["stdout", "stderr", "trainer", "server"])),
                    query("tail", "The newest lines instead of the oldest", json!({"type": "boolean"})),
                    query("limit", &format!("1..{}, default 500", logs::MAX_LOG_PAGE), int_range(1, logs::MAX_LOG_PAGE)),
                ], None, vec![("200", ok("A page of lines", schema_ref("LogPage"))), ("404", error("Unknown id")), bounded("limit beyond its bound")]),
            }));
    paths.insert("/api/v1/runs/{id}/artifacts".into(), json!({
                "get": op("Files the run wrote, with size and sha256", vec![id_param("Run")], None, vec![
                    ("200", ok("Artifacts", json!({"type": "array", "items": schema_ref("Artifact")}))), ("404", error("Unknown id"))]),
            }));
    paths.insert("/api/v1/runs/{id}/artifacts/{path}".into(), json!({
                "get": op("Download an artifact (streamed, with Content-Type by the file's extension, Content-Length and Content-Disposition: attachment)", vec![
                    id_param("Run"),
                    json!({"name": "path", "in": "path", "required": true, "description": "Artifact path as listed (may contain '/'); only listed paths are served",
                        "schema": {"type": "string"}, "example": "run-config.json"}),
                ], None, vec![
                    ("200", json!({"description": "The file; its Content-Type follows its extension (application/octet-stream when unknown)",
                        "headers": { "Content-Length": { "required": true, "schema": { "type": "integer" } },
                                     "Content-Disposition": { "schema": { "type": "string" } } },
                        // Any file the run wrote: no schema (OpenAPI 3.1's way to say "these bytes, whatever they are").
                        "content": {"*/*": {}}})),
                    ("404", error("Unknown run, or an artifact the run does not have (or no longer has on disk)"))]),
            }));
    paths.insert("/api/v1/runs/{id}/certificates".into(), json!({
                "get": op("Per-image certification results, by image index", vec![
                    id_param("Run"),
                    query("after", "Images with index greater than this (default -1: all)", int64()),
                    query("limit", &format!("1..{}, default 10000", certificates::MAX_CERTIFICATES_PAGE), int_range(1, certificates::MAX_CERTIFICATES_PAGE)),
                ], None, vec![("200", ok("Results", json!({"type": "array", "items": schema_ref("Certificate")}))), ("404", error("Unknown id")), bounded("limit beyond its bound")]),
            }));
    paths.insert("/api/v1/runs/{id}/certificates/summary".into(), json!({
                "get": op("Certified accuracy by radius and average certified radius (ACR)", vec![
                    id_param("Run"),
                    query("radii", &format!("Comma-separated radii >= 0, at most {} (default 0, 0.25, … up to the largest radius, at least 1)", certificates::MAX_RADII),
                        json!({"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(,[0-9]+(\\.[0-9]+)?)*$", "example": "0,0.25,0.5"})),
                ], None, vec![("200", ok("Summary", schema_ref("CertSummary"))), ("404", error("Unknown id")), bounded("More radii than allowed")]),
            }));
    paths.insert("/api/v1/runs/{id}/events".into(), json!({ "get": sse("Live events of one run (SSE)", "Run") }));
    paths.insert("/api/v1/studies".into(), json!({
                "post": op("Create a CRT study: an experiment with a teacher, a CRT student and one or more robust baselines per student architecture, and a certification of each model",
                    vec![], Some(json_body_example(schema_ref("NewStudy"), json!({"name": "CRT on MNIST", "dataset": "mnist",
                        "teacher": {"arch": "lenet", "method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1},
                        "students": ["mlp"],
                        "baselines": [{"method": {"name": "gaussian", "sigma": 0.25}}, {"method": {"name": "macer", "sigma": 0.25, "k": 4}, "epochs": 2}],
                        "train_subset": 2000, "test_subset": 500, "certify": {"n0": 100, "n": 1000, "max": 100}}))), vec![("201", ok("Created", schema_ref("StudyCreated")))]),
            }));
    paths.insert("/api/v1/studies/{id}".into(), json!({
                "get": op("A study's comparison table (certified accuracy, ACR, wall time, speedup)", vec![id_param("Study (its experiment)")], None, vec![
                    ("200", ok("The table", schema_ref("StudyTable"))), ("404", error("No such experiment, or it is not a CRT study"))]),
            }));
    paths.insert(
        "/api/v1/studies/{id}/table.csv".into(),
        json!({
            "get": op("A study's comparison table as CSV", vec![id_param("Study (its experiment)")], None, vec![
                ("200", json!({"description": "CSV, one row per model",
                    "headers": { "Content-Disposition": { "schema": { "type": "string" } } },
                    "content": {"text/csv": {"schema": {"type": "string"}}}})),
                ("404", error("No such experiment, or it is not a CRT study"))]),
        }),
    );
    paths.insert("/api/v1/tokens".into(), json!({
                "get": op("List API tokens, revoked ones included (admin scope); secrets are never shown again", vec![], None, vec![
                    ("200", ok("Tokens", json!({"type": "array", "items": schema_ref("Token")})))]),
                "post": op("Create an API token (admin scope); the response holds its secret, shown only this once", vec![],
                    Some(json_body_example(schema_ref("NewToken"), json!({"name": "ci", "scope": "read"}))), vec![("201", ok("Created", schema_ref("CreatedToken")))]),
            }));
    paths.insert("/api/v1/tokens/{id}".into(), json!({
                "delete": op("Revoke a token (admin scope): it and its browser sessions stop working at once", vec![id_param("Token")], None, vec![
                    ("204", json!({"description": "Revoked"})), ("404", error("Unknown id"))]),
            }));
    complete(&mut paths);

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "CRT Lab API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Experiments and runs of randomized-smoothing training, Certified Robustness Transfer and certification. \
                Times are Unix seconds. Errors are JSON {\"error\", \"field\"?}. Requests carry `Authorization: Bearer <token>` \
                (or the dashboard's session cookie) unless the server runs on loopback without --require-auth; \
                scopes: read (GET), write (changes), admin (tokens). See docs/api.md."
        },
        "paths": Value::Object(paths),
        "security": [{ "bearer": [] }, { "session": [] }],
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer",
                    "description": "An API token: `crt-server token create --scope read|write|admin`, or POST /api/v1/tokens" },
                "session": { "type": "apiKey", "in": "cookie", "name": "crt_session",
                    "description": "The dashboard's session (HttpOnly, SameSite=Strict), set by logging in at /login with a token; \
                        changes made with it must come from the server's own pages (Origin/Referer)" }
            },
            "schemas": schemas(&statuses, &kinds, &archs, &datasets)
        }
    })
}

fn schemas(statuses: &[&str], kinds: &[&str], archs: &[&str], datasets: &[&str]) -> Value {
    let name = json!({ "type": "string", "minLength": 1, "maxLength": experiments::MAX_NAME_CHARS,
        "description": format!("1 to {} characters after trimming", experiments::MAX_NAME_CHARS) });
    let description = json!({ "type": "string", "maxLength": experiments::MAX_DESCRIPTION_CHARS });
    let tags = json!({ "type": "array", "maxItems": experiments::MAX_TAGS,
        "items": { "type": "string", "minLength": 1, "maxLength": experiments::MAX_TAG_CHARS } });
    let num = json!({"type": "number"});
    let int = json!({"type": "integer"});
    let str_ = json!({"type": "string"});
    let opt = |t: &str| json!({"type": [t, "null"]});
    let mut s = Map::new();
    s.insert("Error".into(), json!({ "type": "object", "required": ["error"], "properties": {
            "error": { "type": "string", "description": "What is wrong and what is allowed" },
            "field": { "type": "string", "description": "The request field to blame, e.g. config.method.sigma, parents[0]" },
            "error_id": { "type": "string", "description": "500 only: the id under which the server logged the error" },
            "line": { "type": "integer", "description": "An uploaded file's bad line (1-based; the header is line 1)" },
            "column": { "type": ["string", "null"], "description": "The column of that line to blame, e.g. radius" } } }));
    s.insert(
        "Health".into(),
        json!({ "type": "object", "required": ["status", "database"], "properties": {
            "status": { "type": "string", "enum": ["ok"] }, "database": { "type": "string", "enum": ["sqlite", "postgres"] } } }),
    );
    s.insert(
        "NewExperiment".into(),
        json!({ "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": name, "description": description, "tags": tags } }),
    );
    s.insert(
        "ExperimentPatch".into(),
        json!({ "type": "object", "additionalProperties": false, "properties": {
            "name": name, "description": description, "tags": tags } }),
    );
    s.insert("Experiment".into(), json!({ "type": "object",
            "required": ["id", "name", "description", "tags", "created_at", "updated_at", "run_counts"], "properties": {
            "id": int, "name": str_, "description": str_, "tags": { "type": "array", "items": str_ },
            "created_at": num, "updated_at": num,
            "run_counts": { "type": "object", "additionalProperties": int, "description": "Runs by status" },
            "last_seq": { "type": "integer", "description": "Newest event sequence number (single experiment only)" } } }));
    s.insert("CreateRun".into(), json!({ "type": "object", "required": ["experiment_id", "config"], "additionalProperties": false, "properties": {
            "experiment_id": int,
            "name": { "type": "string", "maxLength": MAX_RUN_NAME_CHARS, "description": "Default: '<kind> <arch> <method> <dataset> #<id>'" },
            "parents": { "type": "array", "items": int, "maxItems": MAX_PARENTS, "description": "transfer: [teacher run]; certify/predict: [model run]; train: []" },
            "config": schema_ref("RunConfig"),
            "device": { "type": ["string", "null"], "pattern": "^(auto|cpu|gpu|cuda:[0-9]+)$",
                "description": "auto (default: a GPU if the server has any, waiting for a free one; else the CPU), cpu, gpu (the first free GPU) or cuda:N (nvidia-smi's index N). One run per GPU at a time. 422 with field `device` when no such GPU is detected. On Slurm: gpu/cuda:N ask for --gres=gpu:1" },
            "backend": { "type": ["string", "null"], "enum": ["local", "slurm", null], "description": "Where the run executes (default: the server's --backend)" },
            "slurm": schema_ref("SlurmResources") } }));
    s.insert("ResumeRequest".into(), json!({ "type": "object", "additionalProperties": false, "properties": {
            "lr": { "type": ["number", "null"], "exclusiveMinimum": 0, "maximum": crt_trainer::config::MAX_LR,
                "description": "A new base learning rate (train and transfer runs), e.g. after the loss diverged" } } }));
    s.insert("SlurmResources".into(), json!({ "type": ["object", "null"], "additionalProperties": false,
            "description": "Slurm resources (backend slurm only); gaps filled from the server's --slurm-* defaults",
            "properties": {
                "partition": opt("string"),
                "cpus": { "type": ["integer", "null"], "minimum": 1, "maximum": 256 },
                "mem_mb": { "type": ["integer", "null"], "minimum": 1, "maximum": 4194304 },
                "time_limit_min": { "type": ["integer", "null"], "minimum": 1, "maximum": 525600 },
                "gpus": { "type": ["integer", "null"], "minimum": 0, "maximum": 16 },
                "extra_args": { "type": "array", "maxItems": 16, "items": { "type": "string", "maxLength": 200, "pattern": "^--" } } } }));
    s.insert("RunConfig".into(), json!({ "type": "object", "required": ["kind"], "description":
            "The trainer's RunConfig (crt_trainer::config), tagged by kind; unknown fields are refused (422). The server sets out_dir, \
             data.data_dir / data_dir, teacher (transfer), model (certify/predict with a parent) and resume.",
            "properties": { "kind": { "type": "string", "enum": kinds } } }));
    s.insert("Run".into(), json!({ "type": "object", "properties": {
            "id": int, "experiment_id": int, "name": str_, "kind": { "type": "string", "enum": kinds },
            "status": { "type": "string", "enum": statuses },
            "config": schema_ref("RunConfig"),
            "resolved_config": { "type": ["object", "null"], "description": "As the trainer resolved it (all defaults); null until it starts" },
            "arch": opt("string"), "method": opt("string"), "dataset": opt("string"), "sigma": opt("number"),
            "parents": { "type": "array", "items": int }, "out_dir": str_,
            "created_at": num, "queued_at": num, "started_at": opt("number"), "finished_at": opt("number"),
            "wall_time_s": { "type": "number", "description": "Summed over attempts" },
            "attempt": { "type": "integer", "description": "Trainer processes started so far" },
            "pid": { "type": ["integer", "null"], "description": "Local backend: the attempt's supervisor (its process group holds the trainer)" },
            "pgid": opt("integer"), "exit_code": opt("integer"), "exit_signal": opt("integer"),
            "error": opt("string"), "summary": { "type": ["object", "null"], "description": "Final metrics of a finished run" },
            "device_request": { "type": "string", "pattern": "^(auto|cpu|gpu|cuda:[0-9]+)$", "description": "What the run asked for: auto, cpu, gpu or cuda:N" },
            "device": { "type": ["string", "null"], "pattern": "^(cpu|cuda:[0-9]+)$", "description": "Where its latest attempt ran: cpu or cuda:N (the trainer's --device); null until it starts" },
            "progress": { "type": ["object", "null"], "required": ["phase", "done", "total", "unit"],
                "properties": { "phase": str_, "done": int, "total": int, "unit": str_ } },
            "metrics": { "type": "object", "additionalProperties": schema_ref("MetricPoint"), "description": "Latest value per key" },
            "makes_model": { "type": "boolean", "description": "A train or transfer run, or an imported checkpoint (kind external): it holds a model and can be a transfer's teacher or be certified" },
            "is_certification": { "type": "boolean", "description": "It holds a certification's per-image results: a certify run, or an imported certification (kind external)" },
            "resumable": { "type": "boolean", "description": "Stopped or crashed: POST …/resume continues it" },
            "last_seq": { "type": "integer", "description": "Newest event sequence number of this run" } } }));
    // The launch fields apart: one json! this size passes serde_json's macro recursion limit.
    if let Some(run) = s.get_mut("Run").and_then(Value::as_object_mut) {
        if let Some(Value::Object(props)) = run.get_mut("properties") {
            props.insert("backend".into(), json!({ "type": "string", "enum": ["local", "slurm"] }));
            props.insert(
                "resources".into(),
                json!({ "anyOf": [{ "type": "null" }, schema_ref("SlurmResources")],
                "description": "The Slurm resources the run asked for (null: the server's defaults)" }),
            );
            props.insert("handle".into(), json!({ "type": ["object", "null"], "required": ["backend"], "description": "The current attempt: {backend: local, pid, attempt_dir} or {backend: slurm, job_id, attempt_dir}" }));
            props.insert("backend_state".into(), json!({ "type": ["object", "null"], "description": "What the backend last said: {state: PENDING, reason} or {state: RUNNING, job_id?, node?, pid?}" }));
            props.insert("stop_requested_at".into(), opt("number"));
            props.insert(
                "params".into(),
                json!({ "type": "object", "additionalProperties": { "type": "string" },
                "description": "External runs (MLflow clients): their params" }),
            );
            props.insert(
                "tags".into(),
                json!({ "type": "object", "additionalProperties": { "type": "string" },
                "description": "External runs (MLflow clients): their tags" }),
            );
            props.insert(
                "last_write_at".into(),
                json!({ "type": ["number", "null"], "description": "External runs: when the client last wrote" }),
            );
        }
        let required: Vec<Value> =
            run["properties"].as_object().expect("Run properties").keys().map(|k| json!(k)).collect();
        run.insert("required".into(), Value::Array(required));
    }
    s.insert("Devices".into(), json!({ "type": "object", "required": ["cpu", "gpus", "gpu_error", "slurm"], "properties": {
            "cpu": { "type": "object", "required": ["cores", "max_concurrent_runs", "running"], "properties": {
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
        json!({ "type": "object", "required": ["step", "epoch", "ts", "value"], "properties": { "step": int, "epoch": opt("number"), "ts": num,
            "value": { "oneOf": [{ "type": "number" }, { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] }],
                "description": "A number, or \"NaN\", \"Infinity\", \"-Infinity\"" } } }),
    );
    s.insert(
        "MetricHistory".into(),
        json!({ "type": "object", "required": ["run_id", "metrics"], "properties": {
            "run_id": int,
            "metrics": { "type": "object", "additionalProperties": { "type": "object", "required": ["total", "downsampled", "points"], "properties": {
                "total": int, "downsampled": { "type": "boolean" },
                "points": { "type": "array", "items": schema_ref("MetricPoint") } } } } } }),
    );
    s.insert(
        "LogLine".into(),
        json!({ "type": "object", "required": ["id", "ts", "stream", "level", "line"], "properties": {
            "id": int, "ts": num, "stream": { "type": "string", "enum": ["stdout", "stderr", "trainer", "server"] },
            "level": opt("string"), "line": str_ } }),
    );
    s.insert(
        "LogPage".into(),
        json!({ "type": "object", "required": ["lines", "next_after"], "properties": {
            "lines": { "type": "array", "items": schema_ref("LogLine") },
            "next_after": { "type": "integer", "description": "Pass as `after` for the next page" } } }),
    );
    s.insert("Artifact".into(), json!({ "type": "object", "required": ["path", "kind", "size", "sha256", "ts"], "properties": {
            "path": str_, "kind": { "type": "string", "enum": ["model", "metadata", "checkpoint", "certificates", "summary", "other"] },
            "size": int, "sha256": str_, "ts": num } }));
    s.insert(
        "Certificate".into(),
        json!({ "type": "object", "required": ["idx", "label", "predict", "correct", "time"], "properties": {
            "idx": int, "label": int, "predict": { "type": "integer", "description": "-1: abstained" },
            "radius": num, "correct": { "type": "boolean" }, "count_a": int,
            "p_lower": num, "time": num,
            "samples": { "type": "integer", "description": "sequential modes: estimation samples drawn" },
            "decision": { "type": "string", "description": "sequential modes: certified, not_certified, converged, abstain or cap" },
            "p_upper": { "type": "number", "description": "sequential modes: upper bound on p_A" } } }),
    );
    s.insert(
        "CertSummary".into(),
        json!({ "type": "object", "required": ["n", "accuracy", "abstain_rate", "acr", "mean_time_s", "radii", "p_lower_histogram"], "properties": {
            "n": int, "accuracy": num, "abstain_rate": num, "acr": num, "mean_time_s": num,
            "radii": { "type": "array", "items": { "type": "object", "required": ["radius", "certified_accuracy", "count"], "properties": {
                "radius": num, "certified_accuracy": num, "count": int } } },
            "samples": { "type": "object", "description": "sequential modes only: estimation samples per image",
                "properties": { "mean": num, "min": int, "median": int, "p90": int, "max": int,
                    "decisions": { "type": "object", "additionalProperties": int } } },
            "p_lower_histogram": { "type": "array", "items": int, "minItems": 20, "maxItems": 20,
                "description": "images by lower bound on p_A, 20 equal bins over [0, 1]" } } }),
    );
    study_schemas(&mut s, archs, datasets);
    token_schemas(&mut s);
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

fn study_schemas(s: &mut Map<String, Value>, archs: &[&str], datasets: &[&str]) {
    let methods: Vec<&str> = Method::NAMES.to_vec();
    let int = json!({"type": "integer"});
    let opt = |t: &str| json!({"type": [t, "null"]});
    s.insert("NewStudy".into(), json!({ "type": "object", "required": ["name", "teacher", "students"], "additionalProperties": false, "properties": {
            "name": { "type": "string", "minLength": 1 },
            "dataset": { "type": "string", "enum": datasets, "description": "Default mnist" },
            "teacher": { "type": "object", "required": ["arch", "method", "epochs"], "additionalProperties": false, "properties": {
                "arch": { "type": "string", "enum": archs },
                "method": { "type": "object", "required": ["name"], "description": "The trainer's method config, e.g. {\"name\": \"gaussian\", \"sigma\": 0.25} (a robust method with a sigma)",
                    "properties": { "name": { "type": "string", "enum": methods } } },
                "epochs": { "type": "integer", "minimum": 1 },
                "batch_size": { "type": ["integer", "null"], "minimum": 1 },
                "lr": { "type": ["number", "null"], "exclusiveMinimum": 0 } } },
            "students": { "type": "array", "minItems": 1, "items": { "type": "string", "enum": archs } },
            "baselines": { "type": ["array", "null"], "minItems": 1, "maxItems": MAX_BASELINES,
                "description": "Robust methods each student architecture is also trained with from scratch (default: one, the teacher's recipe). \
                    What a baseline leaves out is the teacher's; two equal recipes are refused. Roles: baseline/<label>/<arch>, the label being the method's \
                    name, with -<index in this list> appended where the name is listed more than once",
                "items": { "type": "object", "required": ["method"], "additionalProperties": false, "properties": {
                    "method": { "type": "object", "required": ["name", "sigma"], "description": "The trainer's method config (a robust method with a sigma)",
                        "properties": { "name": { "type": "string", "enum": methods } } },
                    "epochs": { "type": ["integer", "null"], "minimum": 1, "description": "Default: the teacher's" },
                    "batch_size": { "type": ["integer", "null"], "minimum": 1, "description": "Default: the teacher's" },
                    "lr": { "type": ["number", "null"], "exclusiveMinimum": 0, "description": "Default: the teacher's" } } } },
            "transfer": { "type": "object", "additionalProperties": false, "properties": {
                "logit_weight": { "type": "number", "description": "Default 1" },
                "epochs": { "type": ["integer", "null"], "minimum": 1, "description": "Default: the teacher's" } } },
            "certify": { "type": "object", "description": "The trainer's SmoothingConfig: sigma, n0, n, alpha, batch, skip, max, seed, mode (docs/certification.md)" },
            "arch_optim": { "type": "object", "propertyNames": { "enum": archs },
                "description": "Per architecture: the optimizer (and lr, weight decay) of every run that trains a model of it; others use SGD (docs/study.md)",
                "additionalProperties": { "type": "object", "required": ["optimizer"], "additionalProperties": false, "properties": {
                    "optimizer": { "type": "object", "required": ["name"], "description": "{\"name\": \"sgd\"} or {\"name\": \"adamw\", \"beta1\", \"beta2\", \"eps\"} (docs/methods.md)",
                        "properties": { "name": { "type": "string", "enum": ["sgd", "adamw"] } } },
                    "lr": { "type": ["number", "null"], "exclusiveMinimum": 0 },
                    "weight_decay": { "type": ["number", "null"], "minimum": 0 } } } },
            "train_subset": { "type": ["integer", "null"], "minimum": 1 },
            "test_subset": { "type": ["integer", "null"], "minimum": 1 },
            "seed": { "type": ["integer", "null"], "minimum": 0 } } }));
    s.insert("StudyCreated".into(), json!({ "type": "object", "required": ["experiment_id", "runs"], "properties": {
            "experiment_id": int,
            "runs": { "type": "object", "additionalProperties": int, "description": "Run id by role: teacher, crt/<arch>, baseline/<label>/<arch>, certify/<role>" } } }));
    s.insert("StudyTable".into(), json!({ "type": "object", "required": ["experiment_id", "name", "radii", "rows", "students", "curves", "done"], "properties": {
            "experiment_id": int, "name": { "type": "string" },
            "radii": { "type": "array", "items": { "type": "number" }, "description": "The radii of each row's certified_acc" },
            "rows": { "type": "array", "description": "Every model in creation order: the teacher, then per student its CRT model and baselines",
                "items": { "type": "object",
                "required": ["role", "role_kind", "student", "baseline", "parent", "generation", "arch", "method", "sigma", "train_run", "train_status",
                    "certify_run", "certify_status", "test_acc", "clean_acc", "images", "certified_acc", "certified_acc_se", "acr", "train_wall_time_s", "speedup"],
                "properties": {
                    "role": { "type": "string" },
                    "role_kind": { "type": "string", "enum": ["teacher", "crt", "baseline", "other"] },
                    "student": { "type": ["string", "null"], "description": "The student architecture of a CRT or baseline row" },
                    "baseline": { "type": ["string", "null"], "description": "A baseline row's label" },
                    "parent": { "type": ["string", "null"], "description": "The role of the model this one learned from (lineage)" },
                    "generation": { "type": "integer", "minimum": 0, "description": "0: trained from scratch; else its parent's + 1" },
                    "arch": opt("string"), "method": opt("string"), "sigma": opt("number"),
                    "train_run": int, "train_status": { "type": "string" },
                    "certify_run": opt("integer"), "certify_status": opt("string"),
                    "test_acc": opt("number"), "clean_acc": opt("number"),
                    "images": { "type": ["integer", "null"], "description": "Test images certified" },
                    "certified_acc": { "type": "array", "items": opt("number") },
                    "certified_acc_se": { "type": "array", "items": opt("number"), "description": "Binomial standard error of each certified_acc: sqrt(p(1-p)/images)" },
                    "acr": opt("number"), "train_wall_time_s": { "type": "number" },
                    "speedup": { "type": ["number", "null"], "description": "Baseline rows: this baseline's training time / the CRT student's (same arch), once both finished" } } } },
            "students": { "type": "array", "description": "Per student architecture: its CRT model beside each baseline",
                "items": { "type": "object", "required": ["arch", "crt", "baselines"], "properties": {
                    "arch": { "type": "string" }, "crt": { "type": ["string", "null"], "description": "The CRT model's role" },
                    "baselines": { "type": "array", "items": { "type": "object", "required": ["label", "role", "speedup"], "properties": {
                        "label": { "type": "string" }, "role": { "type": "string" },
                        "speedup": { "type": ["number", "null"], "description": "Baseline training time / CRT training time" } } } } } } },
            "curves": { "type": "array", "items": { "type": "object", "required": ["role", "points"], "properties": {
                "role": { "type": "string" },
                "points": { "type": "array", "description": "(radius, certified accuracy) by increasing radius",
                    "items": { "type": "array", "items": { "type": "number" }, "minItems": 2, "maxItems": 2 } } } } },
            "done": { "type": "boolean", "description": "Every run has ended" } } }));
}

fn token_schemas(s: &mut Map<String, Value>) {
    let scope = json!({ "type": "string", "enum": ["read", "write", "admin"],
        "description": "read: GET everything; write: also changes; admin: also tokens" });
    let token_props = json!({
        "id": { "type": "integer" }, "name": { "type": "string" }, "scope": scope,
        "created_at": { "type": "number" },
        "last_used_at": { "type": ["number", "null"], "description": "Updated at most once a minute" },
        "revoked_at": { "type": ["number", "null"] } });
    s.insert(
        "NewToken".into(),
        json!({ "type": "object", "required": ["name", "scope"], "additionalProperties": false, "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": tokens::MAX_TOKEN_NAME,
                "description": format!("1 to {} characters after trimming", tokens::MAX_TOKEN_NAME) },
            "scope": scope } }),
    );
    s.insert(
        "Token".into(),
        json!({ "type": "object", "required": ["id", "name", "scope", "created_at", "last_used_at", "revoked_at"], "properties": token_props }),
    );
    let mut created = token_props.as_object().cloned().unwrap_or_default();
    created.insert("token".into(), json!({ "type": "string", "description": "The secret: send it as `Authorization: Bearer <token>`; shown only here" }));
    s.insert(
        "CreatedToken".into(),
        json!({ "type": "object", "required": ["id", "name", "scope", "created_at", "token"], "properties": Value::Object(created) }),
    );
}
