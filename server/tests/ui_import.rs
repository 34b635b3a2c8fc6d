//! Importing a reference certification through the dashboard, in a real headless Chromium against
//! the real server and trainer on real MNIST: a tiny LeNet is trained and certified by CRT Lab
//! (over the API), the excerpt of a published certification file (tests/data/reference_tsv) is
//! uploaded with the experiment page's form (a bad file first: the server's message shows next to
//! the form), and the compare page draws both certified-accuracy curves, each with the values its
//! run's certificates give.

mod common;
mod ui_support;

use std::time::Duration;

use serde_json::{json, Value};

use common::Server;
use ui_support::Browser;

const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const EXCERPT: &str = "tests/data/reference_tsv/cohen_mnist_noise_0.25_4067_first100.tsv";

/// Certified accuracy at each of `xs` from a run's certificates (as the API lists them),
/// computed here: the share of images predicted correctly with a radius of at least x.
async fn curve_from_certificates(server: &Server, run: i64, xs: &[f64]) -> Vec<f64> {
    let (_, certs) = server.get(&format!("/api/v1/runs/{run}/certificates?limit=100000")).await;
    let certs = certs.as_array().unwrap();
    assert!(!certs.is_empty(), "run {run} has no certificates");
    xs.iter()
        .map(|&x| {
            let k = certs.iter().filter(|c| c["correct"] == true && c["radius"].as_f64().unwrap_or(0.0) >= x).count();
            k as f64 / certs.len() as f64
        })
        .collect()
}

async fn choose_file(b: &Browser, path: &std::path::Path) {
    let input = b.client.find(fantoccini::Locator::Css("#import-file")).await.expect("the file input");
    input.send_keys(&path.display().to_string()).await.expect("choosing the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_reference_certification_is_compared_with_ours() {
    ui_support::require_assets();
    let env = common::TestEnv::new();
    let server = env.server();

    // ---- CRT Lab's own certification of a tiny LeNet (σ = 0.25) ----
    let experiment = server.create_experiment("ours and Cohen et al.'s").await;
    let model = server.create_run(experiment, &[], common::train_config(1, 1000)).await;
    server.wait_status(model, "finished", RUN_TIMEOUT).await;
    let cert = server
        .create_run(
            experiment,
            &[model],
            json!({"kind": "certify", "smoothing": {"n0": 20, "n": 200, "alpha": 0.001, "batch": 200, "max": 20}}),
        )
        .await;
    server.wait_status(cert, "finished", RUN_TIMEOUT).await;

    let b = Browser::start(1280, 900).await;
    b.goto(&server.url(&format!("/experiments/{experiment}"))).await;
    b.click("#import-section summary").await;

    // ---- a bad file: the server's message (line and column) appears next to the form ----
    let dir = tempfile::tempdir().unwrap();
    let excerpt = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(EXCERPT);
    let text = std::fs::read_to_string(&excerpt).unwrap();
    let bad: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i == 4 { l.replace("0.953", "-0.953") } else { l.to_string() })
        .collect();
    let bad_path = dir.path().join("bad.tsv");
    std::fs::write(&bad_path, bad.join("\n") + "\n").unwrap();
    choose_file(&b, &bad_path).await;
    b.click("#import-submit").await;
    let message = b
        .wait_js(
            "the server's error next to the form",
            PAGE_TIMEOUT,
            "const e = document.getElementById('import-error'); return e.hidden ? null : e.textContent;",
        )
        .await;
    let message = message.as_str().unwrap();
    assert!(message.contains("line 5, column radius") && message.contains("-0.953"), "{message}");
    let (_, runs) = server.get(&format!("/api/v1/experiments/{experiment}/runs")).await;
    assert_eq!(runs.as_array().unwrap().len(), 2, "a refused file must not create a run: {runs}");

    // ---- the excerpt, with its settings: the new run appears in the table ----
    choose_file(&b, &excerpt).await;
    b.fill("#import-name", "Cohen et al. σ=0.25 (published)").await;
    b.fill("#import-sigma", "0.25").await;
    b.fill("#import-n", "100000").await;
    b.fill("#import-n0", "100").await;
    b.fill("#import-alpha", "0.001").await;
    b.click("#import-submit").await;
    let status = b
        .wait_js(
            "the import to finish",
            PAGE_TIMEOUT,
            "const s = document.getElementById('import-status').textContent; return s.startsWith('Imported') ? s : null;",
        )
        .await;
    let (_, imported) = server.get(&format!("/api/v1/experiments/{experiment}/runs?kind=external")).await;
    let imported: &Value = &imported[0];
    let imported_id = imported["id"].as_i64().unwrap();
    assert!(status.as_str().unwrap().contains(&format!("#{imported_id}")), "{status}");
    assert_eq!(imported["status"], "finished");
    assert_eq!(imported["is_certification"], true);
    let error_hidden = b.js("return document.getElementById('import-error').hidden", vec![]).await;
    assert_eq!(error_hidden, true);
    // Its row, with its certified accuracy at r = 0.25 (the 10th column) from its certificates.
    let r025 = curve_from_certificates(&server, imported_id, &[0.25]).await[0];
    let cell = b
        .wait_js(
            "the imported run's row",
            PAGE_TIMEOUT,
            &format!(
                "const c = document.querySelector(\"#runs-table tr[data-id='{imported_id}'] td:nth-child(10)\");
                 return c && c.textContent !== '—' ? c.textContent : null;"
            ),
        )
        .await;
    assert_eq!(cell, format!("{:.1}%", 100.0 * r025));

    // ---- compare: both curves, each with the values from its run's certificates ----
    b.goto(&server.url(&format!("/compare?runs={cert},{imported_id}"))).await;
    let drawn = b
        .wait_js(
            "both certified-accuracy curves",
            PAGE_TIMEOUT,
            "const c = document.getElementById('radius-chart');
             return c.chartData && c.chartData.length === 3 && c.querySelectorAll('.u-series').length >= 3 ? c.chartData : null;",
        )
        .await;
    let drawn: Vec<Vec<Option<f64>>> = serde_json::from_value(drawn).unwrap();
    let xs: Vec<f64> = drawn[0].iter().map(|x| x.unwrap()).collect();
    assert!(xs.last().unwrap() > &0.95, "the radius axis reaches the imported radii: {:?}", xs.last());
    for (series, run) in [(1, cert), (2, imported_id)] {
        let expected = curve_from_certificates(&server, run, &xs).await;
        let shown: Vec<f64> = drawn[series].iter().map(|y| y.unwrap()).collect();
        for (i, (s, e)) in shown.iter().zip(&expected).enumerate() {
            assert!(
                (s - e).abs() < 1e-9,
                "run {run}: at radius {} the chart shows {s}, its certificates give {e}",
                xs[i]
            );
        }
    }
    let legend = b.text("#radius-chart .u-legend").await;
    assert!(legend.contains(&format!("#{cert}")) && legend.contains("Cohen et al."), "{legend}");
    // The two differ (ours: a one-epoch model with N = 200; theirs: 90 epochs with N = 100,000).
    assert_ne!(drawn[1], drawn[2]);
    // The results table shows the imported run's certified accuracy at r = 0.5 from its certificates.
    let r05 = curve_from_certificates(&server, imported_id, &[0.5]).await[0];
    let cell = b
        .wait_js(
            "the imported run's certified accuracy",
            PAGE_TIMEOUT,
            &format!(
                "const c = document.querySelector('#results-table tr[data-id=\"{imported_id}\"] td:nth-child(8)');
                 return c && c.textContent !== '—' ? c.textContent : null;"
            ),
        )
        .await;
    assert_eq!(cell, format!("{:.1}%", 100.0 * r05));
}
