//! Importing a reference certification file (`POST /api/v1/experiments/{id}/imports/certification`)
//! against the real server: an excerpt of a published file (tests/data/reference_tsv) becomes a
//! finished external run whose certificates, summary and artifact match the file, computed here
//! from its rows; bad files are refused with the line and column named, and store nothing.

mod common;

use common::TestEnv;
use reqwest::StatusCode;
use serde_json::Value;

const EXCERPT: &str = include_str!("data/reference_tsv/cohen_mnist_noise_0.25_4067_first100.tsv");
const TSV: &str = "text/tab-separated-values";
const SETTINGS: &str = "sigma=0.25&n=100000&n0=100&alpha=0.001";

/// (idx, label, predict, radius, correct, seconds) of each line after the header, read here
/// without the server's parser.
fn rows(text: &str) -> Vec<(i64, i64, i64, f64, bool, f64)> {
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let t: Vec<f64> = f[5].split(':').map(|x| x.parse().unwrap()).collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4] == "1",
                t[0] * 3600.0 + t[1] * 60.0 + t[2],
            )
        })
        .collect()
}

/// Certified accuracy at `r` and the ACR, from the rows.
fn certified_at(rows: &[(i64, i64, i64, f64, bool, f64)], r: f64) -> f64 {
    rows.iter().filter(|x| x.4 && x.3 >= r).count() as f64 / rows.len() as f64
}

fn acr(rows: &[(i64, i64, i64, f64, bool, f64)]) -> f64 {
    rows.iter().filter(|x| x.4).map(|x| x.3).sum::<f64>() / rows.len() as f64
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test]
async fn a_reference_tsv_becomes_a_finished_external_certification() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("imports").await;
    let path =
        format!("/api/v1/experiments/{exp}/imports/certification?{SETTINGS}&name=cohen%20%CF%83%3D0.25&dataset=mnist");
    let (st, run) = server.post_raw(&path, EXCERPT, TSV).await;
    assert_eq!(st, StatusCode::CREATED, "{run}");
    let id = run["id"].as_i64().unwrap();
    assert_eq!(run["kind"], "external");
    assert_eq!(run["status"], "finished");
    assert_eq!(run["is_certification"], true);
    assert_eq!(run["name"], "cohen σ=0.25");
    assert_eq!(run["sigma"], 0.25);
    assert_eq!(run["dataset"], "mnist");
    assert_eq!(run["config"]["smoothing"]["n"], 100000);
    assert_eq!(run["config"]["smoothing"]["n0"], 100);
    assert_eq!(run["config"]["smoothing"]["alpha"], 0.001);
    assert_eq!(run["params"]["n"], "100000");
    assert_eq!(run["params"]["sigma"], "0.25");

    let expected = rows(EXCERPT);
    assert_eq!(expected.len(), 100);
    // Wall time: the images' times summed.
    let wall: f64 = expected.iter().map(|x| x.5).sum();
    assert!((run["wall_time_s"].as_f64().unwrap() - wall).abs() < 1e-6, "{run}");

    // Every certificate as the file has it.
    let (st, certs) = server.get(&format!("/api/v1/runs/{id}/certificates")).await;
    assert_eq!(st, StatusCode::OK, "{certs}");
    let certs = certs.as_array().unwrap();
    assert_eq!(certs.len(), expected.len());
    for (c, x) in certs.iter().zip(&expected) {
        assert_eq!((c["idx"].as_i64(), c["label"].as_i64(), c["predict"].as_i64()), (Some(x.0), Some(x.1), Some(x.2)));
        assert!(close(&c["radius"], x.3) && c["correct"] == x.4 && close(&c["time"], x.5), "{c} vs {x:?}");
    }

    // The summary (certificate summary and the run's final metrics) equals the rows' own numbers.
    let (st, summary) = server.get(&format!("/api/v1/runs/{id}/certificates/summary?radii=0,0.25,0.5")).await;
    assert_eq!(st, StatusCode::OK, "{summary}");
    assert_eq!(summary["n"], 100);
    for (i, r) in [0.0, 0.25, 0.5].into_iter().enumerate() {
        assert!(close(&summary["radii"][i]["certified_accuracy"], certified_at(&expected, r)), "r={r}: {summary}");
        assert!(close(&run["summary"][format!("certified_acc@{r}")], certified_at(&expected, r)), "r={r}: {run}");
    }
    assert!(close(&summary["acr"], acr(&expected)), "{summary}");
    assert!(close(&run["summary"]["acr"], acr(&expected)), "{run}");
    assert!(close(&run["summary"]["clean_acc"], certified_at(&expected, 0.0)), "{run}");
    // Known values of this excerpt: one wrong image (line 20: image 18), radii below 0.5 on 2 more.
    assert!(close(&summary["radii"][0]["certified_accuracy"], 0.99), "{summary}");
    assert!(close(&summary["radii"][2]["certified_accuracy"], 0.97), "{summary}");

    // The file is kept as the run's artifact, byte for byte.
    let (_, artifacts) = server.get(&format!("/api/v1/runs/{id}/artifacts")).await;
    assert_eq!(artifacts[0]["path"], "certify.tsv", "{artifacts}");
    assert_eq!(artifacts[0]["kind"], "certificates");
    let body = server.http.get(server.url(&format!("/api/v1/runs/{id}/artifacts/certify.tsv"))).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), EXCERPT);

    // An MLflow client cannot log to it: its results are final.
    let (st, err) = server
        .post(
            "/api/2.0/mlflow/runs/log-metric",
            &serde_json::json!({"run_id": id.to_string(), "key": "acr", "value": 9.0, "timestamp": 0, "step": 0}),
        )
        .await;
    assert!(!st.is_success() && err["error_code"] == "INVALID_STATE", "{st} {err}");
    assert!(err["message"].as_str().unwrap().contains("imported certification"), "{err}");
    let (st, err) = server
        .post("/api/2.0/mlflow/runs/update", &serde_json::json!({"run_id": id.to_string(), "status": "RUNNING"}))
        .await;
    assert!(!st.is_success() && err["error_code"] == "INVALID_STATE", "{st} {err}");
    assert_eq!(server.run(id).await["status"], "finished");

    // It is listed with the experiment's runs, and filtering by kind finds it.
    let (_, listed) = server.get(&format!("/api/v1/experiments/{exp}/runs?kind=external")).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// The excerpt with line `line` (1-based; the header is line 1) replaced.
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<&str> = EXCERPT.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn bad_files_and_settings_are_refused_with_the_place_named_and_store_nothing() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("imports").await;
    let path = format!("/api/v1/experiments/{exp}/imports/certification?{SETTINGS}");

    let cases: Vec<(&str, String, usize, Option<&str>)> = vec![
        ("wrong header", with_line(1, "idx label predict radius correct time"), 1, None),
        ("predict.py's header", with_line(1, "idx\tlabel\tpredict\tcorrect\ttime"), 1, None),
        ("non-numeric radius", with_line(5, "3\t0\t0\tabc\t1\t0:00:00.292985"), 5, Some("radius")),
        ("negative radius", with_line(7, "5\t1\t1\t-0.25\t1\t0:00:00.278980"), 7, Some("radius")),
        ("infinite radius", with_line(7, "5\t1\t1\tinf\t1\t0:00:00.278980"), 7, Some("radius")),
        ("abstention with a radius", with_line(7, "5\t1\t-1\t0.5\t0\t0:00:00.278980"), 7, Some("radius")),
        ("bad time", with_line(10, "8\t5\t5\t0.554\t1\t0.273612"), 10, Some("time")),
        ("correct but wrong", with_line(20, "18\t3\t8\t0.113\t1\t0:00:00.298846"), 20, Some("correct")),
        ("wrong but correct", with_line(2, "0\t7\t7\t0.953\t0\t0:00:00.579953"), 2, Some("correct")),
        ("correct not 0/1", with_line(2, "0\t7\t7\t0.953\tyes\t0:00:00.579953"), 2, Some("correct")),
        ("non-integer label", with_line(3, "1\t2.0\t2\t0.953\t1\t0:00:00.322521"), 3, Some("label")),
        ("missing field", with_line(4, "2\t1\t1\t0.953\t1"), 4, None),
        ("image listed twice", with_line(4, "1\t1\t1\t0.953\t1\t0:00:00.299317"), 4, Some("idx")),
        ("no rows", "idx\tlabel\tpredict\tradius\tcorrect\ttime\n".into(), 2, None),
    ];
    for (what, body, line, column) in cases {
        let (st, err) = server.post_raw(&path, &body, TSV).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {err}");
        assert_eq!(err["field"], "tsv", "{what}: {err}");
        assert_eq!(err["line"].as_u64(), Some(line as u64), "{what}: {err}");
        assert_eq!(err["column"].as_str(), column, "{what}: {err}");
        let message = err["error"].as_str().unwrap();
        assert!(message.contains(&format!("line {line}")), "{what}: {message}");
        if let Some(c) = column {
            assert!(message.contains(&format!("column {c}")) && message.contains("expected"), "{what}: {message}");
        }
    }

    // More than 100,000 image lines: 413, naming the first line beyond.
    let mut long = String::from("idx\tlabel\tpredict\tradius\tcorrect\ttime\n");
    for i in 0..100_001 {
        long.push_str(&format!("{i}\t1\t1\t0.5\t1\t0:00:00.1\n"));
    }
    let (st, err) = server.post_raw(&path, &long, TSV).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!((err["field"].as_str(), err["line"].as_u64()), (Some("tsv"), Some(100_002)), "{err}");
    // More than 8 MiB: 413.
    let big = format!("{EXCERPT}{}", "x".repeat(8 << 20));
    let (st, err) = server.post_raw(&path, &big, TSV).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert!(err["error"].as_str().unwrap().contains("at most"), "{err}");

    // Settings: each named.
    let base = format!("/api/v1/experiments/{exp}/imports/certification");
    for (query, field) in [
        ("n=100000&n0=100&alpha=0.001", "sigma"),
        ("sigma=-1&n=100000&n0=100&alpha=0.001", "sigma"),
        ("sigma=0.25&n=abc&n0=100&alpha=0.001", "n"),
        ("sigma=0.25&n=100000&n0=0&alpha=0.001", "n0"),
        ("sigma=0.25&n=100000&n0=100&alpha=1.5", "alpha"),
        ("sigma=0.25&n=100000&n0=100", "alpha"),
        ("sigma=0.25&n=100000&n0=100&alpha=0.001&dataset=imagenet", "dataset"),
    ] {
        let (st, err) = server.post_raw(&format!("{base}?{query}"), EXCERPT, TSV).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {err}");
        assert_eq!(err["field"], field, "{query}: {err}");
    }
    let (st, err) = server.post_raw(&path, EXCERPT, "application/json").await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    let (st, _) = server
        .post_raw(&format!("/api/v1/experiments/{}/imports/certification?{SETTINGS}", exp + 99), EXCERPT, TSV)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Nothing was stored.
    let (_, runs) = server.get(&format!("/api/v1/experiments/{exp}/runs")).await;
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");
    let (_, all) = server.get("/api/v1/runs").await;
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");
}
