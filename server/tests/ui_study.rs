//! The CRT study in a real headless Chromium against the real server and trainer on real MNIST:
//! the study form refuses a bad σ (baseline parameters that are not JSON, an architecture given two
//! optimizers) next to its field and stores nothing, a good one with two baselines and AdamW for
//! the student's architecture starts the study with those settings in its runs, and the study page's
//! lineage, table (accuracies ± standard error, the speedup against each baseline) and
//! certified-accuracy chart show the runs' real results — the chart's curves equal certified
//! accuracy computed here from each run's certificates. Saves docs/study-page.png.

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
    // Two baselines: Gaussian as the row comes, MACER with its own (small) k.
    b.click("#s-add-baseline").await;
    b.click("#s-add-baseline").await;
    b.select("#s-b1-method-name", "macer").await;
    b.fill("#s-b1-method-params", "{\"k\": 2").await;
    b.click("#study-form button[type=submit]").await;
    let message = b
        .wait_js(
            "the parameters' error",
            PAGE_TIMEOUT,
            "const e = document.getElementById('s-b1-method-params').closest('.field').querySelector('.field-error');
             return e ? e.textContent : null;",
        )
        .await;
    assert!(message.as_str().unwrap().contains("JSON"), "{message}");
    b.fill("#s-b1-method-params", "{\"k\": 2}").await;
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

    // An optimizer per architecture: the linear runs (CRT student, baselines) get AdamW. The same
    // architecture twice is refused in the form, next to the first row's architecture.
    b.click("#s-add-optim").await;
    b.click("#s-add-optim").await;
    b.select("#s-o0-arch", "linear").await;
    b.select("#s-o1-arch", "linear").await;
    b.fill("#s-t-sigma", "0.25").await;
    b.click("#study-form button[type=submit]").await;
    let message = b
        .wait_js(
            "the optimizer row's error",
            PAGE_TIMEOUT,
            "const e = document.getElementById('s-o0-arch').closest('.field').querySelector('.field-error');
             return e ? e.textContent : null;",
        )
        .await;
    assert!(message.as_str().unwrap().contains("twice"), "{message}");
    let (_, experiments) = server.get("/api/v1/experiments").await;
    assert_eq!(experiments, json!([]), "a refused study must create nothing");
    b.click("#s-optim-list .optim-row:nth-child(2) [data-remove]").await;
    b.fill("#s-o0-lr", "0.01").await;
    b.fill("#s-o0-weight_decay", "0.05").await;

    // ---- a good one: the study page fills in as its runs end ----
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
    assert_eq!(runs.len(), 8, "teacher, CRT student, two baselines and four certifications: {runs:#?}");
    let macer = runs.iter().find(|r| r["name"] == "baseline/macer/linear").expect("the MACER baseline");
    assert_eq!(macer["config"]["method"]["k"], 2, "{macer}");
    // The linear runs train with the form's AdamW, learning rate and weight decay; the LeNet
    // teacher keeps SGD.
    for name in ["crt/linear", "baseline/macer/linear", "baseline/gaussian/linear"] {
        let run = runs.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("run {name}: {runs:#?}"));
        let optim = &run["config"]["optim"];
        assert_eq!(optim["optimizer"]["name"], "adamw", "{name}: {optim}");
        assert_eq!((optim["lr"].as_f64(), optim["weight_decay"].as_f64()), (Some(0.01), Some(0.05)), "{name}: {optim}");
    }
    let teacher = runs.iter().find(|r| r["name"] == "teacher").expect("the teacher");
    let teacher_optimizer = &teacher["config"]["optim"]["optimizer"];
    assert!(teacher_optimizer.is_null() || teacher_optimizer["name"] == "sgd", "{teacher}");
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
    assert_eq!(rows.len(), 4, "{table:#}");
    for row in rows {
        let role = row["role"].as_str().unwrap();
        let script = format!(
            "const tr = document.querySelector('#study-table tr[data-role=\"{role}\"]');
             return tr ? [...tr.cells].map(c => c.textContent) : null;"
        );
        let cells = b.wait_js("the row", PAGE_TIMEOUT, &script).await;
        let cells: Vec<String> = serde_json::from_value(cells).unwrap();
        let mut expected = vec![pct(row["test_acc"].as_f64().unwrap()), pct(row["clean_acc"].as_f64().unwrap())];
        let se = row["certified_acc_se"].as_array().unwrap();
        expected.extend(
            row["certified_acc"]
                .as_array()
                .unwrap()
                .iter()
                .zip(se)
                .map(|(a, se)| format!("{} ± {}", pct(a.as_f64().unwrap()), pct(se.as_f64().unwrap()))),
        );
        expected.push(format!("{:.3}", row["acr"].as_f64().unwrap()));
        let speedup = row["speedup"].as_f64().map_or("—".to_string(), |s| format!("{s:.2}×"));
        expected.push(speedup);
        assert_eq!([&cells[4..11], &cells[12..]].concat(), expected, "{role}: {row}");
    }
    // The CRT student beside each baseline, with the speedup against each, under the teacher.
    let lineage = b
        .wait_js(
            "the lineage",
            PAGE_TIMEOUT,
            "const li = document.querySelector('#study-lineage li[data-role=\"teacher\"] li[data-role=\"crt/linear\"]');
             return li ? li.textContent : null;",
        )
        .await;
    let lineage = lineage.as_str().unwrap();
    for v in table["students"][0]["baselines"].as_array().unwrap() {
        let s = v["speedup"].as_f64().unwrap();
        let shown = format!("{} (linear, CRT speedup {s:.2}×)", v["label"].as_str().unwrap());
        assert!(lineage.contains(&shown), "{shown} not in {lineage:?}");
    }

    // ---- the chart: one exact curve per model, from its certificates ----
    let drawn = b
        .wait_js(
            "four curves",
            PAGE_TIMEOUT,
            "const c = document.getElementById('study-chart');
             return c.chartData && c.chartData.length === 5 ? c.chartData : null;",
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
    b.screenshot_page(1280, &ui_support::docs_dir().join("study-page.png")).await;
}
