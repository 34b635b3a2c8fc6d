//! The CRT study in a real headless Chromium against the real server and trainer on real MNIST:
//! the study form refuses a bad σ next to its field and stores nothing, a good one starts the
//! study, and the study page's table and certified-accuracy chart show the runs' real results —
//! the chart's curves equal certified accuracy computed here from each run's certificates.

mod common;
mod ui_support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ui_support::Browser;

const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Certified accuracy at `r` from a run's certificates: correct, with radius ≥ r, over all.
fn certified_at(certs: &[Value], r: f64) -> f64 {
    let hits =
        certs.iter().filter(|c| c["correct"] == true && c["radius"].as_f64().is_some_and(|radius| radius >= r)).count();
    hits as f64 / certs.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_form_and_page() {
    ui_support::require_assets();
    let env = common::TestEnv::new();
    let server = env.server();
    let b = Browser::start(1280, 900).await;

    // ---- the form: a bad σ is refused next to its field, nothing is created ----
    b.goto(&server.url("/studies/new")).await;
    b.fill("#s-name", "UI study").await;
    b.fill("#s-t-sigma", "0").await;
    b.fill("#s-students", "linear").await;
    b.fill("#s-n0", "20").await;
    b.fill("#s-n", "200").await;
    b.fill("#s-skip", "20").await;
    b.fill("#s-max", "8").await;
    b.fill("#s-train-subset", "1000").await;
    b.fill("#s-test-subset", "200").await;
    b.click("#study-form button[type=submit]").await;
    let message = b
        .wait_js(
            "the σ field's error",
            PAGE_TIMEOUT,
            "const e = document.getElementById('s-t-sigma').closest('.field').querySelector('.field-error');
             return e ? e.textContent : null;",
        )
        .await;
    assert!(message.as_str().unwrap().contains('0'), "{message}");
    let (_, experiments) = server.get("/api/v1/experiments").await;
    assert_eq!(experiments, json!([]), "a refused study must create nothing");

    // ---- a good one: the study page fills in as its runs end ----
    b.fill("#s-t-sigma", "0.25").await;
    b.click("#study-form button[type=submit]").await;
    let id = b
        .wait_js(
            "the study page",
            PAGE_TIMEOUT,
            "const m = window.location.pathname.match(/^\\/studies\\/(\\d+)$/); return m ? +m[1] : null;",
        )
        .await;
    let id = id.as_i64().unwrap();
    let t0 = Instant::now();
    let (_, runs) = server.get(&format!("/api/v1/experiments/{id}/runs")).await;
    let runs = runs.as_array().unwrap().clone();
    assert_eq!(runs.len(), 6, "teacher, CRT student, baseline and three certifications: {runs:#?}");
    for run in &runs {
        let remaining = RUN_TIMEOUT.saturating_sub(t0.elapsed());
        server.wait_status(run["id"].as_i64().unwrap(), "finished", remaining).await;
    }
    b.wait_js(
        "the page to see every run end",
        PAGE_TIMEOUT,
        "return document.getElementById('study-state').textContent === 'all runs ended' || null;",
    )
    .await;

    // ---- the table holds the server's numbers ----
    let (_, table) = server.get(&format!("/api/v1/studies/{id}")).await;
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{table:#}");
    for row in rows {
        let role = row["role"].as_str().unwrap();
        let script = format!(
            "const tr = document.querySelector('#study-table tr[data-role=\"{role}\"]');
             return tr ? [...tr.cells].map(c => c.textContent) : null;"
        );
        let cells = b.wait_js("the row", PAGE_TIMEOUT, &script).await;
        let cells: Vec<String> = serde_json::from_value(cells).unwrap();
        let mut expected = vec![pct(row["test_acc"].as_f64().unwrap()), pct(row["clean_acc"].as_f64().unwrap())];
        expected.extend(row["certified_acc"].as_array().unwrap().iter().map(|a| pct(a.as_f64().unwrap())));
        expected.push(format!("{:.3}", row["acr"].as_f64().unwrap()));
        assert_eq!(cells[4..11].to_vec(), expected, "{role}: {row}");
    }

    // ---- the chart: one exact curve per model, from its certificates ----
    let drawn = b
        .wait_js(
            "three curves",
            PAGE_TIMEOUT,
            "const c = document.getElementById('study-chart');
             return c.chartData && c.chartData.length === 4 ? c.chartData : null;",
        )
        .await;
    let drawn: Vec<Vec<Option<f64>>> = serde_json::from_value(drawn).unwrap();
    let xs: Vec<f64> = drawn[0].iter().map(|x| x.unwrap()).collect();
    let mut top = 0.0_f64;
    for (row, curve) in rows.iter().zip(&drawn[1..]) {
        let cert = row["certify_run"].as_i64().unwrap();
        let (_, certs) = server.get(&format!("/api/v1/runs/{cert}/certificates?limit=100000")).await;
        let certs = certs.as_array().unwrap();
        assert_eq!(certs.len(), 8, "{certs:?}");
        for (x, y) in xs.iter().zip(curve) {
            let want = certified_at(certs, *x);
            assert!(
                (y.unwrap() - want).abs() < 1e-12,
                "{}: at radius {x} the chart shows {y:?}, certificates give {want}",
                row["role"]
            );
        }
        top = certs.iter().filter_map(|c| c["radius"].as_f64()).fold(top, f64::max);
    }
    // Past the largest certified radius every curve is at 0: no curve stops in mid-air.
    assert!(
        *xs.last().unwrap() > top,
        "the radius axis ends at {} before the largest radius {top}",
        xs.last().unwrap()
    );
    assert!(drawn[1..].iter().all(|c| c.last() == Some(&Some(0.0))), "{drawn:?}");
}
