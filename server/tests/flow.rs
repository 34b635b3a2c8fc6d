//! The main path, end to end over HTTP with the real trainer and real MNIST: train a LeNet with
//! Gaussian noise, watch it over SSE, read its metrics, logs and model; then certify it.

mod common;

use std::time::Duration;

use common::{train_config, SseClient, SseEvent, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn train_watch_and_certify() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("flow").await;
    // Batches of 32 give 63 steps, so a few train metrics (every 20 steps) besides the evaluation.
    let mut config = train_config(1, 2000);
    config["optim"]["batch_size"] = json!(32);
    let run = server.create_run(exp, &[], config).await;

    // Live: metric events arrive while the run is running, then the final status.
    let mut sse = SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), None).await;
    let mut events: Vec<SseEvent> = Vec::new();
    let mut metrics_while_running = 0;
    let mut running = false;
    loop {
        let ev = sse.next(LONG).await.unwrap_or_else(|| panic!("SSE ended early; server log:\n{}", server.log()));
        if ev.event == "status" {
            running = ev.data["status"] == "running";
            if !running && ev.data["status"] != "queued" {
                events.push(ev);
                break;
            }
        }
        if ev.event == "metrics" && running {
            metrics_while_running += 1;
        }
        events.push(ev);
    }
    let last = events.last().unwrap();
    assert_eq!(last.data["status"], "finished", "{:?}; server log:\n{}", last.data, server.log());
    assert!(metrics_while_running >= 2, "metric events while running: {metrics_while_running}");
    let ids: Vec<i64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids increase: {ids:?}");
    assert!(events.iter().all(|e| e.data["run_id"] == run && e.data["seq"] == e.id.unwrap()));
    for kind in ["started", "progress", "artifact", "log"] {
        assert!(events.iter().any(|e| e.event == kind), "no {kind} event");
    }

    let r = server.run(run).await;
    assert_eq!(r["status"], "finished");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["attempt"], 1);
    assert!(r["wall_time_s"].as_f64().unwrap() > 0.0);
    assert!(r["resolved_config"]["optim"]["lr"].as_f64().is_some(), "the trainer's resolved config is kept");
    let acc = r["metrics"]["test/acc"]["value"].as_f64().expect("latest test/acc");
    assert!(acc > 0.3, "one epoch on 2000 MNIST images beats chance by far: {acc}");
    assert_eq!(r["last_seq"], *ids.last().unwrap());

    // Reconnecting with Last-Event-ID gives exactly what came after it.
    let mid = ids[ids.len() / 2];
    let mut again = SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), Some(mid)).await;
    let mut replayed = Vec::new();
    while let Some(ev) = again.next(Duration::from_secs(2)).await {
        replayed.push(ev.id.unwrap());
    }
    assert_eq!(replayed, ids.iter().copied().filter(|&i| i > mid).collect::<Vec<_>>());
    // The experiment stream carries the same events.
    let mut exp_sse = SseClient::connect(&server, &format!("/api/v1/experiments/{exp}/events?after=0"), None).await;
    let mut exp_ids = Vec::new();
    while let Some(ev) = exp_sse.next(Duration::from_secs(2)).await {
        exp_ids.push(ev.id.unwrap());
    }
    assert_eq!(exp_ids, ids);

    check_metrics(&server, run).await;
    check_logs(&server, run).await;
    let model = check_artifacts(&server, run).await;
    assert!(model > 0);
    certify(&server, exp, run).await;
}

async fn check_metrics(server: &common::Server, run: i64) {
    let (st, full) = server.get(&format!("/api/v1/runs/{run}/metrics")).await;
    assert_eq!(st, StatusCode::OK);
    let loss = &full["metrics"]["train/loss"];
    let points = loss["points"].as_array().unwrap();
    assert_eq!(loss["total"].as_u64().unwrap() as usize, points.len());
    assert!(points.len() >= 2, "{loss}");
    let steps: Vec<i64> = points.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]));

    let (st, small) = server.get(&format!("/api/v1/runs/{run}/metrics?keys=train/loss,test/acc&points=3")).await;
    assert_eq!(st, StatusCode::OK);
    let keys: Vec<&String> = small["metrics"].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["test/acc", "train/loss"]);
    let thin = small["metrics"]["train/loss"]["points"].as_array().unwrap();
    assert!(thin.len() <= 3);
    assert_eq!(small["metrics"]["train/loss"]["downsampled"], points.len() > 3);
    assert_eq!(thin.last(), points.last(), "the last point survives downsampling");
    let max = points.iter().map(|p| p["value"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert!(thin.iter().any(|p| p["value"].as_f64() == Some(max)), "the maximum survives downsampling");
}

async fn check_logs(server: &common::Server, run: i64) {
    let (st, page) = server.get(&format!("/api/v1/runs/{run}/logs?limit=2")).await;
    assert_eq!(st, StatusCode::OK);
    let first = page["lines"].as_array().unwrap();
    assert_eq!(first.len(), 2);
    let next = page["next_after"].as_i64().unwrap();
    assert_eq!(next, first[1]["id"].as_i64().unwrap());
    let (_, rest) = server.get(&format!("/api/v1/runs/{run}/logs?after={next}&limit=10000")).await;
    let rest = rest["lines"].as_array().unwrap();
    assert!(rest.iter().all(|l| l["id"].as_i64().unwrap() > next));
    let all: Vec<&Value> = first.iter().chain(rest).collect();
    assert!(all.iter().any(|l| l["stream"] == "server" && l["line"].as_str().unwrap().contains("started")), "{all:?}");
    assert!(all.iter().any(|l| l["line"].as_str().unwrap().contains("run finished")));
    let (_, tail) = server.get(&format!("/api/v1/runs/{run}/logs?tail=true&limit=1")).await;
    assert_eq!(tail["lines"][0]["id"], all.last().unwrap()["id"], "tail gives the newest line");
}

/// Returns the model's size.
async fn check_artifacts(server: &common::Server, run: i64) -> u64 {
    let (st, list) = server.get(&format!("/api/v1/runs/{run}/artifacts")).await;
    assert_eq!(st, StatusCode::OK);
    let list = list.as_array().unwrap();
    let model = list.iter().find(|a| a["kind"] == "model").unwrap_or_else(|| panic!("no model artifact: {list:?}"));
    assert!(list.iter().any(|a| a["path"] == "run-config.json"), "unreported files are recorded too: {list:?}");
    let path = model["path"].as_str().unwrap();
    let resp = server.http.get(server.url(&format!("/api/v1/runs/{run}/artifacts/{path}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let size = model["size"].as_u64().unwrap();
    assert_eq!(resp.headers()["content-length"].to_str().unwrap(), size.to_string());
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), model["sha256"].as_str().unwrap());
    size
}

async fn certify(server: &common::Server, exp: i64, model_run: i64) {
    let config = json!({"kind": "certify", "smoothing": {"n0": 50, "n": 500, "max": 10, "skip": 100, "batch": 250}});
    let (st, created) = server
        .post(
            "/api/v1/runs",
            &json!({"experiment_id": exp, "name": "certify it", "parents": [model_run], "config": config}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["arch"], "lenet", "a certification inherits its model's arch");
    assert_eq!(created["name"], "certify it");
    let r = server.wait_status(id, "finished", LONG).await;
    assert_eq!(r["exit_code"], 0);

    let (st, certs) = server.get(&format!("/api/v1/runs/{id}/certificates")).await;
    assert_eq!(st, StatusCode::OK);
    let certs = certs.as_array().unwrap();
    assert_eq!(certs.len(), 10, "max 10 images");
    let idx: Vec<i64> = certs.iter().map(|c| c["idx"].as_i64().unwrap()).collect();
    assert_eq!(idx, (0..10).map(|i| i * 100).collect::<Vec<_>>(), "every 100th test image");
    let (st, summary) = server.get(&format!("/api/v1/runs/{id}/certificates/summary")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(summary["n"], 10);
    let correct = certs.iter().filter(|c| c["correct"] == true).count() as f64;
    assert_eq!(summary["accuracy"].as_f64().unwrap(), correct / 10.0);
    assert_eq!(summary["radii"][0]["radius"], 0.0);
    assert_eq!(summary["radii"][0]["certified_accuracy"], summary["accuracy"]);
    let acr: f64 =
        certs.iter().filter(|c| c["correct"] == true).map(|c| c["radius"].as_f64().unwrap()).sum::<f64>() / 10.0;
    assert!((summary["acr"].as_f64().unwrap() - acr).abs() < 1e-9);
    let accs: Vec<f64> =
        summary["radii"].as_array().unwrap().iter().map(|r| r["certified_accuracy"].as_f64().unwrap()).collect();
    assert!(accs.windows(2).all(|w| w[0] >= w[1]), "certified accuracy falls with the radius: {accs:?}");
    for c in certs {
        let (label, predict) = (c["label"].as_i64().unwrap(), c["predict"].as_i64().unwrap());
        assert!((0..10).contains(&label) && (-1..10).contains(&predict), "{c}");
        assert_eq!(c["correct"], predict == label, "{c}");
    }
}
