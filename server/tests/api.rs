//! The JSON API over HTTP against the real server: experiments CRUD, request validation
//! (4xx with a JSON message naming the field, nothing stored), unknown ids, filters, the
//! OpenAPI document, static files, and dependency failure.

mod common;

use std::time::Duration;

use common::{train_config, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn experiments_crud() {
    let env = TestEnv::new();
    let server = env.server();
    let (st, health) = server.get("/api/v1/health").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(health["database"], if env.is_postgres() { "postgres" } else { "sqlite" });

    let (st, exp) = server
        .post("/api/v1/experiments", &json!({"name": " CRT on MNIST ", "description": "d", "tags": ["a", "b"]}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{exp}");
    let id = exp["id"].as_i64().unwrap();
    assert_eq!(exp["name"], "CRT on MNIST");
    assert_eq!(exp["tags"], json!(["a", "b"]));

    let (st, got) = server.get(&format!("/api/v1/experiments/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["description"], "d");
    assert_eq!(got["last_seq"], 0);

    let resp = server
        .http
        .patch(server.url(&format!("/api/v1/experiments/{id}")))
        .json(&json!({"name": "renamed", "tags": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, list) = server.get("/api/v1/experiments").await;
    let listed: Vec<&Value> = list.as_array().unwrap().iter().filter(|e| e["id"] == id).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "renamed");
    assert_eq!(listed[0]["tags"], json!(["x"]));
    assert_eq!(listed[0]["description"], "d", "a patch leaves other fields alone");

    let resp = server.http.delete(server.url(&format!("/api/v1/experiments/{id}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (st, body) = server.get(&format!("/api/v1/experiments/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("does not exist"), "{body}");
}

/// Every bad request gets a 4xx JSON error naming the problem, and changes nothing.
#[tokio::test]
async fn invalid_requests_are_refused_and_change_nothing() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("validation").await;
    // A real (tiny) training run, as the parent of certification requests.
    let parent = server.create_run(exp, &[], train_config(1, 256)).await;

    let snapshot = || async {
        let runs = server.get("/api/v1/runs?sort=id").await.1;
        let ids: Vec<Value> = runs.as_array().unwrap().iter().map(|r| json!([r["id"], r["config"]])).collect();
        let exps = server.get("/api/v1/experiments").await.1;
        let exps: Vec<Value> =
            exps.as_array().unwrap().iter().map(|e| json!([e["id"], e["name"], e["tags"], e["updated_at"]])).collect();
        (ids, exps)
    };
    let before = snapshot().await;

    let train =
        |method: Value| json!({"kind": "train", "data": {"dataset": "mnist"}, "arch": "lenet", "method": method});
    let run_req = |config: Value| json!({"experiment_id": exp, "config": config});
    // (request body, expected status, expected field, a word the message must contain)
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            run_req(train(json!({"name": "gaussian", "sigma": 0.0}))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.method.sigma",
            "> 0",
        ),
        (
            run_req(train(json!({"name": "gaussian", "sigma": -0.5}))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.method.sigma",
            "> 0",
        ),
        (
            run_req(train(json!({"name": "dropout"}))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.method.name",
            "gaussian",
        ),
        (
            run_req(
                json!({"kind": "train", "data": {"dataset": "mnist"}, "arch": "vgg16", "method": {"name": "standard"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.arch",
            "lenet",
        ),
        (
            run_req(
                json!({"kind": "train", "data": {"dataset": "svhn"}, "arch": "lenet", "method": {"name": "standard"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.data.dataset",
            "fashion-mnist",
        ),
        (
            run_req(
                json!({"kind": "train", "data": {"dataset": "mnist"}, "arch": "lenet", "method": {"name": "standard"}, "bogus": 1}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.bogus",
            "unknown field",
        ),
        (run_req(json!({"kind": "evaluate"})), StatusCode::UNPROCESSABLE_ENTITY, "config.kind", "certify"),
        (run_req(json!({"kind": "certify"})), StatusCode::UNPROCESSABLE_ENTITY, "parents", "parent"),
        (
            json!({"experiment_id": exp, "parents": [987654], "config": {"kind": "certify"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "parents[0]",
            "987654",
        ),
        (
            json!({"experiment_id": exp, "parents": [parent], "config": {"kind": "certify", "smoothing": {"alpha": 0.7}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.smoothing.alpha",
            "0.5",
        ),
        (
            json!({"experiment_id": exp, "parents": [parent], "config": train(json!({"name": "standard"}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "parents",
            "no parents",
        ),
        (
            json!({"experiment_id": 987654, "config": train(json!({"name": "standard"}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "experiment_id",
            "does not exist",
        ),
        (
            json!({"experiment_id": "one", "config": train(json!({"name": "standard"}))}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "experiment_id",
            "expected i64",
        ),
        (
            json!({"experiment_id": exp, "config": train(json!({"name": "standard"})), "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
            "unknown field",
        ),
        (json!({"experiment_id": exp}), StatusCode::UNPROCESSABLE_ENTITY, "body", "config"),
    ];
    for (body, status, field, word) in &cases {
        let (st, err) = server.post("/api/v1/runs", body).await;
        assert_eq!(st, *status, "{body} -> {err}");
        assert_eq!(err["field"], *field, "{body} -> {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains(word), "message for {body} should mention '{word}': {msg}");
    }

    let (st, err) = server.post_raw("/api/v1/runs", "{\"experiment_id\": 1,", "application/json").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("invalid JSON"), "{err}");
    let (st, err) = server.post_raw("/api/v1/runs", "experiment_id=1", "application/x-www-form-urlencoded").await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(err["error"].as_str().unwrap().contains("application/json"), "{err}");
    let (st, err) = server.post("/api/v1/experiments", &json!({"name": ""})).await;
    assert_eq!((st, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")), "{err}");
    let (st, err) = server.post("/api/v1/experiments", &json!({"name": "x", "owner": "me"})).await;
    assert_eq!((st, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("owner")), "{err}");

    // Unknown ids and bad parameters.
    for path in [
        "/api/v1/runs/987654",
        "/api/v1/runs/987654/metrics",
        "/api/v1/runs/987654/logs",
        "/api/v1/runs/987654/artifacts",
        "/api/v1/runs/987654/certificates/summary",
        "/api/v1/runs/987654/events",
        "/api/v1/experiments/987654",
        "/api/v1/experiments/987654/runs",
        "/api/v1/experiments/987654/events",
        &format!("/api/v1/runs/{parent}/artifacts/no-such-file.bin"),
        "/api/v1/no-such-endpoint",
    ] {
        let (st, err) = server.get(path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {err}");
        assert!(err["error"].is_string(), "{path}: {err}");
    }
    for (path, field) in [
        ("/api/v1/runs?status=done", Some("status")),
        ("/api/v1/runs?arch=vgg16", Some("arch")),
        ("/api/v1/runs?sort=colour", Some("sort")),
        ("/api/v1/runs?limit=0", Some("limit")),
        ("/api/v1/runs?shape=round", None),
        ("/api/v1/runs/abc", None),
        (&format!("/api/v1/runs/{parent}/metrics?points=2"), Some("points")),
        (&format!("/api/v1/runs/{parent}/logs?stream=stdin"), Some("stream")),
        (&format!("/api/v1/runs/{parent}/certificates/summary?radii=a,b"), Some("radii")),
    ] {
        let (st, err) = server.get(path).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {err}");
        assert!(err["error"].is_string(), "{path}: {err}");
        if let Some(field) = field {
            assert_eq!(err["field"], field, "{path}: {err}");
        }
    }
    for path in ["/api/v1/runs/987654/stop", "/api/v1/runs/987654/resume"] {
        let (st, _) = server.post(path, &json!({})).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
    }

    assert_eq!(snapshot().await, before, "refused requests must not change what is stored");

    // State conflicts, once the parent has finished.
    server.wait_status(parent, "finished", Duration::from_secs(300)).await;
    let (st, err) = server.post(&format!("/api/v1/runs/{parent}/stop"), &json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{err}");
    assert!(err["error"].as_str().unwrap().contains("finished"), "{err}");
    let (st, err) = server.post(&format!("/api/v1/runs/{parent}/resume"), &json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{err}");
    let resp = server.http.delete(server.url(&format!("/api/v1/experiments/{exp}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "no active runs left: deletable");
    assert!(!env.data_dir().join(format!("runs/{parent}")).exists(), "run files are removed with the experiment");
}

#[tokio::test]
async fn run_lists_filter_and_sort() {
    let env = TestEnv::new();
    // No trainer: runs fail at once, which is all filtering needs (a real process, /bin/false).
    let server = env.server_with(&["--trainer-bin", "/bin/false", "--max-concurrent-runs", "4"]);
    let a = server.create_experiment("a").await;
    let b = server.create_experiment("b").await;
    let cfg = |arch: &str, method: Value, dataset: &str| json!({"kind": "train", "data": {"dataset": dataset}, "arch": arch, "method": method});
    let r1 = server.create_run(a, &[], cfg("lenet", json!({"name": "gaussian", "sigma": 0.5}), "mnist")).await;
    let r2 = server.create_run(a, &[], cfg("resnet20", json!({"name": "macer", "sigma": 0.25}), "cifar10")).await;
    let r3 = server.create_run(b, &[], cfg("lenet", json!({"name": "standard"}), "fashion-mnist")).await;
    for id in [r1, r2, r3] {
        server.wait_status(id, "failed", Duration::from_secs(30)).await;
    }
    let ids = |v: Value| v.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(server.get(&format!("/api/v1/runs?experiment_id={a}")).await.1), vec![r1, r2]);
    assert_eq!(ids(server.get(&format!("/api/v1/experiments/{b}/runs")).await.1), vec![r3]);
    assert_eq!(ids(server.get("/api/v1/runs?arch=lenet").await.1), vec![r1, r3]);
    assert_eq!(ids(server.get("/api/v1/runs?method=macer").await.1), vec![r2]);
    assert_eq!(ids(server.get("/api/v1/runs?dataset=fashion-mnist&kind=train&status=failed").await.1), vec![r3]);
    assert_eq!(ids(server.get("/api/v1/runs?status=finished").await.1), Vec::<i64>::new());
    assert_eq!(ids(server.get("/api/v1/runs?sort=-id").await.1), vec![r3, r2, r1]);
    assert_eq!(ids(server.get("/api/v1/runs?sort=sigma").await.1), vec![r2, r1, r3], "by sigma, runs without one last");
    assert_eq!(ids(server.get("/api/v1/runs?sort=id&limit=1&offset=1").await.1), vec![r2]);
    let run = server.run(r1).await;
    assert_eq!(run["name"], format!("train lenet gaussian mnist #{r1}"));
    assert!(run["error"].as_str().unwrap().contains("status 1"), "{run}");
    assert_eq!(run["exit_code"], 1);
}

#[tokio::test]
async fn dependents_of_a_failed_run_fail() {
    let env = TestEnv::new();
    let server = env.server_with(&["--trainer-bin", "/bin/false"]);
    let exp = server.create_experiment("deps").await;
    let parent = server.create_run(exp, &[], train_config(1, 256)).await;
    let child = server.create_run(exp, &[parent], json!({"kind": "certify", "smoothing": {"n": 100}})).await;
    let grandchild = server
        .create_run(exp, &[parent], json!({"kind": "transfer", "data": {"dataset": "mnist"}, "student_arch": "linear"}))
        .await;
    server.wait_status(parent, "failed", Duration::from_secs(30)).await;
    for id in [child, grandchild] {
        let run = server.wait_status(id, "failed", Duration::from_secs(30)).await;
        let err = run["error"].as_str().unwrap();
        assert!(err.contains(&format!("parent run {parent} failed")), "{err}");
        assert_eq!(run["attempt"], 0, "a dependent of a failed run never starts");
    }
    let child_run = server.run(child).await;
    assert_eq!(child_run["parents"], json!([parent]));
    assert_eq!(
        child_run["config"]["model"]["path"],
        server.run(parent).await["out_dir"],
        "the model is the parent's output"
    );
}

#[tokio::test]
async fn openapi_and_static_files() {
    let env = TestEnv::new();
    let static_dir = env.dir.path().join("static");
    std::fs::create_dir_all(&static_dir).unwrap();
    std::fs::write(static_dir.join("hello.css"), "body { color: red }").unwrap();
    let server = env.server_with(&["--static-dir", static_dir.to_str().unwrap()]);

    let (st, doc) = server.get("/api/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/experiments", &["get", "post"][..]),
        ("/api/v1/experiments/{id}", &["get", "patch", "delete"]),
        ("/api/v1/experiments/{id}/runs", &["get"]),
        ("/api/v1/experiments/{id}/events", &["get"]),
        ("/api/v1/runs", &["get", "post"]),
        ("/api/v1/runs/{id}", &["get"]),
        ("/api/v1/runs/{id}/stop", &["post"]),
        ("/api/v1/runs/{id}/resume", &["post"]),
        ("/api/v1/runs/{id}/metrics", &["get"]),
        ("/api/v1/runs/{id}/logs", &["get"]),
        ("/api/v1/runs/{id}/artifacts", &["get"]),
        ("/api/v1/runs/{id}/artifacts/{path}", &["get"]),
        ("/api/v1/runs/{id}/certificates", &["get"]),
        ("/api/v1/runs/{id}/certificates/summary", &["get"]),
        ("/api/v1/runs/{id}/events", &["get"]),
        ("/api/v1/health", &["get"]),
    ] {
        let item = paths.get(path).unwrap_or_else(|| panic!("OpenAPI lacks {path}"));
        for m in methods {
            assert!(item.get(*m).is_some(), "OpenAPI lacks {m} {path}");
        }
    }
    // Every $ref points at a schema that exists.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }

    let resp = server.http.get(server.url("/static/hello.css")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/css"));
    assert_eq!(resp.text().await.unwrap(), "body { color: red }");
}
