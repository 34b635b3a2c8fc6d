//! Importing a reference-code checkpoint from the experiment page in a real headless Chromium:
//! a file the trainer refuses shows its message next to the form and creates nothing; the
//! reference LeNet becomes a run that opens as a model (certify action, "imported" origin).

mod common;
mod ui_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ui_support::Browser;

const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

fn checkpoint(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/pytorch").join(name)
}

async fn choose_file(b: &Browser, path: &Path) {
    let input = b.client.find(fantoccini::Locator::Css("#import-model-file")).await.expect("the file input");
    input.send_keys(&path.canonicalize().unwrap().display().to_string()).await.expect("choosing the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_imported_from_the_experiment_page_is_a_model() {
    ui_support::require_assets();
    let env = common::TestEnv::new();
    let server = env.server();
    let experiment = server.create_experiment("bring your own model").await;
    let b = Browser::start(1280, 900).await;
    b.goto(&server.url(&format!("/experiments/{experiment}"))).await;
    b.click("#import-model-section summary").await;

    // A ResNet-20 checkpoint offered as a LeNet: the trainer's refusal, next to the form.
    choose_file(&b, &checkpoint("cifar_resnet20.pth.tar")).await;
    b.select("#import-model-arch", "lenet").await;
    b.select("#import-model-dataset", "mnist").await;
    b.click("#import-model-submit").await;
    let message = b
        .wait_js(
            "the refusal next to the form",
            PAGE_TIMEOUT,
            "const e = document.getElementById('import-model-error'); return e.hidden ? null : e.textContent;",
        )
        .await;
    assert!(message.as_str().unwrap().contains("cifar_resnet20"), "{message}");
    let (_, runs) = server.get(&format!("/api/v1/experiments/{experiment}/runs")).await;
    assert_eq!(runs.as_array().unwrap().len(), 0, "a refused file creates no run: {runs}");

    // The reference LeNet: imported, listed, and a model on its run page.
    choose_file(&b, &checkpoint("lenet.pth.tar")).await;
    b.select("#import-model-arch", "lenet").await;
    b.select("#import-model-dataset", "mnist").await;
    b.fill("#import-model-name", "reference LeNet").await;
    b.fill("#import-model-sigma", "0.25").await;
    b.click("#import-model-submit").await;
    b.wait_js(
        "the import to finish",
        PAGE_TIMEOUT,
        "const t = document.getElementById('import-model-status').textContent; return t.startsWith('Imported as') ? t : null;",
    )
    .await;
    let (_, runs) = server.get(&format!("/api/v1/experiments/{experiment}/runs")).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["makes_model"], true, "{runs:?}");
    let id = runs[0]["id"].as_i64().unwrap();
    b.wait_js(
        "the run in the table",
        PAGE_TIMEOUT,
        "return document.body.textContent.includes('reference LeNet') ? true : null;",
    )
    .await;
    b.goto(&server.url(&format!("/runs/{id}"))).await;
    let origin = b.text("#fact-where").await;
    assert!(origin.contains("PyTorch checkpoint"), "{origin}");
    let certify = b.js("return Boolean(document.getElementById('certify-run'));", vec![]).await;
    assert_eq!(certify, serde_json::json!(true), "an imported model can be certified from its page");
}
