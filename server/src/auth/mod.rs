//! Who may do what: API tokens with a scope, browser sessions made from them, and the check that
//! every route passes through (see `http::routes`, the one table of routes and their access).
//!
//! A server bound to loopback is open unless `--require-auth`; bound to any other address it
//! requires a token (and refuses to start when none exists).

pub mod secret;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::tokens::{self, Holder};
use crate::store::Store;

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read everything: pages, the API, the event streams.
    Read,
    /// Also create, change, stop and delete experiments and runs.
    Write,
    /// Also list, create and revoke tokens.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Scope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown scope '{s}' (expected read, write or admin)"))
    }
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Anyone: the health check, the login page, static files.
    Public,
    /// A token (or session) with at least this scope.
    Needs(Scope),
}

/// How long a browser session lasts after login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "crt_session";
/// `last_used_at` is written at most this often per token (a write per request would contend
/// with ingest for SQLite's one writer).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The server's authentication state.
#[derive(Clone)]
pub struct Auth {
    /// Whether requests need a token; off only on loopback without `--require-auth`.
    pub required: bool,
    store: Store,
    touched: Arc<Mutex<HashMap<i64, Instant>>>,
}

impl Auth {
    pub fn new(store: Store, required: bool) -> Auth {
        Auth { required, store, touched: Arc::default() }
    }

    /// The holder of a bearer token, if it is known and not revoked.
    pub async fn bearer(&self, token: &str) -> anyhow::Result<Option<Holder>> {
        let holder = tokens::by_hash(&self.store, &secret::hash(token)).await?;
        if let Some(h) = holder {
            self.touch(h.token_id).await;
        }
        Ok(holder)
    }

    /// The holder of a browser session, if it is live and its token not revoked.
    pub async fn session(&self, session_id: &str) -> anyhow::Result<Option<Holder>> {
        let holder = tokens::session(&self.store, &secret::hash(session_id)).await?;
        if let Some(h) = holder {
            self.touch(h.token_id).await;
        }
        Ok(holder)
    }

    /// Starts a session for a valid token; returns the session id for the cookie.
    pub async fn login(&self, token: &str) -> anyhow::Result<Option<String>> {
        let Some(holder) = tokens::by_hash(&self.store, &secret::hash(token)).await? else {
            return Ok(None);
        };
        let session_id = secret::generate("")?;
        tokens::create_session(
            &self.store,
            &secret::hash(&session_id),
            holder.token_id,
            SESSION_LIFETIME.as_secs_f64(),
        )
        .await?;
        Ok(Some(session_id))
    }

    pub async fn logout(&self, session_id: &str) -> anyhow::Result<()> {
        tokens::delete_session(&self.store, &secret::hash(session_id)).await
    }

    async fn touch(&self, token_id: i64) {
        let due = {
            let mut touched = self.touched.lock().expect("token touch map");
            let now = Instant::now();
            let due = touched.get(&token_id).is_none_or(|t| now.duration_since(*t) >= TOUCH_EVERY);
            if due {
                touched.insert(token_id, now);
            }
            due
        };
        if due {
            if let Err(e) = tokens::touch(&self.store, token_id).await {
                tracing::warn!("cannot record a token's last use: {e:#}");
            }
        }
    }
}

/// A new token: the secret (shown once) and its stored record.
pub async fn create_token(store: &Store, name: &str, scope: Scope) -> anyhow::Result<(String, tokens::Token)> {
    let secret = secret::generate("crt_")?;
    let token = tokens::create(store, name, scope, &secret::hash(&secret)).await?;
    Ok((secret, token))
}
