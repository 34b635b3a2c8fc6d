//! Authentication: tokens and scopes on every route of the route table, the refusal to serve off
//! loopback without tokens, browser sessions with CSRF protection, revocation, and internal
//! errors that tell the client nothing but an id.

mod common;

use std::process::Command;
use std::time::Duration;

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{Server, TestEnv, SERVER};
use crt_server::auth::{Access, Scope};

/// A route's path with its parameters filled so that nothing it names exists (a GET of an SSE
/// stream then ends at once with 404 instead of streaming).
fn concrete(path: &str) -> String {
    path.replace("{id}", "999999").replace("{*path}", "nothing.txt")
}

async fn send(http: &reqwest::Client, server: &Server, method: &Method, path: &str) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    http.request(method, server.url(path)).send().await.unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test]
async fn off_loopback_the_server_refuses_to_start_without_tokens() {
    let env = TestEnv::new();
    let out = Command::new(SERVER)
        .args(["--bind", "0.0.0.0:0", "--trainer-bin", "/bin/false"])
        .args(env.database_args())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("running crt-server");
    assert!(!out.status.success(), "it served off loopback without tokens");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve on 0.0.0.0:0 without authentication"), "{err}");
    assert!(err.contains("crt-server token create --scope"), "the message says how to make a token: {err}");

    // With a token it serves, and requires it.
    let token = env.token("read");
    let server = env.server_with(&["--bind", "0.0.0.0:0"]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let loopback = format!("http://127.0.0.1:{port}");
    let http = client_with(None);
    let resp = http.get(format!("{loopback}/api/v1/experiments")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");
    let resp = client_with(Some(&token)).get(format!("{loopback}/api/v1/experiments")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http.get(format!("{loopback}/api/v1/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the health check is public");
}

#[tokio::test]
async fn every_route_of_the_table_checks_its_scope() {
    let env = TestEnv::new();
    let tokens: Vec<(Scope, String)> = Scope::ALL.iter().map(|s| (*s, env.token(s.as_str()))).collect();
    let server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    let routes = crt_server::http::routes::list();
    assert!(routes.len() > 30, "the table lists every route");
    let anonymous = client_with(None);
    for route in &routes {
        let path = concrete(route.path);
        let what = format!("{} {}", route.method, route.path);
        let status = send(&anonymous, &server, &route.method, &path).await.status();
        let Access::Needs(needed) = route.access else {
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{what} is public");
            continue;
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} without a token");
        for (scope, token) in &tokens {
            let status = send(&client_with(Some(token)), &server, &route.method, &path).await.status();
            if *scope < needed {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what} with a {scope:?} token");
            } else {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{what} with a {scope:?} token: {status}"
                );
            }
        }
        if route.method != Method::GET && !crt_server::http::routes::is_search(route) {
            assert!(needed >= Scope::Write, "{what} changes state with only {needed:?}");
        }
    }
    // An unknown token is no token.
    let status = send(&client_with(Some("crt_not-a-token")), &server, &Method::GET, "/api/v1/runs").await.status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_its_next_request() {
    let env = TestEnv::new();
    let admin = env.token("admin");
    let mut server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    server.use_token(&admin);
    // Tokens made through the API work like the CLI's, and the list never shows a secret.
    let (st, made) = server.post("/api/v1/tokens", &json!({ "name": "ci", "scope": "write" })).await;
    assert_eq!(st, StatusCode::CREATED, "{made}");
    let secret = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_i64().unwrap();
    let writer = client_with(Some(&secret));
    let resp = writer.post(server.url("/api/v1/experiments")).json(&json!({ "name": "e" })).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (_, list) = server.get("/api/v1/tokens").await;
    assert!(!list.to_string().contains(&secret), "the list shows no secret: {list}");
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(list[1]["last_used_at"].is_number(), "use is recorded: {list}");

    // A browser session made from it ends with it.
    let browser = client_with(None);
    let login =
        browser.post(server.url("/login")).form(&[("token", secret.as_str()), ("next", "/")]).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = session_cookie(&login);
    let page = browser.get(server.url("/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    let resp = server.http.delete(server.url(&format!("/api/v1/tokens/{id}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = writer.get(server.url("/api/v1/experiments")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "the revoked token still works");
    let page = browser.get(server.url("/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED, "its session still works");
    let (_, list) = server.get("/api/v1/tokens").await;
    assert!(list[1]["revoked_at"].is_number(), "{list}");

    // Revoking with the CLI while the server runs works the same way.
    let reader = env.token("read");
    let ok = client_with(Some(&reader)).get(server.url("/api/v1/runs")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let out = Command::new(SERVER).args(["token", "revoke", "3"]).args(env.database_args()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = client_with(Some(&reader)).get(server.url("/api/v1/runs")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    let out = Command::new(SERVER).args(["token", "revoke", "77"]).args(env.database_args()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no token 77"));
}

fn session_cookie(login: &reqwest::Response) -> String {
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("crt_session="))
        .expect("a session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Max-Age=43200"), "the stated 12-hour lifetime: {cookie}");
    cookie.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn a_cookie_change_from_a_foreign_origin_is_refused() {
    let env = TestEnv::new();
    let token = env.token("write");
    let server = env.server_with(&["--require-auth", "--trainer-bin", "/bin/false"]);
    let browser = client_with(None);

    let bad = browser.post(server.url("/login")).form(&[("token", "crt_wrong"), ("next", "/")]).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.text().await.unwrap().contains("unknown or has been revoked"));

    let login = browser
        .post(server.url("/login"))
        .form(&[("token", token.as_str()), ("next", "/runs/5")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()["location"], "/runs/5");
    let cookie = session_cookie(&login);
    let own_origin = server.base.clone();
    let create = |origin: Option<&str>, referer: Option<&str>| {
        let mut req = browser
            .post(server.url("/api/v1/experiments"))
            .header("cookie", &cookie)
            .json(&json!({ "name": "from the browser" }));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(r) = referer {
            req = req.header("referer", r);
        }
        req.send()
    };
    // A valid session cookie with a foreign Origin: refused (SameSite alone would let a test pass
    // without this check, since a test client sends the cookie anyway).
    let resp = create(Some("http://evil.example"), None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("cross-origin"), "{body}");
    let resp = create(None, Some("http://evil.example/page")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "a foreign Referer");
    let resp = create(None, None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "a cookie change with neither header");
    let list: Value =
        client_with(Some(&token)).get(server.url("/api/v1/experiments")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list, json!([]), "nothing was created by the refused requests");

    let resp = create(Some(&own_origin), None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "our own page may");
    let resp = create(None, Some(&format!("{own_origin}/experiments/1"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "a same-origin Referer suffices");
    // Reading with the cookie needs no Origin.
    let resp = browser.get(server.url("/api/v1/experiments")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Log out ends the session.
    let out = browser
        .post(server.url("/logout"))
        .header("cookie", &cookie)
        .header("origin", &own_origin)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let resp = browser.get(server.url("/api/v1/experiments")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_open_loopback_server_still_refuses_foreign_origins() {
    let env = TestEnv::new();
    let server = env.server_with(&["--trainer-bin", "/bin/false"]);
    let http = client_with(None);
    let resp = http.get(server.url("/api/v1/experiments")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "open on loopback without --require-auth");
    let resp = http
        .post(server.url("/api/v1/experiments"))
        .header("origin", "http://evil.example")
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "another site's page may not drive a local server");
}

#[tokio::test]
async fn an_internal_error_tells_the_client_only_an_id() {
    let env = TestEnv::new();
    let server = env.server_with(&["--trainer-bin", "/bin/false"]);
    server.create_experiment("fine").await;
    // Corrupt a stored document behind the server's back, so reading it fails inside.
    let url =
        env.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", env.data_dir().join("crt.db").display()));
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE experiments SET tags = 'not json'").execute(&mut conn).await.unwrap();
    }
    let resp = server.http.get(server.url("/api/v1/experiments")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = resp.json().await.unwrap();
    let id = body["error_id"].as_str().expect("an error id").to_string();
    assert_eq!(body.as_object().unwrap().len(), 2, "only the message and the id: {body}");
    let message = body["error"].as_str().unwrap();
    assert_eq!(message, format!("internal error; see the server log (error id {id})"));
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let html = page.text().await.unwrap();
    for leak in ["corrupt", "tags", "expected", "sqlite", "postgres", "/tmp", "SELECT"] {
        assert!(!message.contains(leak) && !html.contains(leak), "{leak} leaked: {message} / {html}");
    }
    // The log has the detail under the same id.
    let log = server.log();
    let line = log.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no log line with {id}:\n{log}"));
    assert!(line.contains("corrupt experiment tags"), "{line}");
}
