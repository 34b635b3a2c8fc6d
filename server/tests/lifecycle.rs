//! Stopping, crashing, resuming, and a server that dies under a running trainer (which goes
//! on, and is caught up with) — with the real trainer on real MNIST, driven over HTTP.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{alive, assert_stored_equals_log, event_log, signal, train_config, trainer_pid, TestEnv};
use crt_trainer::events::Event;
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
    let pid = trainer_pid(r["pid"].as_i64().unwrap()).await;
    signal(pid as i32, Signal::SIGKILL);
    let killed = std::time::Instant::now();

    let r = server.wait_status(run, "crashed", Duration::from_secs(60)).await;
    println!("trainer SIGKILLed -> crashed in {:.2} s", killed.elapsed().as_secs_f64());
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
async fn server_killed_mid_run_loses_nothing() {
    let env = TestEnv::new();
    let mut server = env.server();
    let exp = server.create_experiment("restart").await;
    let run = server.create_run(exp, &[], train_config(10, 2000)).await;
    let r =
        server.wait_run(run, LONG, "first metrics", |r| r["metrics"].as_object().is_some_and(|m| !m.is_empty())).await;
    let supervisor = r["pid"].as_i64().unwrap();
    let trainer = trainer_pid(supervisor).await;
    // An SSE client follows the run across the restart, reconnecting with Last-Event-ID.
    let mut sse = common::SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), None).await;
    let mut seen = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        match sse.next(Duration::from_millis(500)).await {
            Some(ev) => seen.push(ev.id.unwrap()),
            None => break,
        }
    }
    drop(sse);

    server.kill();
    assert!(alive(trainer), "the trainer outlives a killed server");
    // The trainer goes on writing while the server is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = env.server();
    let r = server.run(run).await;
    assert_eq!(r["status"], "running", "re-attached, not crashed: {r}");
    assert!(alive(trainer), "a restarted server leaves the trainer alone");
    let mut sse =
        common::SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), seen.last().copied()).await;
    let r = server.wait_status(run, "finished", LONG).await;
    assert_eq!(r["attempt"], 1, "the same attempt ran to its end");
    while let Some(ev) = sse.next(Duration::from_secs(2)).await {
        seen.push(ev.id.unwrap());
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "every event id exactly once across the restart");
    let all = common::SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), None).await;
    let mut all = all;
    let mut every = Vec::new();
    while let Some(ev) = all.next(Duration::from_secs(2)).await {
        every.push(ev.id.unwrap());
    }
    assert_eq!(seen, every, "the reconnecting client got exactly the stored events");
    assert_stored_equals_log(&server, run).await;
}

#[tokio::test]
async fn run_ends_while_the_server_is_down() {
    let env = TestEnv::new();
    let mut server = env.server();
    let exp = server.create_experiment("down").await;
    let run = server.create_run(exp, &[], train_config(1, 512)).await;
    let r = server.wait_status(run, "running", LONG).await;
    let supervisor = r["pid"].as_i64().unwrap();
    server.kill();
    let deadline = std::time::Instant::now() + LONG;
    while alive(supervisor) {
        assert!(std::time::Instant::now() < deadline, "the run did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server = env.server();
    let r = server.wait_status(run, "finished", Duration::from_secs(60)).await;
    assert_eq!(r["exit_code"], 0);
    assert_stored_equals_log(&server, run).await;

    // --on-exit stop keeps the old stop-everything behaviour (for a laptop).
    drop(server);
    let mut server = env.server_with(&["--on-exit", "stop"]);
    let run = server.create_run(exp, &[], train_config(50, 2000)).await;
    let r =
        server.wait_run(run, LONG, "first metrics", |r| r["metrics"].as_object().is_some_and(|m| !m.is_empty())).await;
    let supervisor = r["pid"].as_i64().unwrap();
    assert!(server.terminate().success(), "a SIGTERM'd server exits 0");
    assert!(!alive(supervisor), "--on-exit stop ended the trainer");
    let server = env.server();
    let r = server.wait_status(run, "stopped", Duration::from_secs(30)).await;
    assert_eq!(r["resumable"], true);
}

#[tokio::test]
async fn a_stopped_certification_resumes_each_image_once() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("certify resume").await;
    let model = server.create_run(exp, &[], train_config(1, 512)).await;
    server.wait_status(model, "finished", LONG).await;
    let config = json!({"kind": "certify", "smoothing": {"n0": 50, "n": 4000, "max": 40, "skip": 10, "batch": 500}});
    let (st, body) =
        server.post("/api/v1/runs", &json!({"experiment_id": exp, "parents": [model], "config": config})).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let cert = body["id"].as_i64().unwrap();
    server.wait_run(cert, LONG, "some certificates", |r| r["progress"]["done"].as_i64().unwrap_or(0) >= 3).await;
    let (st, _) = server.post(&format!("/api/v1/runs/{cert}/stop"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    server.wait_status(cert, "stopped", Duration::from_secs(60)).await;
    let before = server.get(&format!("/api/v1/runs/{cert}/certificates?limit=1000")).await.1;
    let done = before.as_array().unwrap().len();
    assert!(done > 0 && done < 40, "stopped half-way: {done} of 40");
    let (st, resp) = server.post(&format!("/api/v1/runs/{cert}/resume"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{resp}");
    server.wait_status(cert, "finished", LONG).await;
    let log = event_log(std::path::Path::new(server.run(cert).await["out_dir"].as_str().unwrap()));
    let mut idx: Vec<u64> = log
        .iter()
        .filter_map(|l| match &l.event {
            Event::Certified(c) => Some(c.idx),
            _ => None,
        })
        .collect();
    let n = idx.len();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), n, "no image certified twice across the two attempts");
    assert_eq!(n, 40, "every image certified");
    assert_stored_equals_log(&server, cert).await;
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
