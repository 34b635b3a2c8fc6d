//! A CRT study end to end against the real server and trainer on an MNIST subset: one request
//! creates the teacher, the CRT students, their baselines (one trained the teacher's way, or a
//! list of robust methods) and the certifications; the table, curves and CSV fill in from their
//! real results. Bad studies are refused with the field named.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn tiny_study() -> Value {
    json!({
        "name": "tiny study",
        "dataset": "mnist",
        "teacher": {"arch": "lenet", "method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1},
        "students": ["linear"],
        "transfer": {"logit_weight": 1.0},
        "certify": {"n0": 20, "n": 200, "alpha": 0.001, "skip": 100, "max": 5},
        "train_subset": 1000,
        "test_subset": 200,
        "seed": 1
    })
}

#[tokio::test]
async fn bad_studies_are_refused_and_store_nothing() {
    let env = TestEnv::new();
    let server = env.server();
    let mut bad_student = tiny_study();
    bad_student["students"] = json!(["linear", "vgg"]);
    let mut bad_sigma = tiny_study();
    bad_sigma["teacher"]["method"]["sigma"] = json!(0.0);
    let mut no_sigma = tiny_study();
    no_sigma["teacher"]["method"] = json!({"name": "standard"});
    let mut bad_cert = tiny_study();
    bad_cert["certify"]["alpha"] = json!(0.7);
    let gaussian = json!({"method": {"name": "gaussian", "sigma": 0.25}});
    let with_baselines = |list: Value| {
        let mut body = tiny_study();
        body["baselines"] = list;
        body
    };
    let too_many = with_baselines(json!((0..9)
        .map(|i| json!({"method": {"name": "gaussian", "sigma": 0.1 + 0.05 * f64::from(i)}}))
        .collect::<Vec<_>>()));
    let baseline_without_sigma = with_baselines(json!([gaussian, {"method": {"name": "standard"}}]));
    // Equal once the teacher's epochs fill in.
    let duplicate = with_baselines(json!([gaussian, {"method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1}]));
    let bad_macer = with_baselines(json!([gaussian, {"method": {"name": "macer", "sigma": 0.25, "k": 0}}]));
    let long_baseline = with_baselines(json!([{"method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1001}]));
    let unknown_field = with_baselines(json!([{"method": {"name": "gaussian", "sigma": 0.25}, "epoch": 2}]));
    for (body, field) in [
        (bad_student, "students[1]"),
        (bad_sigma, "teacher.method.sigma"),
        (no_sigma, "teacher.method"),
        (bad_cert, "certify.alpha"),
        (too_many, "baselines"),
        (with_baselines(json!([])), "baselines"),
        (baseline_without_sigma, "baselines[1].method"),
        (duplicate, "baselines[1]"),
        (bad_macer, "baselines[1].method.k"),
        (long_baseline, "baselines[0].epochs"),
    ] {
        let (st, err) = server.post("/api/v1/studies", &body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["field"], field, "{err}");
    }
    let (st, err) = server.post("/api/v1/studies", &unknown_field).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "an unknown baseline field is refused: {err}");
    assert!(err["field"].as_str().is_some_and(|f| f.starts_with("baselines[0]")), "{err}");
    assert!(err["error"].to_string().contains("epoch"), "{err}");
    let (_, exps) = server.get("/api/v1/experiments").await;
    assert_eq!(exps.as_array().map(Vec::len), Some(0), "no experiment may be created: {exps}");
    let (_, runs) = server.get("/api/v1/runs").await;
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "no run may be created: {runs}");
    // An experiment that is not a study has no study table.
    let id = server.create_experiment("plain").await;
    let (st, _) = server.get(&format!("/api/v1/studies/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// Every row's accuracies are its certify run's own: the final summary where it lists the radius
/// (0 beyond its max_radius), and the same numbers recomputed from its per-image certificates;
/// each standard error is sqrt(p(1-p)/n) with n the images certified.
async fn check_rows_against_certifications(server: &common::Server, table: &Value) {
    let rows = table["rows"].as_array().unwrap();
    let radii = table["radii"].as_array().unwrap().clone();
    assert_eq!(radii, [0.25, 0.5, 0.75, 1.0].map(|r| json!(r)));
    for row in rows {
        let accs = row["certified_acc"].as_array().unwrap();
        assert_eq!(accs.len(), 4, "{row}");
        for a in accs.iter().chain([&row["clean_acc"], &row["test_acc"]]) {
            let a = a.as_f64().unwrap_or_else(|| panic!("missing accuracy in {row}"));
            assert!((0.0..=1.0).contains(&a), "{row}");
        }
        assert!(row["acr"].as_f64().is_some_and(|acr| acr >= 0.0), "{row}");
        assert!(row["train_wall_time_s"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["train_status"], "finished");
        assert_eq!(row["certify_status"], "finished");

        let cid = row["certify_run"].as_i64().unwrap_or_else(|| panic!("no certify run on {row}"));
        let cert = server.run(cid).await;
        assert!(cert["parents"].as_array().unwrap().contains(&row["train_run"]), "{cert}");
        let own = &cert["summary"];
        let max_radius = own["max_radius"].as_f64().unwrap();
        let (st, from_certs) =
            server.get(&format!("/api/v1/runs/{cid}/certificates/summary?radii=0,0.25,0.5,0.75,1")).await;
        assert_eq!(st, StatusCode::OK, "{from_certs}");
        let images = from_certs["n"].as_u64().unwrap();
        assert_eq!(row["images"].as_u64(), Some(images), "{row} vs {from_certs}");
        let close = |a: &Value, b: f64| a.as_f64().is_some_and(|a| (a - b).abs() < 1e-12);
        for (i, r) in radii.iter().enumerate() {
            let r = r.as_f64().unwrap();
            let shown = &row["certified_acc"][i];
            let summary_value = match own.get(format!("certified_acc@{r}")) {
                Some(v) => v.as_f64().unwrap(),
                None => {
                    assert!(r > max_radius, "run {cid}'s summary lacks r={r} below its max radius: {own}");
                    0.0
                }
            };
            assert!(close(shown, summary_value), "{}: r={r} table {shown}, run {cid}'s summary {own}", row["role"]);
            let recomputed = from_certs["radii"][i + 1]["certified_accuracy"].as_f64().unwrap();
            assert!(close(shown, recomputed), "{}: r={r} table {shown}, certificates {from_certs}", row["role"]);
            let se = (recomputed * (1.0 - recomputed) / images as f64).sqrt();
            assert!(
                close(&row["certified_acc_se"][i], se),
                "{}: r={r} SE {} vs {se}",
                row["role"],
                row["certified_acc_se"]
            );
        }
        assert!(close(&row["clean_acc"], own["clean_acc"].as_f64().unwrap()), "{row} vs {own}");
        assert!(close(&row["clean_acc"], from_certs["accuracy"].as_f64().unwrap()), "{row} vs {from_certs}");
        assert!(close(&row["acr"], own["acr"].as_f64().unwrap()), "{row} vs {own}");
        assert!((row["acr"].as_f64().unwrap() - from_certs["acr"].as_f64().unwrap()).abs() < 1e-9, "{from_certs}");
    }
    let curves = table["curves"].as_array().unwrap();
    assert_eq!(curves.len(), rows.len());
    for c in curves {
        let points = c["points"].as_array().unwrap();
        assert!(!points.is_empty(), "{c}");
        assert_eq!(points[0][0], 0.0, "curves start at radius 0: {c}");
    }
}

/// Waits for every run the study created, then answers its table.
async fn run_to_done(server: &common::Server, created: &Value, t0: Instant) -> Value {
    let id = created["experiment_id"].as_i64().unwrap();
    for run in created["runs"].as_object().unwrap().values() {
        let remaining = Duration::from_secs(900).saturating_sub(t0.elapsed());
        server.wait_status(run.as_i64().unwrap(), "finished", remaining).await;
    }
    eprintln!("study {id} finished in {:.1}s", t0.elapsed().as_secs_f64());
    let (st, table) = server.get(&format!("/api/v1/studies/{id}")).await;
    assert_eq!(st, StatusCode::OK, "{table}");
    assert_eq!(table["done"], true);
    table
}

fn row<'a>(table: &'a Value, role: &str) -> &'a Value {
    let rows = table["rows"].as_array().unwrap();
    rows.iter().find(|r| r["role"] == role).unwrap_or_else(|| panic!("{role} missing: {table:#}"))
}

/// The speedup of CRT against a baseline, from the two runs' own wall times.
async fn speedup_from_runs(server: &common::Server, base: i64, crt: i64) -> f64 {
    let wall = |run: Value| run["wall_time_s"].as_f64().unwrap();
    wall(server.run(base).await) / wall(server.run(crt).await)
}

/// A request without `baselines`, as before they existed: one baseline, the teacher's recipe.
#[tokio::test]
async fn study_runs_and_fills_its_table() {
    let env = TestEnv::new();
    let server = env.server();
    let t0 = Instant::now();
    let (st, created) = server.post("/api/v1/studies", &tiny_study()).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["experiment_id"].as_i64().unwrap();
    let roles: Vec<&str> = created["runs"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        roles,
        [
            "baseline/gaussian/linear",
            "certify/baseline/gaussian/linear",
            "certify/crt/linear",
            "certify/teacher",
            "crt/linear",
            "teacher"
        ]
    );
    let table = run_to_done(&server, &created, t0).await;
    let rows = table["rows"].as_array().unwrap();
    let row_roles: Vec<&str> = rows.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(row_roles, ["teacher", "crt/linear", "baseline/gaussian/linear"], "{table:#}");
    check_rows_against_certifications(&server, &table).await;

    // The baseline is trained exactly as the teacher is.
    let teacher = server.run(created["runs"]["teacher"].as_i64().unwrap()).await;
    let base_run = server.run(created["runs"]["baseline/gaussian/linear"].as_i64().unwrap()).await;
    assert_eq!(base_run["config"]["method"], teacher["config"]["method"]);
    assert_eq!(base_run["config"]["optim"], teacher["config"]["optim"]);

    let crt = row(&table, "crt/linear");
    let base = row(&table, "baseline/gaussian/linear");
    let speedup = base["speedup"].as_f64().expect("speedup on the baseline row");
    let expected =
        speedup_from_runs(&server, base["train_run"].as_i64().unwrap(), crt["train_run"].as_i64().unwrap()).await;
    assert!(speedup > 0.0 && (speedup - expected).abs() < 1e-9, "{crt} vs {base}");
    assert!(crt["speedup"].is_null() && row(&table, "teacher")["speedup"].is_null());
    assert_eq!(
        table["students"],
        json!([{"arch": "linear", "crt": "crt/linear",
                "baselines": [{"label": "gaussian", "role": "baseline/gaussian/linear", "speedup": speedup}]}])
    );

    let resp = server.http.get(server.url(&format!("/api/v1/studies/{id}/table.csv"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("role,arch,method") && lines[0].contains("certified_acc@0.25"), "{csv}");
    assert!(lines[0].contains("certified_acc_se@0.25"), "{csv}");
    let columns = lines[0].split(',').count();
    assert!(lines[1..].iter().all(|l| l.split(',').count() == columns), "{csv}");

    let page = server.http.get(server.url(&format!("/studies/{id}"))).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("study-table") && html.contains("crt/linear"), "the page embeds the table");
    eprintln!("study test took {:.1}s", t0.elapsed().as_secs_f64());
}

/// Two robust baselines per student, each with its own recipe: every student's CRT model beside
/// both, with the speedup against each from the runs' own wall times.
#[tokio::test]
async fn study_with_two_baselines_per_student() {
    let env = TestEnv::new();
    let server = env.server();
    let t0 = Instant::now();
    let mut body = tiny_study();
    body["name"] = json!("two baselines");
    body["students"] = json!(["linear", "mlp"]);
    body["train_subset"] = json!(500);
    body["test_subset"] = json!(100);
    body["certify"] = json!({"n0": 10, "n": 100, "alpha": 0.001, "skip": 100, "max": 3});
    body["baselines"] = json!([
        {"method": {"name": "gaussian", "sigma": 0.25}},
        {"method": {"name": "macer", "sigma": 0.25, "k": 2}, "batch_size": 64},
    ]);
    let (st, created) = server.post("/api/v1/studies", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["experiment_id"].as_i64().unwrap();
    let mut want: Vec<String> = vec!["teacher".into(), "certify/teacher".into()];
    for arch in ["linear", "mlp"] {
        for model in [format!("crt/{arch}"), format!("baseline/gaussian/{arch}"), format!("baseline/macer/{arch}")] {
            want.push(format!("certify/{model}"));
            want.push(model);
        }
    }
    want.sort();
    let roles: Vec<&String> = created["runs"].as_object().unwrap().keys().collect();
    assert_eq!(roles, want.iter().collect::<Vec<_>>());
    // Each baseline trains its own recipe; what it leaves out is the teacher's.
    let macer = server.run(created["runs"]["baseline/macer/mlp"].as_i64().unwrap()).await;
    assert_eq!(macer["config"]["method"]["name"], "macer");
    assert_eq!(macer["config"]["method"]["k"], 2);
    assert_eq!(macer["config"]["arch"], "mlp");
    assert_eq!(
        (macer["config"]["optim"]["epochs"].as_u64(), macer["config"]["optim"]["batch_size"].as_u64()),
        (Some(1), Some(64))
    );
    assert!(macer["parents"].as_array().unwrap().is_empty(), "a baseline trains from scratch: {macer}");

    let table = run_to_done(&server, &created, t0).await;
    let rows = table["rows"].as_array().unwrap();
    let row_roles: Vec<&str> = rows.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(
        row_roles,
        [
            "teacher",
            "crt/linear",
            "baseline/gaussian/linear",
            "baseline/macer/linear",
            "crt/mlp",
            "baseline/gaussian/mlp",
            "baseline/macer/mlp"
        ],
        "{table:#}"
    );
    check_rows_against_certifications(&server, &table).await;

    // Lineage: the teacher begets each CRT student; the baselines stand beside them.
    for r in rows {
        let (parent, generation) = if r["role_kind"] == "crt" { (json!("teacher"), 1) } else { (Value::Null, 0) };
        assert_eq!((&r["parent"], r["generation"].as_u64()), (&parent, Some(generation)), "{r}");
    }
    let groups = table["students"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{table:#}");
    for (group, arch) in groups.iter().zip(["linear", "mlp"]) {
        assert_eq!(group["arch"], arch);
        let crt = row(&table, &format!("crt/{arch}"));
        assert_eq!(group["crt"], format!("crt/{arch}"));
        assert_eq!(crt["student"], arch);
        let versus = group["baselines"].as_array().unwrap();
        assert_eq!(versus.len(), 2, "{group}");
        for (v, label) in versus.iter().zip(["gaussian", "macer"]) {
            let role = format!("baseline/{label}/{arch}");
            assert_eq!((&v["label"], &v["role"]), (&json!(label), &json!(role)));
            let base = row(&table, &role);
            assert_eq!(
                (&base["role_kind"], &base["student"], &base["baseline"]),
                (&json!("baseline"), &json!(arch), &json!(label))
            );
            assert_eq!(base["method"], label);
            let expected =
                speedup_from_runs(&server, base["train_run"].as_i64().unwrap(), crt["train_run"].as_i64().unwrap())
                    .await;
            let shown = v["speedup"].as_f64().unwrap_or_else(|| panic!("no speedup for {role}: {group}"));
            assert!(shown > 0.0 && (shown - expected).abs() < 1e-9, "{role}: {shown} vs {expected}");
            assert_eq!(base["speedup"], v["speedup"]);
        }
    }

    let csv = server.http.get(server.url(&format!("/api/v1/studies/{id}/table.csv"))).send().await.unwrap();
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 8, "{csv}");
    let page = server.http.get(server.url(&format!("/studies/{id}"))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("baseline/macer/mlp"), "the page embeds the table");
    eprintln!("two-baseline study test took {:.1}s", t0.elapsed().as_secs_f64());
}
