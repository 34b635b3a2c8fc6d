//! A CRT study end to end against the real server and trainer on an MNIST subset: one request
//! creates the teacher, the CRT student, the baseline and their certifications; the table,
//! curves and CSV fill in from their real results. Bad studies are refused with the field named.

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
    for (body, field) in [
        (bad_student, "students[1]"),
        (bad_sigma, "teacher.method.sigma"),
        (no_sigma, "teacher.method"),
        (bad_cert, "certify.alpha"),
    ] {
        let (st, err) = server.post("/api/v1/studies", &body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["field"], field, "{err}");
    }
    let (_, exps) = server.get("/api/v1/experiments").await;
    assert_eq!(exps.as_array().map(Vec::len), Some(0), "no experiment may be created: {exps}");
    // An experiment that is not a study has no study table.
    let id = server.create_experiment("plain").await;
    let (st, _) = server.get(&format!("/api/v1/studies/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

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
            "baseline/linear",
            "certify/baseline/linear",
            "certify/crt/linear",
            "certify/teacher",
            "crt/linear",
            "teacher"
        ]
    );
    let run_ids: Vec<i64> = created["runs"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).collect();
    for run in &run_ids {
        server.wait_status(*run, "finished", Duration::from_secs(600).saturating_sub(t0.elapsed())).await;
    }
    eprintln!("study finished in {:.1}s", t0.elapsed().as_secs_f64());

    let (st, table) = server.get(&format!("/api/v1/studies/{id}")).await;
    assert_eq!(st, StatusCode::OK, "{table}");
    assert_eq!(table["done"], true);
    let rows = table["rows"].as_array().unwrap();
    let row_roles: Vec<&str> = rows.iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(row_roles.len(), 3, "{table:#}");
    for role in ["teacher", "crt/linear", "baseline/linear"] {
        assert!(row_roles.contains(&role), "{role} missing: {table:#}");
    }
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
    }
    // The table's certified accuracies are the certify runs' own: their final summary where it
    // lists the radius (0 beyond its max_radius), and the same numbers recomputed from their
    // per-image certificates.
    let radii = table["radii"].as_array().unwrap().clone();
    assert_eq!(radii, [0.25, 0.5, 0.75, 1.0].map(|r| json!(r)));
    for row in rows {
        let cid = row["certify_run"].as_i64().unwrap_or_else(|| panic!("no certify run on {row}"));
        let cert = server.run(cid).await;
        assert!(cert["parents"].as_array().unwrap().contains(&row["train_run"]), "{cert}");
        let own = &cert["summary"];
        let max_radius = own["max_radius"].as_f64().unwrap();
        let (st, from_certs) =
            server.get(&format!("/api/v1/runs/{cid}/certificates/summary?radii=0,0.25,0.5,0.75,1")).await;
        assert_eq!(st, StatusCode::OK, "{from_certs}");
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
        }
        assert!(close(&row["clean_acc"], own["clean_acc"].as_f64().unwrap()), "{row} vs {own}");
        assert!(close(&row["clean_acc"], from_certs["accuracy"].as_f64().unwrap()), "{row} vs {from_certs}");
        assert!(close(&row["acr"], own["acr"].as_f64().unwrap()), "{row} vs {own}");
        assert!((row["acr"].as_f64().unwrap() - from_certs["acr"].as_f64().unwrap()).abs() < 1e-9, "{from_certs}");
    }
    let crt = rows.iter().find(|r| r["role"] == "crt/linear").unwrap();
    let base = rows.iter().find(|r| r["role"] == "baseline/linear").unwrap();
    let speedup = crt["speedup"].as_f64().expect("speedup on the CRT row");
    let expected = base["train_wall_time_s"].as_f64().unwrap() / crt["train_wall_time_s"].as_f64().unwrap();
    assert!(speedup > 0.0 && (speedup - expected).abs() < 1e-9, "{crt} vs {base}");
    assert!(base["speedup"].is_null());
    let curves = table["curves"].as_array().unwrap();
    assert_eq!(curves.len(), 3);
    for c in curves {
        let points = c["points"].as_array().unwrap();
        assert!(!points.is_empty(), "{c}");
        assert_eq!(points[0][0], 0.0, "curves start at radius 0: {c}");
    }

    let resp = server.http.get(server.url(&format!("/api/v1/studies/{id}/table.csv"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("role,arch,method") && lines[0].contains("certified_acc@0.25"), "{csv}");
    let columns = lines[0].split(',').count();
    assert!(lines[1..].iter().all(|l| l.split(',').count() == columns), "{csv}");

    let page = server.http.get(server.url(&format!("/studies/{id}"))).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("study-table") && html.contains("crt/linear"), "the page embeds the table");
    eprintln!("study test took {:.1}s", t0.elapsed().as_secs_f64());
}
