//! A run logged by the real MLflow client, seen in a real headless Chromium: its run page shows
//! the params and tags the client logged, its artifacts, and a loss chart whose drawn values are
//! the client's values (the last one logged at a step where several were).

mod common;
mod ui_support;

use std::time::Duration;

use serde_json::json;
use ui_support::Browser;

const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mlflow_run_on_its_run_page() {
    ui_support::require_assets();
    let env = common::TestEnv::new();
    let token = env.token("write");
    let mut server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    server.use_token(&token);
    let summary = common::run_mlflow_client_script(&server, &token);
    assert_eq!(summary["failures"], json!([]), "{summary}");
    let main = summary["main"].as_str().unwrap();

    let b = Browser::start(1280, 900).await;
    b.goto(&server.url("/login")).await;
    b.fill("#token", &token).await;
    b.click(".login-form button[type=submit]").await;
    b.wait_js("the dashboard", PAGE_TIMEOUT, "return document.getElementById('new-experiment') ? true : null").await;
    b.goto(&server.url(&format!("/runs/{main}"))).await;

    let params = b.text("#params").await;
    for want in ["lr", "0.01", "arch", "lenet", "sigma", "0.25"] {
        assert!(params.contains(want), "{want} in the params table: {params}");
    }
    let tags = b.text("#tags").await;
    for want in ["family", "team", "robust"] {
        assert!(tags.contains(want), "{want} in the tags table: {tags}");
    }
    let artifacts = b
        .wait_js(
            "the artifact list",
            PAGE_TIMEOUT,
            "const t = document.getElementById('artifacts').textContent; return t.includes('notes.txt') ? t : null",
        )
        .await;
    assert!(artifacts.as_str().unwrap().contains("plots/sub/b.json"), "{artifacts}");

    // The loss chart draws the API's history: one value per step, the last logged at a step.
    let (_, history) = server.get(&format!("/api/v1/runs/{main}/metrics?keys=train/loss")).await;
    let mut want: Vec<(i64, f64)> = Vec::new();
    for p in history["metrics"]["train/loss"]["points"].as_array().unwrap() {
        let (step, value) = (p["step"].as_i64().unwrap(), p["value"].as_f64().unwrap());
        match want.last_mut() {
            Some(last) if last.0 == step => last.1 = value,
            _ => want.push((step, value)),
        }
    }
    assert_eq!(want.len(), 6, "{history}");
    let drawn = b
        .wait_js(
            "the loss chart",
            PAGE_TIMEOUT,
            "const c = document.querySelector('[data-group=loss] .chart');
             if (!c || !c.chartData) return null;
             const [xs, ...ys] = c.chartData;
             const i = [...c.closest('.chart-box').querySelectorAll('.u-legend .u-series')]
               .findIndex((s) => s.textContent.includes('train/loss'));
             return { xs, ys: ys[Math.max(0, i - 1)] };",
        )
        .await;
    let xs: Vec<i64> = drawn["xs"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let ys: Vec<f64> = drawn["ys"].as_array().unwrap().iter().map(|y| y.as_f64().unwrap()).collect();
    assert_eq!(xs, want.iter().map(|p| p.0).collect::<Vec<_>>(), "steps drawn");
    assert_eq!(ys, want.iter().map(|p| p.1).collect::<Vec<_>>(), "values drawn");
}
