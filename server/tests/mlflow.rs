//! The MLflow-compatible API with the real MLflow client (mlflow-skinny, pinned in
//! scripts/py-requirements.txt): tests/mlflow/client_script.py logs, reads back and searches
//! through the client; these tests then check the same data through /api/v1, the lifecycle of
//! external runs (stop/resume refused, a server restart leaves them, their experiment can be
//! deleted), MLflow's error shape and limits, and that a batch is one transaction and one event.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{Server, SseClient, TestEnv};

async fn mlflow_get(server: &Server, path: &str) -> (StatusCode, Value) {
    server.get(&format!("/api/2.0/mlflow/{path}")).await
}

async fn mlflow_post(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    server.post(&format!("/api/2.0/mlflow/{path}"), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_mlflow_client_logs_into_crt_lab() {
    let env = TestEnv::new();
    let token = env.token("write");
    let mut server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    server.use_token(&token);
    let summary = common::run_mlflow_client_script(&server, &token);
    assert_eq!(summary["failures"], json!([]), "{summary}");
    let exp: i64 = summary["experiment_id"].as_str().unwrap().parse().unwrap();
    let main: i64 = summary["main"].as_str().unwrap().parse().unwrap();
    let run_id = |name: &str| -> i64 { summary["runs"][name].as_str().unwrap().parse().unwrap() };

    // The same runs through CRT Lab's own API: kind external, with their params and tags.
    let (st, runs) = server.get(&format!("/api/v1/experiments/{exp}/runs?limit=1000")).await;
    assert_eq!(st, StatusCode::OK, "{runs}");
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 10, "main, its child and 8 grid runs: {runs:?}");
    assert!(runs.iter().all(|r| r["kind"] == "external"), "{runs:?}");
    let mlp = runs.iter().find(|r| r["name"] == "g-mlp-0.1").unwrap();
    assert_eq!(mlp["params"], json!({ "arch": "mlp", "lr": "0.1" }));
    assert_eq!(mlp["status"], "failed", "FAILED from the client");
    assert_eq!(runs.iter().find(|r| r["name"] == "g-resnet-0.1").unwrap()["status"], "stopped", "KILLED");
    assert_eq!(runs.iter().find(|r| r["name"] == "g-vit-0.001").unwrap()["status"], "running");

    // Every value at a step is kept, in logging order; the run's latest is the last one logged.
    let (_, history) = server.get(&format!("/api/v1/runs/{main}/metrics?keys=train/loss")).await;
    let points: Vec<(i64, f64)> = history["metrics"]["train/loss"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["step"].as_i64().unwrap(), p["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(points, vec![(0, 1.0), (1, 0.5), (2, 1.0 / 3.0), (3, 0.25), (4, 0.2), (4, 0.123), (5, 0.1)]);
    let (_, run) = server.get(&format!("/api/v1/runs/{main}")).await;
    assert_eq!(run["metrics"]["bad"]["value"], "NaN", "{run}");
    assert_eq!(run["metrics"]["train/loss"]["value"], 0.1);
    assert!(run["last_write_at"].is_number(), "{run}");
    assert_eq!(run["tags"]["family"], "lenet");

    // Artifacts: listed with their sha256 and downloadable like a trainer's files.
    let (_, artifacts) = server.get(&format!("/api/v1/runs/{main}/artifacts")).await;
    let paths: Vec<&str> = artifacts.as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    for want in ["artifacts/notes.txt", "artifacts/plots/a.csv", "artifacts/plots/sub/b.json"] {
        assert!(paths.contains(&want), "{want} in {paths:?}");
    }
    let body = server
        .http
        .get(server.url(&format!("/api/v1/runs/{main}/artifacts/artifacts/notes.txt")))
        .send()
        .await
        .unwrap();
    assert_eq!(body.text().await.unwrap(), "hello from the MLflow client\n");

    // CRT Lab has no process behind an external run: stop and resume are refused, clearly.
    let running = run_id("g-vit-0.001");
    for action in ["stop", "resume"] {
        let (st, err) = server.post(&format!("/api/v1/runs/{running}/{action}"), &json!({})).await;
        assert_eq!(st, StatusCode::CONFLICT, "{action}: {err}");
        assert!(err["error"].as_str().unwrap().contains("external run"), "{err}");
    }

    // A restart leaves external runs as they are (a trainer run left running without an event
    // log would be reconciled as crashed).
    drop(server);
    let mut server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    server.use_token(&token);
    let (_, run) = server.get(&format!("/api/v1/runs/{running}")).await;
    assert_eq!(run["status"], "running", "{run}");
    let (st, got) = mlflow_get(&server, &format!("runs/get?run_id={running}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["run"]["info"]["status"], "RUNNING");

    // A client that died leaves its run RUNNING; the experiment can still be deleted.
    let resp = server.http.delete(server.url(&format!("/api/v1/experiments/{exp}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (st, _) = mlflow_get(&server, &format!("runs/get?run_id={running}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn errors_limits_and_batches_follow_mlflow() {
    let env = TestEnv::new();
    let server = env.server_with(&["--trainer-bin", "/bin/false"]);
    let (st, err) = mlflow_get(&server, "runs/get?run_id=424242").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(err["error_code"], "RESOURCE_DOES_NOT_EXIST", "{err}");
    let (st, err) = mlflow_get(&server, "no-such-thing").await;
    assert_eq!((st, err["error_code"].as_str()), (StatusCode::NOT_FOUND, Some("ENDPOINT_NOT_FOUND")));
    let (st, err) = mlflow_post(&server, "experiments/create", json!({})).await;
    assert_eq!((st, err["error_code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE")));
    let (_, made) = mlflow_post(&server, "experiments/create", json!({ "name": "limits" })).await;
    let (st, err) = mlflow_post(&server, "experiments/create", json!({ "name": "limits" })).await;
    assert_eq!((st, err["error_code"].as_str()), (StatusCode::BAD_REQUEST, Some("RESOURCE_ALREADY_EXISTS")));
    let exp = made["experiment_id"].as_str().unwrap().to_string();
    let (st, created) = mlflow_post(&server, "runs/create", json!({ "experiment_id": exp, "run_name": "batch" })).await;
    assert_eq!(st, StatusCode::OK, "{created}");
    let run = created["run"]["info"]["run_id"].as_str().unwrap().to_string();

    // 1,000 metrics per batch is MLflow's limit: exactly it is taken, one more is refused.
    let metrics = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({ "key": "loss", "value": 1.0 / (i + 1) as f64, "timestamp": 1_000 + i, "step": i }))
            .collect()
    };
    let (st, err) = mlflow_post(&server, "runs/log-batch", json!({ "run_id": run, "metrics": metrics(1001) })).await;
    assert_eq!((st, err["error_code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE")));
    assert!(err["message"].as_str().unwrap().contains("at most 1000 metrics"), "{err}");
    let params: Vec<Value> = (0..101).map(|i| json!({ "key": format!("p{i}"), "value": "x" })).collect();
    let (st, _) = mlflow_post(&server, "runs/log-batch", json!({ "run_id": run, "params": params })).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "101 params");
    let (_, before) = server.get(&format!("/api/v1/runs/{run}")).await;
    let (st, body) = mlflow_post(&server, "runs/log-batch", json!({ "run_id": run, "metrics": metrics(1000) })).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (_, history) =
        mlflow_get(&server, &format!("metrics/get-history?run_id={run}&metric_key=loss&max_results=600")).await;
    assert_eq!(history["metrics"].as_array().unwrap().len(), 600);
    let token = history["next_page_token"].as_str().expect("a second page").to_string();
    let (_, rest) = mlflow_get(
        &server,
        &format!("metrics/get-history?run_id={run}&metric_key=loss&max_results=600&page_token={token}"),
    )
    .await;
    assert_eq!(rest["metrics"].as_array().unwrap().len(), 400);
    assert!(rest.get("next_page_token").is_none(), "{rest:?}");
    assert_eq!(rest["metrics"][399]["step"], 999);

    // The 1,000 points were one live event, not 1,000.
    let mut sse =
        SseClient::connect(&server, &format!("/api/v1/runs/{run}/events?after={}", before["last_seq"]), None).await;
    let mut metric_events = 0;
    while let Some(ev) = sse.next(Duration::from_secs(2)).await {
        if ev.event == "metrics" {
            metric_events += 1;
            assert_eq!(ev.data["points"].as_array().unwrap().len(), 1000);
        }
    }
    assert_eq!(metric_events, 1);

    // A changed param is refused; the same value again is fine.
    let p = |v: &str| json!({ "run_id": run, "key": "lr", "value": v });
    assert_eq!(mlflow_post(&server, "runs/log-parameter", p("0.1")).await.0, StatusCode::OK);
    assert_eq!(mlflow_post(&server, "runs/log-parameter", p("0.1")).await.0, StatusCode::OK);
    let (st, err) = mlflow_post(&server, "runs/log-parameter", p("0.2")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(err["message"].as_str().unwrap().contains("Changing param values is not allowed"));

    // Artifact paths stay inside the run.
    let put = |path: String| {
        server.http.put(server.url(&format!("/api/2.0/mlflow-artifacts/artifacts/{path}"))).body("x").send()
    };
    let resp = put(format!("{exp}/{run}/artifacts/../../escape.txt")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = put(format!("{exp}/{run}/outside.txt")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = put(format!("0/{run}/artifacts/wrong-experiment.txt")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = put(format!("{exp}/{run}/artifacts/ok.txt")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(env.data_dir().join(format!("runs/{run}/artifacts/ok.txt")).is_file());

    // Search reads the stored latest values; a filter of the wrong type is MLflow's error.
    let (st, search) =
        mlflow_post(&server, "runs/search", json!({ "experiment_ids": [exp], "filter": "metrics.loss < 0.01" })).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(search["runs"].as_array().unwrap().len(), 1, "its latest loss is 0.001: {search}");
    let (st, err) =
        mlflow_post(&server, "runs/search", json!({ "experiment_ids": [exp], "filter": "metrics.loss < 'x'" })).await;
    assert_eq!((st, err["error_code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_PARAMETER_VALUE")));
}
