//! Logging in from a real headless Chromium: a server that requires tokens shows the login page in
//! place of the dashboard, a pasted token opens a session, the dashboard then works (creating an
//! experiment is a cookie-authenticated change through the page's own script), and logging out
//! ends it.

mod common;
mod ui_support;

use std::time::Duration;

use ui_support::Browser;

const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_logs_in_uses_the_dashboard_and_logs_out() {
    ui_support::require_assets();
    let env = common::TestEnv::new();
    let token = env.token("write");
    let mut server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    let b = Browser::start(1280, 900).await;

    b.goto(&server.url("/")).await;
    assert!(b.text("h1").await.contains("Log in"), "the login page stands in for the dashboard");
    let shown = b.text(".form-error").await;
    assert!(shown.contains("Log in with an API token"), "{shown}");
    b.fill("#token", "crt_not-a-token").await;
    b.click(".login-form button[type=submit]").await;
    b.wait_js(
        "the refusal",
        PAGE_TIMEOUT,
        "const t = document.querySelector('.form-error')?.textContent || ''; return t.includes('unknown or has been revoked') ? t : null",
    )
    .await;

    b.fill("#token", &token).await;
    b.click(".login-form button[type=submit]").await;
    b.wait_js("the dashboard", PAGE_TIMEOUT, "return document.getElementById('new-experiment') ? true : null").await;
    let logout_shown = b.js("return !document.getElementById('logout-form').hidden", vec![]).await;
    assert_eq!(logout_shown, serde_json::json!(true), "a signed-in page offers Log out");

    b.fill("#new-experiment-name", "made after login").await;
    b.click("#new-experiment button[type=submit]").await;
    let path = b.wait_path("the new experiment's page", "/experiments/").await;
    server.use_token(&token);
    let (_, list) = server.get("/api/v1/experiments").await;
    assert_eq!(list[0]["name"], "made after login", "{list}");
    assert!(path.ends_with(&list[0]["id"].to_string()), "{path}");

    b.click("#logout-form button").await;
    b.wait_path("the login page", "/login").await;
    b.goto(&server.url("/")).await;
    assert!(b.text("h1").await.contains("Log in"), "logged out: the dashboard is closed again");
}
