//! The dashboard end to end, in a real headless Chromium against the real server and trainer on
//! real MNIST: create an experiment, launch training through the form (a bad σ first), watch the
//! run's charts and status update live, certify it from its run page, compare two models.
//! Saves docs/run-page.png and docs/compare-page.png.

mod common;
mod ui_support;

use std::time::Duration;

use serde_json::{json, Value};

use common::Server;
use ui_support::Browser;

/// A one-epoch LeNet on 2,000 MNIST images, then CERTIFY on a few test images, each well
/// within this on a small CPU machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const CERT_IMAGES: usize = 30;

/// Reads the id at the end of a page path like `/runs/12`.
fn id_from(path: &str) -> i64 {
    path.rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no id in {path}"))
}

/// The page shows a fraction as the API's value in percent with one decimal.
fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

async fn fill_training_form(b: &Browser, name: &str, sigma: &str) {
    b.fill("#train-name", name).await;
    b.select("#train-config-arch", "lenet").await;
    b.select("#train-config-method-name", "gaussian").await;
    b.fill("#train-config-method-sigma", sigma).await;
    b.select("#train-config-data-dataset", "mnist").await;
    b.fill("#train-config-data-train-subset", "2000").await;
    b.fill("#train-config-data-test-subset", "500").await;
    b.fill("#train-config-optim-epochs", "1").await;
    b.fill("#train-config-optim-batch-size", "16").await;
}

/// Picks `optimizer` in the training form; whether the momentum input is then disabled (not sent).
async fn momentum_disabled_with(b: &Browser, optimizer: &str) -> Value {
    let script = format!(
        "const s = document.getElementById('train-config-optim-optimizer-name');
         s.value = '{optimizer}'; s.dispatchEvent(new Event('change'));
         return document.getElementById('train-config-optim-momentum').disabled;"
    );
    b.js(&script, vec![]).await
}

/// Launches a training run through the form on the launch page; returns its id.
async fn launch_training(b: &Browser, server: &Server, experiment: i64, name: &str, sigma: &str) -> i64 {
    b.goto(&server.url(&format!("/experiments/{experiment}/launch"))).await;
    fill_training_form(b, name, sigma).await;
    b.click("#train-form button[type=submit]").await;
    id_from(&b.wait_path("the new run's page", "/runs/").await)
}

/// Waits until the run page shows a final status, and returns it.
async fn wait_final_status(b: &Browser) -> String {
    let script = "const s = document.getElementById('run-status').textContent.trim();
                  return ['finished', 'failed', 'crashed', 'stopped'].includes(s) ? s : null;";
    b.wait_js("the run to end", RUN_TIMEOUT, script).await.as_str().unwrap_or_default().to_string()
}

/// Records every status the page shows, and marks the document so a reload would be noticed.
async fn watch_status(b: &Browser) {
    b.js(
        "window.__seen = [document.getElementById('run-status').textContent.trim()];
         window.__sameDocument = true;
         new MutationObserver(() => window.__seen.push(document.getElementById('run-status').textContent.trim()))
           .observe(document.getElementById('run-status'), { childList: true, characterData: true, subtree: true });",
        vec![],
    )
    .await;
}

/// Starts a certification from the run page's "Certify this model" dialog; returns its id.
async fn certify_from_run_page(b: &Browser) -> i64 {
    b.click("#certify-run").await;
    b.fill("#certify-config-smoothing-n0", "20").await;
    b.fill("#certify-config-smoothing-n", "200").await;
    b.fill("#certify-config-smoothing-batch", "200").await;
    b.fill("#certify-config-smoothing-max", &CERT_IMAGES.to_string()).await;
    let before = b.js("return location.pathname", vec![]).await;
    b.click("#certify-form button[type=submit]").await;
    let script = format!(
        "return location.pathname !== {before} && location.pathname.startsWith('/runs/') ? location.pathname : null"
    );
    id_from(b.wait_js("the certification's page", PAGE_TIMEOUT, &script).await.as_str().unwrap())
}

async fn summary(server: &Server, run: i64) -> Value {
    let (status, body) = server.get(&format!("/api/v1/runs/{run}/certificates/summary?radii=0,0.25,0.5,0.75,1")).await;
    assert!(status.is_success(), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_end_to_end() {
    ui_support::require_assets();
    let env = common::TestEnv::new();
    let server = env.server();
    let b = Browser::start(1280, 900).await;

    // ---- experiments page: create one ----
    b.goto(&server.url("/")).await;
    b.fill("#new-experiment-name", "LeNet on MNIST").await;
    b.fill("#new-experiment-description", "Teachers trained with Gaussian noise, certified with CERTIFY").await;
    b.fill("#new-experiment-tags", "mnist, lenet").await;
    b.click("#new-experiment button[type=submit]").await;
    let experiment = id_from(&b.wait_path("the new experiment's page", "/experiments/").await);
    let (_, exp) = server.get(&format!("/api/v1/experiments/{experiment}")).await;
    assert_eq!(exp["tags"], json!(["mnist", "lenet"]), "{exp}");

    // ---- rename and re-tag it, delete a scratch experiment after confirming ----
    b.goto(&server.url("/")).await;
    b.click(&format!("tr[data-id='{experiment}'] button[aria-label^='Edit']")).await;
    b.fill("#edit-name", "").await;
    b.click("#edit-experiment button[type=submit]").await;
    let refused = b
        .wait_js(
            "the empty name refused",
            PAGE_TIMEOUT,
            "const e = document.querySelector('#edit-experiment .field-error'); return e ? e.textContent : null;",
        )
        .await;
    assert!(refused.as_str().unwrap().contains("1 to 200 characters"), "{refused}");
    b.fill("#edit-name", "LeNet on MNIST: Gaussian σ sweep").await;
    b.fill("#edit-tags", "mnist, lenet, gaussian").await;
    b.click("#edit-experiment button[type=submit]").await;
    b.wait_js(
        "the renamed row",
        PAGE_TIMEOUT,
        &format!("const r = document.querySelector(\"tr[data-id='{experiment}']\"); return r && r.innerText.includes('gaussian') && !document.getElementById('edit-dialog').open || null;"),
    )
    .await;
    let (_, exp) = server.get(&format!("/api/v1/experiments/{experiment}")).await;
    assert_eq!(
        (exp["name"].as_str(), &exp["tags"]),
        (Some("LeNet on MNIST: Gaussian σ sweep"), &json!(["mnist", "lenet", "gaussian"]))
    );
    let scratch = server.create_experiment("scratch").await;
    b.goto(&server.url("/")).await;
    b.click(&format!("tr[data-id='{scratch}'] button[aria-label^='Delete']")).await;
    let question = b.text("#delete-dialog-text").await;
    assert!(question.contains("scratch") && question.contains("cannot be undone"), "{question}");
    b.click("#delete-experiment button[type=submit]").await;
    b.wait_js(
        "the deleted row to go",
        PAGE_TIMEOUT,
        &format!("return document.querySelector(\"tr[data-id='{scratch}']\") ? null : true;"),
    )
    .await;
    assert_eq!(server.get(&format!("/api/v1/experiments/{scratch}")).await.0, 404);

    // ---- a bad value: the server's message appears next to the field ----
    eprintln!("ui test: a bad σ");
    b.goto(&server.url(&format!("/experiments/{experiment}"))).await;
    b.click("#launch-link").await;
    b.wait_path("the launch page", &format!("/experiments/{experiment}/launch")).await;
    fill_training_form(&b, "bad sigma", "-1").await;
    b.click("#train-form button[type=submit]").await;
    let message = b
        .wait_js(
            "the σ field's error",
            PAGE_TIMEOUT,
            "const f = document.getElementById('train-config-method-sigma').closest('.field');
             const e = f.querySelector('.field-error'); return e ? e.textContent : null;",
        )
        .await;
    let message = message.as_str().unwrap();
    assert!(message.contains("must be a finite number > 0") && message.contains("-1"), "{message}");
    let invalid =
        b.js("return document.getElementById('train-config-method-sigma').getAttribute('aria-invalid')", vec![]).await;
    assert_eq!(invalid, "true");
    let (_, runs) = server.get(&format!("/api/v1/experiments/{experiment}/runs")).await;
    assert_eq!(runs, json!([]), "a refused launch must not create a run");

    // ---- the optimizer choice: AdamW hides SGD's momentum (and does not send it) ----
    assert_eq!(momentum_disabled_with(&b, "adamw").await, json!(true), "momentum is SGD's only");
    assert_eq!(momentum_disabled_with(&b, "sgd").await, json!(false));

    // ---- a good launch: charts and status update live on the run page ----
    eprintln!("ui test: training through the form");
    b.fill("#train-config-method-sigma", "0.25").await;
    b.fill("#train-name", "LeNet σ = 0.25").await;
    b.click("#train-form button[type=submit]").await;
    let teacher = id_from(&b.wait_path("the run page", "/runs/").await);
    watch_status(&b).await;
    let status = wait_final_status(&b).await;
    let run = server.run(teacher).await;
    assert_eq!(status, "finished", "run page says {status}; run: {run:#}");
    let seen = b.js("return window.__sameDocument === true ? window.__seen : null", vec![]).await;
    let seen: Vec<String> = serde_json::from_value(seen).expect("the run page was reloaded");
    assert!(seen.len() >= 2 && seen.last().map(String::as_str) == Some("finished"), "statuses seen: {seen:?}");
    let live = b
        .wait_js(
            "metric events over SSE",
            PAGE_TIMEOUT,
            "const c = document.getElementById('charts'); return +(c.dataset.liveEvents || 0) > 0 ? +c.dataset.liveEvents : null;",
        )
        .await;
    assert!(live.as_u64().unwrap() >= 1);
    // The loss chart shows one point per step at which the trainer reported a loss.
    let (_, history) = server.get(&format!("/api/v1/runs/{teacher}/metrics")).await;
    let mut loss_steps: Vec<i64> = history["metrics"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("loss"))
        .flat_map(|(_, s)| s["points"].as_array().unwrap().iter().map(|p| p["step"].as_i64().unwrap()))
        .collect();
    loss_steps.sort_unstable();
    loss_steps.dedup();
    assert!(loss_steps.len() >= 2, "{history}");
    let drawn = b
        .wait_js(
            "the loss chart to show every loss step",
            PAGE_TIMEOUT,
            &format!(
                "const c = document.querySelector('[data-group=loss] .chart');
                 return c && +c.dataset.points === {} ? +c.dataset.points : null;",
                loss_steps.len()
            ),
        )
        .await;
    assert_eq!(drawn.as_u64(), Some(loss_steps.len() as u64));
    let progress = b.text("#progress-text").await;
    assert!(progress.contains("(100%)"), "{progress}");
    let artifacts = b.text("#artifacts").await;
    assert!(artifacts.contains("model.safetensors"), "{artifacts}");
    b.screenshot_page(1280, &ui_support::docs_dir().join("run-page.png")).await;
    b.client.set_window_size(1280, 900).await.unwrap();

    // ---- certify this model from its run page ----
    eprintln!("ui test: certification from the run page");
    let cert = certify_from_run_page(&b).await;
    assert_eq!(wait_final_status(&b).await, "finished", "certification: {:#}", server.run(cert).await);
    let rows = b
        .wait_js(
            "every certified image in the table",
            PAGE_TIMEOUT,
            &format!("const n = document.querySelectorAll('#cert-table tbody tr').length; return n === {CERT_IMAGES} ? n : null;"),
        )
        .await;
    assert_eq!(rows.as_u64(), Some(CERT_IMAGES as u64));
    let s = summary(&server, cert).await;
    assert_eq!(s["n"], CERT_IMAGES);
    let tiles = b
        .wait_js(
            "the summary tiles",
            PAGE_TIMEOUT,
            &format!(
                "const t = document.getElementById('cert-stats').innerText; return t.includes({:?}) ? t : null;",
                pct(s["accuracy"].as_f64().unwrap())
            ),
        )
        .await;
    assert!(tiles.as_str().unwrap().contains(&CERT_IMAGES.to_string()), "{tiles}");

    // ---- a second model, certified the same way ----
    eprintln!("ui test: a second model");
    let second = launch_training(&b, &server, experiment, "LeNet σ = 0.5", "0.5").await;
    assert_eq!(wait_final_status(&b).await, "finished", "{:#}", server.run(second).await);
    let second_cert = certify_from_run_page(&b).await;
    assert_eq!(wait_final_status(&b).await, "finished", "{:#}", server.run(second_cert).await);

    // ---- the experiment page lists all four, with the models' certified accuracy ----
    eprintln!("ui test: the experiment page");
    b.goto(&server.url(&format!("/experiments/{experiment}"))).await;
    let listed = b
        .wait_js(
            "four runs",
            PAGE_TIMEOUT,
            "const n = document.querySelectorAll('#runs-table tbody tr').length; return n === 4 ? n : null;",
        )
        .await;
    assert_eq!(listed, 4);
    let r025 = summary(&server, cert).await["radii"][1]["certified_accuracy"].as_f64().unwrap();
    let cell = b.text(&format!("#runs-table tr[data-id='{teacher}'] td:nth-child(10)")).await;
    assert_eq!(cell, pct(r025), "the teacher's row shows its certification's accuracy at r = 0.25");
    b.click(&format!("input[data-select='{teacher}']")).await;
    b.click(&format!("input[data-select='{second}']")).await;
    b.screenshot_page(1280, &ui_support::docs_dir().join("experiment-page.png")).await;
    b.client.set_window_size(1280, 900).await.unwrap();
    b.click("#compare-selected").await;
    b.wait_path("the compare page", "/compare").await;

    // ---- compare: the certified-accuracy table holds the server's numbers ----
    eprintln!("ui test: the compare page");
    for (model, certification) in [(teacher, cert), (second, second_cert)] {
        let s = summary(&server, certification).await;
        let expected: Vec<String> =
            s["radii"].as_array().unwrap().iter().map(|r| pct(r["certified_accuracy"].as_f64().unwrap())).collect();
        let script = format!(
            "const row = document.querySelector('#results-table tr[data-id=\"{model}\"]');
             if (!row) return null;
             const cells = [...row.cells].slice(5, 10).map(c => c.textContent);
             return cells.includes('—') ? null : cells;"
        );
        let shown = b.wait_js("certified accuracy in the compare table", PAGE_TIMEOUT, &script).await;
        assert_eq!(shown, json!(expected), "run {model} (certified by {certification})");
        let acr = b.text(&format!("#results-table tr[data-id='{model}'] td:nth-child(11)")).await;
        assert_eq!(acr.parse::<f64>().unwrap(), (s["acr"].as_f64().unwrap() * 1000.0).round() / 1000.0);
    }
    let baseline_speedup = b.text(&format!("#results-table tr[data-id='{teacher}'] td:nth-child(13)")).await;
    assert_eq!(baseline_speedup, "1.00×");
    let differs = b
        .js("return [...document.querySelectorAll('#params-table tr.differs th')].map(th => th.textContent)", vec![])
        .await;
    assert!(differs.as_array().unwrap().iter().any(|t| t.as_str().unwrap().starts_with("method.sigma")), "{differs}");
    b.wait_js(
        "both certified-accuracy curves",
        PAGE_TIMEOUT,
        "const c = document.getElementById('radius-chart'); return c.querySelectorAll('.u-series').length >= 3 || null;",
    )
    .await;
    b.screenshot_page(1280, &ui_support::docs_dir().join("compare-page.png")).await;

    // ---- phone width: no page scrolls sideways ----
    eprintln!("ui test: phone width");
    b.emulate_phone(390, 844);
    let pages = [
        "/".to_string(),
        format!("/experiments/{experiment}"),
        format!("/experiments/{experiment}/launch"),
        format!("/runs/{teacher}"),
        format!("/runs/{cert}"),
        format!("/compare?runs={teacher},{second}"),
    ];
    for path in pages {
        b.goto(&server.url(&path)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let widths = b.js("return [window.innerWidth, document.documentElement.scrollWidth]", vec![]).await;
        assert_eq!(widths[0], 390, "the phone emulation is not in force");
        assert!(widths[1].as_i64().unwrap() <= 390, "{path} is {} px wide: wider than a phone screen", widths[1]);
    }
}
