//! Stopping, crashing, resuming, and a server that dies under a running trainer — with the real
//! trainer on real MNIST, driven over HTTP.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{alive, signal, train_config, TestEnv};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(600);

fn has_checkpoint(server_artifacts: &Value) -> bool {
    server_artifacts.as_array().is_some_and(|a| a.iter().any(|x| x["kind"] == "checkpoint"))
}

/// (key, step) of every stored metric point of a run.
async fn metric_points(server: &common::Server, run: i64) -> BTreeSet<(String, i64)> {
    let (st, body) = server.get(&format!("/api/v1/runs/{run}/metrics")).await;
    assert_eq!(st, StatusCode::OK);
    let mut out = BTreeSet::new();
    for (key, series) in body["metrics"].as_object().unwrap() {
        let points = series["points"].as_array().unwrap();
        assert_eq!(series["total"].as_u64().unwrap() as usize, points.len());
        for p in points {
            assert!(out.insert((key.clone(), p["step"].as_i64().unwrap())), "duplicate point {key} step {}", p["step"]);
        }
    }
    out
}

#[tokio::test]
async fn stop_a_running_run() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("stop").await;
    let run = server.create_run(exp, &[], train_config(50, 2000)).await;
    let r =
        server.wait_run(run, LONG, "first metrics", |r| r["metrics"].as_object().is_some_and(|m| !m.is_empty())).await;
    let pid = r["pid"].as_i64().unwrap();
    assert!(alive(pid));

    let (st, resp) = server.post(&format!("/api/v1/runs/{run}/stop"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{resp}");
    let r = server.wait_status(run, "stopped", Duration::from_secs(60)).await;
    assert!(!alive(pid), "the trainer is gone");
    assert_eq!(r["exit_code"], 0, "the trainer stopped cleanly: {r}");
    assert_eq!(r["resumable"], true);
    assert!(has_checkpoint(&server.get(&format!("/api/v1/runs/{run}/artifacts")).await.1), "stop writes a checkpoint");
    let logs = server.get(&format!("/api/v1/runs/{run}/logs?stream=server")).await.1;
    assert!(
        logs["lines"].as_array().unwrap().iter().any(|l| l["line"].as_str().unwrap().contains("stopped")),
        "{logs}"
    );

    // A queued run stops at once, without ever starting.
    let blocker = server.create_run(exp, &[], train_config(50, 2000)).await;
    server.wait_status(blocker, "running", LONG).await;
    let queued = server.create_run(exp, &[], train_config(1, 256)).await;
    assert_eq!(server.run(queued).await["status"], "queued", "one run at a time");
    let (st, r) = server.post(&format!("/api/v1/runs/{queued}/stop"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(r["status"], "stopped");
    assert_eq!(r["attempt"], 0);
    server.post(&format!("/api/v1/runs/{blocker}/stop"), &json!({})).await;
    server.wait_status(blocker, "stopped", Duration::from_secs(60)).await;
}

#[tokio::test]
async fn sigkill_crashes_and_resume_continues() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("crash").await;
    let run = server.create_run(exp, &[], train_config(3, 1000)).await;
    // After the first epoch's checkpoint and evaluation.
    let r = server.wait_run(run, LONG, "test/acc", |r| r["metrics"].get("test/acc").is_some()).await;
    let pid = r["pid"].as_i64().unwrap();
    signal(pid as i32, Signal::SIGKILL);

    let r = server.wait_status(run, "crashed", Duration::from_secs(60)).await;
    assert_eq!(r["exit_signal"], 9);
    assert!(r["error"].as_str().unwrap().contains("SIGKILL"), "{r}");
    assert_eq!(r["resumable"], true);
    let before = metric_points(&server, run).await;
    assert!(!before.is_empty(), "metrics so far are kept");

    let (st, resp) = server.post(&format!("/api/v1/runs/{run}/resume"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["id"], run);
    assert_eq!(resp["config"]["resume"], true);
    let r = server.wait_status(run, "finished", LONG).await;
    assert_eq!(r["attempt"], 2);
    let after = metric_points(&server, run).await;
    assert!(before.is_subset(&after), "nothing stored before the crash is lost");
    assert_final_evaluation(&server, run, &after).await;
    let logs = server.get(&format!("/api/v1/runs/{run}/logs?limit=10000")).await.1;
    assert!(
        logs["lines"].as_array().unwrap().iter().any(|l| l["line"].as_str().unwrap().contains("resumed from step")),
        "the trainer continued from its checkpoint"
    );
}

#[tokio::test]
async fn server_killed_and_restarted_reconciles() {
    let env = TestEnv::new();
    let mut server = env.server();
    let exp = server.create_experiment("restart").await;
    let run = server.create_run(exp, &[], train_config(4, 2000)).await;
    server.wait_run(run, LONG, "test/acc", |r| r["metrics"].get("test/acc").is_some()).await;
    let pid = server.run(run).await["pid"].as_i64().unwrap();
    let points = metric_points(&server, run).await;
    let logs = server.get(&format!("/api/v1/runs/{run}/logs?limit=10000")).await.1["lines"].as_array().unwrap().len();
    let artifacts = server.get(&format!("/api/v1/runs/{run}/artifacts")).await.1;
    let last_seq = server.run(run).await["last_seq"].as_i64().unwrap();

    server.kill();
    assert!(alive(pid), "the trainer outlives a killed server");
    let mut server = env.server();
    let r = server.run(run).await;
    assert_eq!(r["status"], "crashed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("server restarted"), "{r}");
    assert!(!alive(pid), "the orphaned trainer was ended");
    assert!(points.is_subset(&metric_points(&server, run).await), "no stored metric lost");
    let logs_after =
        server.get(&format!("/api/v1/runs/{run}/logs?limit=10000")).await.1["lines"].as_array().unwrap().len();
    assert!(logs_after > logs, "logs kept, plus the server's note");
    let artifacts_after = server.get(&format!("/api/v1/runs/{run}/artifacts")).await.1;
    for a in artifacts.as_array().unwrap() {
        assert!(artifacts_after.as_array().unwrap().iter().any(|b| b["path"] == a["path"]), "artifact {a} kept");
    }
    // Events before the restart are still replayable, with the same ids.
    let mut sse = common::SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), None).await;
    let mut ids = Vec::new();
    while let Some(ev) = sse.next(Duration::from_secs(2)).await {
        ids.push(ev.id.unwrap());
    }
    assert!(ids.contains(&last_seq) && ids.windows(2).all(|w| w[0] < w[1]));

    // Resume under the new server; a graceful shutdown mid-run stops it (resumable).
    let (st, _) = server.post(&format!("/api/v1/runs/{run}/resume"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let r = server.wait_status(run, "running", LONG).await;
    let pid = r["pid"].as_i64().unwrap();
    assert!(server.terminate().success(), "a SIGTERM'd server exits 0");
    assert!(!alive(pid));
    let server = env.server();
    let r = server.run(run).await;
    assert_eq!(r["status"], "stopped", "{r}");
    server.post(&format!("/api/v1/runs/{run}/resume"), &json!({})).await;
    let r = server.wait_status(run, "finished", LONG).await;
    assert_eq!(r["attempt"], 3);
    assert_final_evaluation(&server, run, &metric_points(&server, run).await).await;
}

/// The run was evaluated after its last step, and at least once before (an epoch whose
/// evaluation was cut short by a stop is not repeated on resume: its checkpoint is already
/// past it).
async fn assert_final_evaluation(server: &common::Server, run: i64, points: &BTreeSet<(String, i64)>) {
    let total = server.run(run).await["progress"]["total"].as_i64().expect("progress total");
    let evals: Vec<i64> = points.iter().filter(|(k, _)| k == "test/acc").map(|(_, s)| *s).collect();
    assert!(evals.len() >= 2, "{evals:?}");
    assert_eq!(evals.last(), Some(&total), "{evals:?}");
    let loss_steps = points.iter().filter(|(k, _)| k == "train/loss").count();
    assert!(loss_steps >= 2);
}
