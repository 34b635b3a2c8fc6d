//! Importing a reference-code PyTorch checkpoint through the API
//! (`POST /api/v1/experiments/{id}/imports/model`): the real server runs the real
//! `crt-trainer import`, the model becomes a finished external run that holds a model, and a
//! certification of it runs on real MNIST like one of a model trained here. A file the trainer
//! refuses, or a bad setting, is a 422 that names it, and nothing is stored. SQLite or Postgres
//! (`CRT_TEST_DB`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{Server, TestEnv};

fn checkpoint(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/pytorch").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn upload(server: &Server, exp: i64, query: &str, body: Vec<u8>, content_type: &str) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(server.url(&format!("/api/v1/experiments/{exp}/imports/model?{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn run_count(server: &Server, exp: i64) -> usize {
    server.get(&format!("/api/v1/experiments/{exp}/runs?limit=1000")).await.1.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_checkpoint_becomes_a_model_that_certifies() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("imported models").await;

    // Refusals first: each names what is wrong, and none stores a run or leaves files.
    let octet = "application/octet-stream";
    let cases = [
        (
            "arch=cifar_resnet20&dataset=cifar10",
            checkpoint("bad_unknown_key.pth.tar"),
            octet,
            StatusCode::UNPROCESSABLE_ENTITY,
            "file",
        ),
        (
            "arch=cifar_resnet20&dataset=cifar10",
            checkpoint("lenet.pth.tar"),
            octet,
            StatusCode::UNPROCESSABLE_ENTITY,
            "file",
        ),
        ("arch=vgg&dataset=mnist", checkpoint("lenet.pth.tar"), octet, StatusCode::UNPROCESSABLE_ENTITY, "arch"),
        ("arch=lenet", checkpoint("lenet.pth.tar"), octet, StatusCode::UNPROCESSABLE_ENTITY, "dataset"),
        (
            "arch=lenet&dataset=mnist&sigma=-1",
            checkpoint("lenet.pth.tar"),
            octet,
            StatusCode::UNPROCESSABLE_ENTITY,
            "sigma",
        ),
        ("arch=lenet&dataset=mnist", b"not a checkpoint".to_vec(), octet, StatusCode::UNPROCESSABLE_ENTITY, "file"),
        ("arch=lenet&dataset=mnist", checkpoint("lenet.pth.tar"), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, ""),
    ];
    for (query, body, content_type, want, field) in cases {
        let (st, err) = upload(&server, exp, query, body, content_type).await;
        assert_eq!(st, want, "{query}: {err}");
        assert!(err["error"].as_str().is_some_and(|m| !m.is_empty()), "{query}: {err}");
        if !field.is_empty() {
            assert_eq!(err["field"], field, "{query}: {err}");
        }
    }
    let (_, err) =
        upload(&server, exp, "arch=cifar_resnet20&dataset=cifar10", checkpoint("bad_unknown_key.pth.tar"), octet).await;
    assert!(err["error"].as_str().unwrap().contains("key"), "the trainer's message names the key: {err}");
    assert_eq!(run_count(&server, exp).await, 0, "a refused import stores nothing");
    let runs_dir = env.data_dir().join("runs");
    let leftovers: Vec<_> =
        std::fs::read_dir(&runs_dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "nothing left in {}: {leftovers:?}", runs_dir.display());

    // The reference LeNet: a finished external run that holds a model.
    let (st, run) = upload(
        &server,
        exp,
        "arch=lenet&dataset=mnist&sigma=0.25&name=cohen-lenet",
        checkpoint("lenet.pth.tar"),
        octet,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{run}");
    assert_eq!((run["kind"].as_str(), run["status"].as_str()), (Some("external"), Some("finished")), "{run}");
    assert_eq!(run["makes_model"], true, "{run}");
    assert_eq!(run["is_certification"], false, "{run}");
    assert_eq!(run["sigma"], 0.25);
    let model = run["id"].as_i64().unwrap();
    let (_, artifacts) = server.get(&format!("/api/v1/runs/{model}/artifacts")).await;
    let paths: Vec<&str> = artifacts.as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    for want in ["model.safetensors", "model.json", "checkpoint.pth.tar"] {
        assert!(paths.contains(&want), "{want} in {paths:?}");
    }

    // A timm-named ViT (the third architecture generation) imports the same way.
    let vit =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/vit/vit_mnist.pth.tar"))
            .unwrap();
    let (st, vit_run) = upload(&server, exp, "arch=vit&dataset=mnist&sigma=0.25&name=vit", vit, octet).await;
    assert_eq!(st, StatusCode::CREATED, "{vit_run}");
    assert_eq!(vit_run["makes_model"], true, "{vit_run}");
    assert_eq!(vit_run["config"]["model"]["arch"], "vit", "{vit_run}");

    // Certified like a model trained here: the imported run is the certification's parent.
    let cert = server
        .create_run(
            exp,
            &[model],
            json!({"kind": "certify", "smoothing": {"n0": 20, "n": 200, "batch": 200, "max": 10}}),
        )
        .await;
    let done = server.wait_status(cert, "finished", Duration::from_secs(120)).await;
    assert_eq!(done["config"]["model"]["path"], run["out_dir"], "{done}");
    let (_, summary) = server.get(&format!("/api/v1/runs/{cert}/certificates/summary")).await;
    assert_eq!(summary["n"], 10, "every image certified: {summary}");
}
