//! A run whose loss becomes non-finite: it stops at that step with `failed` and a message naming
//! the step, the value and the remedy; its metrics up to and including the non-finite one are
//! stored and returned; it keeps its last good checkpoint and resumes from it with a lower
//! learning rate (`POST …/resume {"lr": …}`).

mod common;

use std::time::Duration;

use common::TestEnv;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(300);

/// LeNet on 64 MNIST images in batches of 8 (8 steps an epoch) for 2 epochs. The schedule
/// multiplies the learning rate by 1e5 at epoch 2 (0.01 -> 1000): epoch 1 trains and writes a
/// checkpoint at step 8, epoch 2 diverges within a few steps. With `milestones` [0] and a factor
/// of 1e8 it diverges in epoch 1, before any checkpoint.
fn diverging(milestone: u64, gamma: f64) -> Value {
    json!({
        "kind": "train",
        "data": {"dataset": "mnist", "train_subset": 64, "test_subset": 32},
        "arch": "lenet",
        "method": {"name": "gaussian", "sigma": 0.25},
        "optim": {"epochs": 2, "batch_size": 8, "lr": 0.01,
                  "schedule": {"name": "multi_step", "milestones": [milestone], "gamma": gamma}},
        "seed": 1
    })
}

/// The step named in "loss became NaN at step N (…".
fn step_in(error: &str) -> i64 {
    let rest = error.split(" at step ").nth(1).unwrap_or_else(|| panic!("no step in {error}"));
    rest.split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no step number in {error}"))
}

fn is_non_finite(v: &Value) -> bool {
    matches!(v.as_str(), Some("NaN" | "Infinity" | "-Infinity"))
}

#[tokio::test]
async fn a_diverging_run_fails_at_the_step_with_its_metrics_and_resumes_with_a_lower_lr() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("divergence").await;
    let run = server.create_run(exp, &[], diverging(1, 1e5)).await;
    let failed = server.wait_status(run, "failed", WAIT).await;

    let error = failed["error"].as_str().expect("a failed run says why").to_string();
    let step = step_in(&error);
    assert!(step > 8 && step <= 16, "it diverges in epoch 2: {error}");
    assert!(
        error.starts_with("loss became NaN at step") || error.starts_with("loss became Infinity at step"),
        "{error}"
    );
    for part in [
        "(epoch 2 of 2",
        "training diverged",
        "resume with a lower learning rate, e.g. lr 0.001",
        "the last good checkpoint (step 8) is kept",
    ] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    assert_eq!(failed["resumable"], true, "a failed training run with a checkpoint resumes: {failed}");
    assert!(is_non_finite(&failed["metrics"]["train/loss"]["value"]), "{failed}");

    // The metrics up to and including the non-finite one, as the API returns them.
    let (st, history) = server.get(&format!("/api/v1/runs/{run}/metrics?keys=train/loss,test/acc")).await;
    assert_eq!(st, StatusCode::OK, "{history}");
    let loss = history["metrics"]["train/loss"]["points"].as_array().unwrap().clone();
    let last = loss.last().expect("train/loss points");
    assert_eq!(last["step"], step, "the last point is the diverged step: {loss:?}");
    assert!(is_non_finite(&last["value"]), "{last}");
    let before: Vec<&Value> = loss.iter().filter(|p| p["step"].as_i64() < Some(step)).collect();
    assert!(before.iter().any(|p| p["step"] == 8), "epoch 1's loss is stored: {loss:?}");
    assert!(before.iter().all(|p| p["value"].as_f64().is_some_and(f64::is_finite)), "{loss:?}");
    assert_eq!(history["metrics"]["test/acc"]["points"].as_array().unwrap().len(), 1, "only epoch 1 was evaluated");

    // The checkpoint is epoch 1's; no model was written from the diverged weights.
    let (_, artifacts) = server.get(&format!("/api/v1/runs/{run}/artifacts")).await;
    let paths: Vec<&str> = artifacts.as_array().unwrap().iter().filter_map(|a| a["path"].as_str()).collect();
    assert!(paths.iter().any(|p| p.ends_with("checkpoint.safetensors")), "{artifacts}");
    assert!(!paths.iter().any(|p| p.ends_with("model.safetensors")), "{artifacts}");

    // The new learning rate is bounded and checked before anything changes.
    let resume = format!("/api/v1/runs/{run}/resume");
    let (st, err) = server.post(&resume, &json!({"lr": 1000.5})).await;
    assert_eq!((st, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("lr")), "{err}");
    let (st, err) = server.post(&resume, &json!({"lr": 0.001, "momentum": 0.5})).await;
    assert_eq!((st, err["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("momentum")), "{err}");
    let (st, err) = server.post_raw(&resume, "lr=0.001", "application/x-www-form-urlencoded").await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    assert_eq!(server.run(run).await["status"], "failed", "refused resumes change nothing");

    // Resumed from step 8 with a learning rate 1e5 times lower, epoch 2 trains at 0.01.
    let (st, body) = server.post(&resume, &json!({"lr": 1e-7})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["config"]["optim"]["lr"], 1e-7, "{body}");
    assert_eq!(body["config"]["resume"], true, "{body}");
    let finished = server.wait_status(run, "finished", WAIT).await;
    assert_eq!(finished["attempt"], 2, "{finished}");
    assert!(finished["error"].is_null(), "{finished}");
    let (_, history) = server.get(&format!("/api/v1/runs/{run}/metrics?keys=train/loss")).await;
    let loss = history["metrics"]["train/loss"]["points"].as_array().unwrap().clone();
    let last = loss.last().unwrap();
    assert_eq!(last["step"], 16, "{loss:?}");
    assert!(last["value"].as_f64().is_some_and(f64::is_finite), "{loss:?}");
    // The diverged point stays in the history: it happened.
    assert!(loss.iter().any(|p| p["step"] == step && is_non_finite(&p["value"])), "{loss:?}");
}

#[tokio::test]
async fn a_run_that_diverges_before_its_first_checkpoint_cannot_be_resumed() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("divergence").await;
    let run = server.create_run(exp, &[], diverging(0, 1e8)).await;
    let failed = server.wait_status(run, "failed", WAIT).await;
    let error = failed["error"].as_str().unwrap();
    assert!(step_in(error) <= 8, "{error}");
    assert!(error.contains("run it again with a lower learning rate"), "{error}");
    assert!(error.contains("no checkpoint had been written yet"), "{error}");
    assert_eq!(failed["resumable"], false, "{failed}");
    let (_, history) = server.get(&format!("/api/v1/runs/{run}/metrics?keys=train/loss")).await;
    let points = history["metrics"]["train/loss"]["points"].as_array().unwrap();
    assert!(points.last().is_some_and(|p| is_non_finite(&p["value"])), "{history}");

    let (st, err) = server.post(&format!("/api/v1/runs/{run}/resume"), &json!({"lr": 0.001})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{err}");
    assert!(err["error"].as_str().unwrap().contains("no checkpoint"), "{err}");
}
