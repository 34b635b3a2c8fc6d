//! Every size a client chooses has an upper bound (docs/api.md, "Limits"): for each, one request
//! just inside it is accepted and one just outside it is refused with 422 naming the field.
//!
//! Most servers here run `/bin/false` as the trainer, so accepted runs fail at once and no
//! training happens; the query bounds use one tiny real run for its metrics.

mod common;

use std::time::Duration;

use common::{train_config, Server, TestEnv};
use crt_trainer::config::{max_cert_batch, Arch, Dataset, MAX_SAMPLES};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A server whose trainer exits at once: accepted runs are stored, then fail.
fn server_without_training(env: &TestEnv) -> Server {
    env.server_with(&["--trainer-bin", "/bin/false"])
}

/// The request body is refused with 422 naming `field`, and the message states a bound.
fn assert_refused(what: &str, (st, body): (StatusCode, Value), field: &str) {
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
    assert_eq!(body["field"], field, "{what}: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("at most") || error.contains(" to "), "{what}: the message states the bound: {body}");
}

fn assert_accepted(what: &str, (st, body): (StatusCode, Value), expected: StatusCode) {
    assert_eq!(st, expected, "{what}: {body}");
}

/// `config` with `path` (dot-separated) set to `value`.
fn with(mut config: Value, path: &str, value: Value) -> Value {
    let mut slot = &mut config;
    for key in path.split('.') {
        slot = &mut slot[key];
    }
    *slot = value;
    config
}

async fn create_run(server: &Server, experiment: i64, parents: &[i64], config: &Value) -> (StatusCode, Value) {
    server.post("/api/v1/runs", &json!({"experiment_id": experiment, "parents": parents, "config": config})).await
}

/// A run config just inside and just outside one bound: 201, then 422 naming `field`.
async fn check_config_bound(server: &Server, exp: i64, parents: &[i64], inside: Value, outside: Value, field: &str) {
    assert_accepted(field, create_run(server, exp, parents, &inside).await, StatusCode::CREATED);
    assert_refused(field, create_run(server, exp, parents, &outside).await, field);
}

fn chars(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test]
async fn experiment_names_descriptions_and_tags_are_bounded() {
    let env = TestEnv::new();
    let server = server_without_training(&env);
    let post = |body: Value| {
        let server = &server;
        async move { server.post("/api/v1/experiments", &body).await }
    };
    assert_accepted("name", post(json!({"name": chars(200)})).await, StatusCode::CREATED);
    assert_refused("name", post(json!({"name": chars(201)})).await, "name");
    assert_accepted("description", post(json!({"name": "d", "description": chars(10_000)})).await, StatusCode::CREATED);
    assert_refused("description", post(json!({"name": "d", "description": chars(10_001)})).await, "description");
    let tags = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
    assert_accepted("tags", post(json!({"name": "t", "tags": tags(32)})).await, StatusCode::CREATED);
    assert_refused("tags", post(json!({"name": "t", "tags": tags(33)})).await, "tags");
    assert_accepted("tag", post(json!({"name": "t", "tags": [chars(64)]})).await, StatusCode::CREATED);
    assert_refused("tag", post(json!({"name": "t", "tags": [chars(65)]})).await, "tags[0]");

    // An update is held to the same bounds.
    let exp = server.create_experiment("patched").await;
    let patch = |body: Value| {
        let server = &server;
        async move {
            let resp = server.http.patch(server.url(&format!("/api/v1/experiments/{exp}"))).json(&body).send().await;
            let resp = resp.expect("PATCH");
            (resp.status(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_accepted("patch", patch(json!({"description": chars(10_000), "tags": tags(32)})).await, StatusCode::OK);
    assert_refused("patch", patch(json!({"description": chars(10_001)})).await, "description");
    assert_refused("patch", patch(json!({"tags": tags(33)})).await, "tags");
    assert_refused("patch", patch(json!({"name": chars(201)})).await, "name");
    let (_, stored) = server.get(&format!("/api/v1/experiments/{exp}")).await;
    assert_eq!(stored["description"].as_str().map(str::len), Some(10_000), "refused updates change nothing");
}

#[tokio::test]
async fn run_names_parents_and_training_sizes_are_bounded() {
    let env = TestEnv::new();
    let server = server_without_training(&env);
    let exp = server.create_experiment("bounds").await;
    let train = train_config(1, 64);

    let named = |name: String| json!({"experiment_id": exp, "name": name, "config": train});
    assert_accepted("run name", server.post("/api/v1/runs", &named(chars(200))).await, StatusCode::CREATED);
    assert_refused("run name", server.post("/api/v1/runs", &named(chars(201))).await, "name");

    // Parents: more than 8 are refused before any is looked up; 8 pass that bound (and are then
    // judged by the parent rules: these do not exist).
    let parents =
        |n: i64| json!({"experiment_id": exp, "parents": (1000..1000 + n).collect::<Vec<_>>(), "config": train});
    let (st, body) = server.post("/api/v1/runs", &parents(8)).await;
    assert_eq!((st, body["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("parents[0]")), "{body}");
    assert_refused("parents", server.post("/api/v1/runs", &parents(9)).await, "parents");

    let bound = |path: &str, inside: Value, outside: Value| {
        (with(train.clone(), path, inside), with(train.clone(), path, outside), format!("config.{path}"))
    };
    let cases = [
        bound("optim.epochs", json!(1000), json!(1001)),
        bound("optim.batch_size", json!(4096), json!(4097)),
        bound("optim.lr", json!(1000.0), json!(1000.5)),
        bound("data.train_subset", json!(60_000), json!(60_001)),
        bound("data.test_subset", json!(10_000), json!(10_001)),
        bound(
            "optim.schedule",
            json!({"name": "multi_step", "milestones": vec![1; 100], "gamma": 0.1}),
            json!({"name": "multi_step", "milestones": vec![1; 101], "gamma": 0.1}),
        ),
        bound(
            "method",
            json!({"name": "smoothadv", "sigma": 0.25, "m": 64}),
            json!({"name": "smoothadv", "sigma": 0.25, "m": 65}),
        ),
        bound(
            "method",
            json!({"name": "macer", "sigma": 0.25, "k": 64}),
            json!({"name": "macer", "sigma": 0.25, "k": 65}),
        ),
        bound(
            "method",
            json!({"name": "smoothmix", "sigma": 0.25, "steps": 100}),
            json!({"name": "smoothmix", "sigma": 0.25, "steps": 101}),
        ),
    ];
    let fields = [
        "config.optim.epochs",
        "config.optim.batch_size",
        "config.optim.lr",
        "config.data.train_subset",
        "config.data.test_subset",
        "config.optim.schedule.milestones",
        "config.method.m",
        "config.method.k",
        "config.method.steps",
    ];
    for ((inside, outside, _), field) in cases.into_iter().zip(fields) {
        check_config_bound(&server, exp, &[], inside, outside, field).await;
    }
    // CIFAR-10's training split is smaller than MNIST's.
    let cifar = with(train.clone(), "data.dataset", json!("cifar10"));
    check_config_bound(
        &server,
        exp,
        &[],
        with(cifar.clone(), "data.train_subset", json!(50_000)),
        with(cifar, "data.train_subset", json!(50_001)),
        "config.data.train_subset",
    )
    .await;
}

/// A certification of bare weights: the config names the architecture and dataset.
fn certify_weights(arch: &str, dataset: &str, smoothing: Value) -> Value {
    json!({"kind": "certify",
           "model": {"source": "weights", "path": "/nonexistent/w.safetensors", "arch": arch, "dataset": dataset},
           "smoothing": smoothing})
}

#[tokio::test]
async fn certification_sizes_are_bounded_and_the_batch_by_its_memory() {
    let env = TestEnv::new();
    let server = server_without_training(&env);
    let exp = server.create_experiment("certify bounds").await;
    let lenet = |smoothing: Value| certify_weights("lenet", "mnist", with(smoothing, "sigma", json!(0.25)));
    for (name, inside, outside) in [
        ("n", json!(MAX_SAMPLES), json!(MAX_SAMPLES + 1)),
        ("n0", json!(MAX_SAMPLES), json!(MAX_SAMPLES + 1)),
        ("skip", json!(10_000), json!(10_001)),
        ("max", json!(10_000), json!(10_001)),
    ] {
        check_config_bound(
            &server,
            exp,
            &[],
            lenet(json!({ name: inside })),
            lenet(json!({ name: outside })),
            &format!("config.smoothing.{name}"),
        )
        .await;
    }

    // The batch is bounded by the memory it needs: a LeNet on MNIST takes a far larger batch than
    // a ResNet-110 on CIFAR-10.
    let small = max_cert_batch(Arch::Resnet110, Dataset::Cifar10);
    let large = max_cert_batch(Arch::Lenet, Dataset::Mnist);
    assert!(large > 100 * small, "{large} vs {small}");
    for (arch, dataset, max) in [("lenet", "mnist", large), ("resnet110", "cifar10", small)] {
        let cfg = |batch: usize| certify_weights(arch, dataset, json!({"sigma": 0.25, "batch": batch}));
        assert_accepted(arch, create_run(&server, exp, &[], &cfg(max)).await, StatusCode::CREATED);
        let refused = create_run(&server, exp, &[], &cfg(max + 1)).await;
        let error = refused.1["error"].as_str().unwrap_or_default().to_string();
        assert_refused(arch, refused, "config.smoothing.batch");
        assert!(error.contains(&format!("at most {max} for {arch} on {dataset}")), "{error}");
        assert!(error.contains("8 GiB"), "{error}");
    }
    // The batch that made a trainer abort before these bounds.
    let huge = certify_weights("lenet", "mnist", json!({"sigma": 0.25, "batch": 1_000_000_000u64}));
    assert_refused("10^9", create_run(&server, exp, &[], &huge).await, "config.smoothing.batch");

    // Certifying a parent run's model: the bound of the parent's architecture and dataset.
    let lenet_run = server.create_run(exp, &[], train_config(1, 64)).await;
    let resnet = with(with(train_config(1, 64), "arch", json!("resnet110")), "data.dataset", json!("cifar10"));
    let resnet_run = server.create_run(exp, &[], resnet).await;
    let cert = |batch: usize| json!({"kind": "certify", "smoothing": {"n0": 10, "n": 100, "batch": batch}});
    assert_accepted(
        "lenet parent",
        create_run(&server, exp, &[lenet_run], &cert(small + 16)).await,
        StatusCode::CREATED,
    );
    assert_accepted("resnet parent", create_run(&server, exp, &[resnet_run], &cert(small)).await, StatusCode::CREATED);
    assert_refused(
        "resnet parent",
        create_run(&server, exp, &[resnet_run], &cert(small + 16)).await,
        "config.smoothing.batch",
    );
}

#[tokio::test]
async fn study_sizes_are_bounded() {
    let env = TestEnv::new();
    let server = server_without_training(&env);
    let study = |edit: &dyn Fn(&mut Value)| {
        let mut body = json!({
            "name": "bounded study",
            "teacher": {"arch": "lenet", "method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1},
            "students": ["linear"],
            "train_subset": 64, "test_subset": 16,
            "certify": {"n0": 10, "n": 100, "max": 2}
        });
        edit(&mut body);
        body
    };
    let post = |body: Value| {
        let server = &server;
        async move { server.post("/api/v1/studies", &body).await }
    };
    assert_accepted("study", post(study(&|b| b["teacher"]["epochs"] = json!(1000))).await, StatusCode::CREATED);
    assert_refused("study", post(study(&|b| b["teacher"]["epochs"] = json!(1001))).await, "teacher.epochs");
    assert_refused("study", post(study(&|b| b["name"] = json!(chars(201)))).await, "name");
    let baseline = |epochs: usize, batch_size: usize| {
        move |b: &mut Value| {
            b["baselines"] =
                json!([{"method": {"name": "gaussian", "sigma": 0.5}, "epochs": epochs, "batch_size": batch_size}])
        }
    };
    assert_accepted("study", post(study(&baseline(1000, 4096))).await, StatusCode::CREATED);
    assert_refused("study", post(study(&baseline(1001, 64))).await, "baselines[0].epochs");
    assert_refused("study", post(study(&baseline(1, 4097))).await, "baselines[0].batch_size");
    let many = |n: usize| {
        move |b: &mut Value| {
            b["baselines"] = json!((0..n)
                .map(|i| json!({"method": {"name": "gaussian", "sigma": 0.1 + 0.1 * i as f64}}))
                .collect::<Vec<_>>())
        }
    };
    assert_accepted("study", post(study(&many(8))).await, StatusCode::CREATED);
    assert_refused("study", post(study(&many(9))).await, "baselines");
    assert_refused("study", post(study(&|b| b["train_subset"] = json!(60_001))).await, "train_subset");
    let small = max_cert_batch(Arch::Resnet110, Dataset::Mnist);
    assert_accepted(
        "study",
        post(study(&|b| {
            b["students"] = json!(["resnet110"]);
            b["certify"]["batch"] = json!(small);
        }))
        .await,
        StatusCode::CREATED,
    );
    // The batch must fit every model the study certifies: here the ResNet-110 student.
    assert_refused(
        "study",
        post(study(&|b| {
            b["students"] = json!(["linear", "resnet110"]);
            b["certify"]["batch"] = json!(small + 16);
        }))
        .await,
        "certify.batch",
    );
}

#[tokio::test]
async fn query_lists_and_page_sizes_are_bounded() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("queries").await;
    let run = server.create_run(exp, &[], train_config(1, 64)).await;
    server.wait_status(run, "finished", Duration::from_secs(300)).await;

    let get = |path: String| {
        let server = &server;
        async move { server.get(&path).await }
    };
    let list = |key: &str, n: usize| vec![key; n].join(",");
    let cases = [
        ("/api/v1/runs?limit=1000".to_string(), "/api/v1/runs?limit=1001".to_string(), "limit"),
        (
            format!("/api/v1/runs?sort=metric:{}", chars(200)),
            format!("/api/v1/runs?sort=metric:{}", chars(201)),
            "sort",
        ),
        (
            format!("/api/v1/runs/{run}/metrics?keys={}", list("test/acc", 100)),
            format!("/api/v1/runs/{run}/metrics?keys={}", list("test/acc", 101)),
            "keys",
        ),
        (
            format!("/api/v1/runs/{run}/metrics?points=100000"),
            format!("/api/v1/runs/{run}/metrics?points=100001"),
            "points",
        ),
        (format!("/api/v1/runs/{run}/logs?limit=10000"), format!("/api/v1/runs/{run}/logs?limit=10001"), "limit"),
        (
            format!("/api/v1/runs/{run}/certificates?limit=100000"),
            format!("/api/v1/runs/{run}/certificates?limit=100001"),
            "limit",
        ),
        (
            format!("/api/v1/runs/{run}/certificates/summary?radii={}", list("0.5", 100)),
            format!("/api/v1/runs/{run}/certificates/summary?radii={}", list("0.5", 101)),
            "radii",
        ),
        (
            format!("/api/v1/experiments/{exp}/runs?limit=1000"),
            format!("/api/v1/experiments/{exp}/runs?limit=1001"),
            "limit",
        ),
    ];
    for (inside, outside, field) in cases {
        assert_accepted(&inside, get(inside.clone()).await, StatusCode::OK);
        assert_refused(&outside, get(outside.clone()).await, field);
    }
}
