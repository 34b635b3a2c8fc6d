//! The check in front of every route of the table: who is asking (a bearer token or a browser
//! session), whether their scope suffices, and, for changes made with a browser's cookie, whether
//! the request comes from this server's own pages (Origin/Referer), which SameSite alone does not
//! guarantee (older browsers, same-site subdomains).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;

use super::{login, ApiError, AppState};
use crate::auth::{Access, SESSION_COOKIE};
use crate::store::tokens::Holder;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    Cookie,
}

/// Attached to a request that passed the guard with credentials.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub holder: Holder,
    pub credential: Credential,
}

pub async fn check(State(app): State<AppState>, access: Access, mut req: Request, next: Next) -> Response {
    let is_page = !req.uri().path().starts_with("/api/");
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    match authorize(&app, access, changes, req.headers()).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(Refusal::NoCredentials(_)) if is_page => login::page_with(
            StatusCode::UNAUTHORIZED,
            req.uri().path_and_query().map(|p| p.as_str()),
            Some("Log in with an API token to see this page.".into()),
        ),
        Err(Refusal::NoCredentials(why)) => ApiError::Unauthorized(why).into_response(),
        Err(Refusal::Forbidden(why)) => ApiError::Forbidden(why).into_response(),
        Err(Refusal::Internal(e)) => ApiError::Internal(e).into_response(),
    }
}

enum Refusal {
    NoCredentials(String),
    Forbidden(String),
    Internal(anyhow::Error),
}

async fn authorize(
    app: &AppState,
    access: Access,
    changes: bool,
    headers: &HeaderMap,
) -> Result<Option<Caller>, Refusal> {
    // Whatever the credentials, a browser change from a foreign page is refused.
    if changes && origin_is_foreign(headers) {
        return Err(Refusal::Forbidden(
            "cross-origin request refused: the Origin or Referer is not this server".into(),
        ));
    }
    let Access::Needs(needed) = access else { return Ok(None) };
    if !app.auth.required {
        return Ok(None);
    }
    let caller = identify(app, headers).await.map_err(Refusal::Internal)?;
    let Some(caller) = caller else {
        return Err(Refusal::NoCredentials(
            "authentication required: send `Authorization: Bearer <token>` (make one with `crt-server token create`) or log in at /login".into(),
        ));
    };
    if caller.holder.scope < needed {
        return Err(Refusal::Forbidden(format!(
            "this token's scope is '{}'; this request needs '{}'",
            caller.holder.scope.as_str(),
            needed.as_str()
        )));
    }
    // A cookie rides along on any request the browser makes: a change must prove it comes from our
    // own page. Bearer tokens are never sent by a browser on its own.
    if changes && caller.credential == Credential::Cookie && !has_origin(headers) {
        return Err(Refusal::Forbidden(
            "a change made with a session cookie must carry an Origin or Referer header".into(),
        ));
    }
    Ok(Some(caller))
}

/// The caller's credentials: a bearer token wins over a session cookie; a bearer token that is not
/// valid is a refusal, not a fallback to the cookie.
async fn identify(app: &AppState, headers: &HeaderMap) -> anyhow::Result<Option<Caller>> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let Some(token) = token else { return Ok(None) };
        return Ok(app.auth.bearer(token).await?.map(|holder| Caller { holder, credential: Credential::Bearer }));
    }
    let jar = CookieJar::from_headers(headers);
    match jar.get(SESSION_COOKIE) {
        Some(cookie) => {
            Ok(app.auth.session(cookie.value()).await?.map(|holder| Caller { holder, credential: Credential::Cookie }))
        }
        None => Ok(None),
    }
}

/// The request's origin as the browser states it: `Origin`, else the `Referer`'s scheme://host.
fn stated_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return Some(origin.to_str().unwrap_or("null").to_string());
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let rest = referer.split_once("://").map(|(scheme, rest)| (scheme, rest.split('/').next().unwrap_or("")))?;
    Some(format!("{}://{}", rest.0, rest.1))
}

fn has_origin(headers: &HeaderMap) -> bool {
    stated_origin(headers).is_some()
}

/// True when the browser states an origin whose host:port is not the one this request was sent to.
pub fn origin_is_foreign(headers: &HeaderMap) -> bool {
    let Some(origin) = stated_origin(headers) else { return false };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, a)| a);
    match (authority, host) {
        (Some(a), Some(h)) => !a.eq_ignore_ascii_case(h),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origins_are_compared_with_the_host() {
        let host = (header::HOST, "127.0.0.1:8080");
        assert!(!origin_is_foreign(&headers(std::slice::from_ref(&host))), "no origin stated: not a browser change");
        assert!(!origin_is_foreign(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:8080")])));
        assert!(origin_is_foreign(&headers(&[host.clone(), (header::ORIGIN, "http://evil.example")])));
        assert!(origin_is_foreign(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:9090")])));
        assert!(origin_is_foreign(&headers(&[host.clone(), (header::ORIGIN, "null")])));
        assert!(!origin_is_foreign(&headers(&[host.clone(), (header::REFERER, "http://127.0.0.1:8080/runs/3")])));
        assert!(origin_is_foreign(&headers(&[host, (header::REFERER, "https://evil.example/x")])));
    }
}
