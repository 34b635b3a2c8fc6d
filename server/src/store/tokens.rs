//! API tokens and the browser sessions made from them. Only SHA-256 hashes of secrets are stored.

use serde::Serialize;
use sqlx::{any::AnyRow, Row};

use super::Store;
use crate::auth::Scope;
use crt_trainer::events::unix_now;

/// A token as listed (never with its secret).
#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    pub created_at: f64,
    pub last_used_at: Option<f64>,
    pub revoked_at: Option<f64>,
}

/// Who a valid token or session stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub token_id: i64,
    pub scope: Scope,
}

const COLUMNS: &str = "id, name, scope, created_at, last_used_at, revoked_at";

fn from_row(r: &AnyRow) -> anyhow::Result<Token> {
    let scope: String = r.try_get("scope")?;
    Ok(Token {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        scope: scope.parse()?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

fn holder(r: &AnyRow) -> anyhow::Result<Holder> {
    let scope: String = r.try_get("scope")?;
    Ok(Holder { token_id: r.try_get("id")?, scope: scope.parse()? })
}

pub async fn create(store: &Store, name: &str, scope: Scope, hash: &str) -> anyhow::Result<Token> {
    let mut w = store.write().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO api_tokens (name, scope, hash, created_at) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    ))
    .bind(name)
    .bind(scope.as_str())
    .bind(hash)
    .bind(unix_now())
    .fetch_one(w.conn())
    .await?;
    let token = from_row(&row)?;
    w.commit().await?;
    Ok(token)
}

pub async fn list(store: &Store) -> anyhow::Result<Vec<Token>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY id")).fetch_all(&store.pool).await?;
    rows.iter().map(from_row).collect()
}

/// Tokens that still work.
pub async fn count_active(store: &Store) -> anyhow::Result<i64> {
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE revoked_at IS NULL").fetch_one(&store.pool).await?;
    Ok(row.try_get("n")?)
}

/// Revokes a token and ends its sessions; `false` when there is no such token.
pub async fn revoke(store: &Store, id: i64) -> anyhow::Result<bool> {
    let mut w = store.write().await?;
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
        .bind(id)
        .bind(unix_now())
        .execute(w.conn())
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM sessions WHERE token_id = $1").bind(id).execute(w.conn()).await?;
    w.commit().await?;
    Ok(done > 0)
}

/// The holder of an unrevoked token with this hash.
pub async fn by_hash(store: &Store, hash: &str) -> anyhow::Result<Option<Holder>> {
    let row = sqlx::query("SELECT id, scope FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL")
        .bind(hash)
        .fetch_optional(&store.pool)
        .await?;
    row.as_ref().map(holder).transpose()
}

pub async fn touch(store: &Store, id: i64) -> anyhow::Result<()> {
    let mut w = store.write().await?;
    sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
        .bind(id)
        .bind(unix_now())
        .execute(w.conn())
        .await?;
    w.commit().await
}

pub async fn create_session(store: &Store, hash: &str, token_id: i64, lifetime_s: f64) -> anyhow::Result<()> {
    let now = unix_now();
    let mut w = store.write().await?;
    // Expired sessions go whenever a new one is made: the table stays as small as the live set.
    sqlx::query("DELETE FROM sessions WHERE expires_at <= $1").bind(now).execute(w.conn()).await?;
    sqlx::query("INSERT INTO sessions (hash, token_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(hash)
        .bind(token_id)
        .bind(now)
        .bind(now + lifetime_s)
        .execute(w.conn())
        .await?;
    w.commit().await
}

/// The holder of an unexpired session whose token is not revoked.
pub async fn session(store: &Store, hash: &str) -> anyhow::Result<Option<Holder>> {
    let row = sqlx::query(
        "SELECT t.id AS id, t.scope AS scope FROM sessions s JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
    )
    .bind(hash)
    .bind(unix_now())
    .fetch_optional(&store.pool)
    .await?;
    row.as_ref().map(holder).transpose()
}

pub async fn delete_session(store: &Store, hash: &str) -> anyhow::Result<()> {
    let mut w = store.write().await?;
    sqlx::query("DELETE FROM sessions WHERE hash = $1").bind(hash).execute(w.conn()).await?;
    w.commit().await
}
