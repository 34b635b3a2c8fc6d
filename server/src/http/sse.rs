//! Server-Sent Events per run and per experiment.
//!
//! Each event's id is its journal sequence number. A client that reconnects with
//! `Last-Event-ID` (or opens with `?after=N`) first gets the stored events after that number,
//! then live ones. The live subscription is opened before the database is read, and events
//! already sent are skipped by sequence number, so there is no gap and no duplicate.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::errors::ApiError;
use super::extract::{P, Q};
use super::AppState;
use crate::store::journal::{self, JournalEntry, Scope};
use crate::store::{experiments, runs, Store};

/// Stored events are replayed in pages of this many.
const PAGE: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Send events with a sequence number greater than this (default 0: everything).
    after: Option<i64>,
}

pub(super) async fn run_events(
    State(app): State<AppState>,
    P(id): P<i64>,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if runs::get(&app.store.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("run {id} does not exist")));
    }
    Ok(stream(&app, Scope::Run(id), start_after(&headers, q.after)?))
}

pub(super) async fn experiment_events(
    State(app): State<AppState>,
    P(id): P<i64>,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if experiments::get(&app.store.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("experiment {id} does not exist")));
    }
    Ok(stream(&app, Scope::Experiment(id), start_after(&headers, q.after)?))
}

/// `Last-Event-ID` wins over `?after=`: a browser reconnects to the same URL with the header.
fn start_after(headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| ApiError::bad_param("Last-Event-ID", "must be an event id (an integer)")),
        None => Ok(after.unwrap_or(0)),
    }
}

fn stream(app: &AppState, scope: Scope, after: i64) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel(256);
    let store = app.store.clone();
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        let mut live = store.subscribe();
        let mut last = after;
        if replay(&store, scope, &mut last, &tx).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                msg = live.recv() => {
                    let sent = match msg {
                        Ok(entry) if scope.matches(&entry) && entry.seq > last => {
                            last = entry.seq;
                            tx.send(to_event(&entry)).await.is_ok()
                        }
                        Ok(_) => true,
                        // Fell behind the broadcast: the database has everything we missed.
                        Err(broadcast::error::RecvError::Lagged(_)) => replay(&store, scope, &mut last, &tx).await.is_ok(),
                        Err(broadcast::error::RecvError::Closed) => false,
                    };
                    if !sent {
                        return;
                    }
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// Sends the stored events after `last`, advancing it. Err when the client is gone or the
/// database failed (the stream then ends and the client reconnects).
async fn replay(
    store: &Store,
    scope: Scope,
    last: &mut i64,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), ()> {
    loop {
        let page = journal::read_after(&store.pool, scope, *last, PAGE).await.map_err(|e| {
            tracing::error!("replaying events failed: {e:#}");
        })?;
        for entry in &page {
            tx.send(to_event(entry)).await.map_err(|_| ())?;
            *last = entry.seq;
        }
        if (page.len() as i64) < PAGE {
            return Ok(());
        }
    }
}

fn to_event(entry: &JournalEntry) -> Result<Event, Infallible> {
    Ok(Event::default().id(entry.seq.to_string()).event(&entry.kind).data(entry.to_json().to_string()))
}
