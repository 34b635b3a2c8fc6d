//! The browser's login: paste a token, get an HttpOnly, SameSite=Strict session cookie that lasts
//! `auth::SESSION_LIFETIME`; log out ends the session.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;

use super::AppState;
use crate::auth::{SESSION_COOKIE, SESSION_LIFETIME};

/// A cookie the page scripts may read (the session's is HttpOnly): it only says that a session
/// exists, so the header can offer "Log out".
const SIGNED_IN_COOKIE: &str = "crt_signed_in";

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    message: Option<String>,
    open: bool,
    lifetime_hours: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(super) async fn page(State(app): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    render(StatusCode::OK, q.next.as_deref(), None, !app.auth.required)
}

/// The login page in place of a page the caller may not see yet (status 401).
pub fn page_with(status: StatusCode, next: Option<&str>, message: Option<String>) -> Response {
    render(status, next, message, false)
}

fn render(status: StatusCode, next: Option<&str>, message: Option<String>, open: bool) -> Response {
    let page = LoginPage {
        next: safe_next(next).to_string(),
        message,
        open,
        lifetime_hours: SESSION_LIFETIME.as_secs() / 3600,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => super::errors::internal_error_response(&format!("login template: {e}")),
    }
}

pub(super) async fn login(State(app): State<AppState>, jar: CookieJar, Form(form): Form<LoginForm>) -> Response {
    match app.auth.login(form.token.trim()).await {
        Ok(Some(session_id)) => {
            let max_age = time::Duration::seconds(SESSION_LIFETIME.as_secs() as i64);
            let session = Cookie::build((SESSION_COOKIE, session_id))
                .http_only(true)
                .same_site(SameSite::Strict)
                .path("/")
                .max_age(max_age);
            let marker = Cookie::build((SIGNED_IN_COOKIE, "1")).same_site(SameSite::Strict).path("/").max_age(max_age);
            let jar = jar.add(session).add(marker);
            (jar, Redirect::to(safe_next(form.next.as_deref()))).into_response()
        }
        Ok(None) => render(
            StatusCode::UNAUTHORIZED,
            form.next.as_deref(),
            Some("That token is unknown or has been revoked.".into()),
            !app.auth.required,
        ),
        Err(e) => super::errors::ApiError::Internal(e).into_response(),
    }
}

pub(super) async fn logout(State(app): State<AppState>, jar: CookieJar) -> Response {
    if let Some(cookie) = jar.get(SESSION_COOKIE) {
        if let Err(e) = app.auth.logout(cookie.value()).await {
            return super::errors::ApiError::Internal(e).into_response();
        }
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/")).remove(Cookie::build(SIGNED_IN_COOKIE).path("/"));
    (jar, Redirect::to("/login")).into_response()
}

/// Where to go after login: a path on this server only (never `//host` or `https://…`).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") && !n.starts_with("/login") => n,
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/runs/3?x=1")), "/runs/3?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/login")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
