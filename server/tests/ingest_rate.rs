//! Measures the metric ingest rate: synthetic trainer output (JSON event lines, as
//! `crt-trainer --events jsonl` writes them) goes through the same path as a real trainer's —
//! the one recording entry point, in batches of 2,000 lines with the source offset, journal,
//! broadcast — into a fresh database (SQLite file, or Postgres with `CRT_TEST_DB=postgres`).
//! Prints points per second. Also checks that non-finite values are stored and read back.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use crt_server::record::{Cursor, Incoming, Recorder};
use crt_server::store::{self, runs::ConfigColumns, Store};
use crt_trainer::events::{Event, EventLine};
use sqlx::Row;

const EVENTS: u64 = 20_000;
const KEYS: [&str; 4] = ["train/loss", "train/acc", "lr", "grad_norm"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_ingest_rate() {
    let dir = tempfile::tempdir().unwrap();
    let pg = match std::env::var("CRT_TEST_DB").as_deref() {
        Ok("postgres") => {
            Some(std::env::var("CRT_TEST_POSTGRES_URL").expect("CRT_TEST_DB=postgres needs CRT_TEST_POSTGRES_URL"))
        }
        _ => None,
    };
    let (url, cleanup) = match &pg {
        Some(admin) => {
            let name = format!("crt_ingest_{}", std::process::id());
            let admin_store = sqlx::PgPool::connect(admin).await.expect("connecting to CRT_TEST_POSTGRES_URL");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin_store).await.unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            (format!("{base}/{name}"), Some((admin_store, name)))
        }
        None => (format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display()), None),
    };
    let store = Store::open(&url).await.unwrap();
    let exp = store::experiments::create(&store, "bench", "", &[]).await.unwrap();
    let mut w = store.write().await.unwrap();
    let run_id = store::runs::insert(
        w.conn(),
        exp.id,
        "bench",
        crt_trainer::config::RunKind::Train,
        &ConfigColumns::default(),
        &Default::default(),
        0.0,
    )
    .await
    .unwrap();
    w.commit().await.unwrap();
    let mut live = store.subscribe();

    // Metrics every step plus a progress line, as a chatty trainer would write them.
    let mut text = String::new();
    for step in 1..=EVENTS {
        let values: BTreeMap<String, f64> =
            KEYS.iter().enumerate().map(|(i, k)| (k.to_string(), step as f64 * 1e-3 + i as f64)).collect();
        text.push_str(&EventLine::now(Event::Metrics { step, epoch: Some(step as f64 / 100.0), values }).to_json());
        text.push('\n');
        let progress = Event::Progress { phase: "train".into(), done: step, total: EVENTS, unit: "steps".into() };
        text.push_str(&EventLine::now(progress).to_json());
        text.push('\n');
    }

    let start = Instant::now();
    let recorder = Recorder::new(store.clone(), run_id, exp.id, dir.path().to_path_buf());
    let lines: Vec<&str> = text.lines().collect();
    let mut offset = 0u64;
    for chunk in lines.chunks(2000) {
        let batch: Vec<Incoming> = chunk.iter().map(|l| Incoming::from_event_line(l, 0.0)).collect();
        offset += chunk.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        recorder.record(&batch, Some(Cursor { events: offset, stderr: 0 })).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let run = store::runs::get(&store.pool, run_id).await.unwrap().unwrap();
    assert_eq!(run.cursor.events, text.len() as u64, "the offset is stored with the rows");

    let points = EVENTS * KEYS.len() as u64;
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM metrics WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(stored as u64, points, "every point stored once");
    let latest = store::metrics::latest(&store.pool, run_id).await.unwrap();
    assert_eq!(latest["lr"].step as u64, EVENTS, "latest summary at the last step");
    // One journal entry per metrics line; the broadcast carried them in order (a receiver
    // this slow lags behind the channel's capacity and skips some: SSE then reads the database).
    let journaled: i64 = sqlx::query("SELECT COUNT(*) AS n FROM run_events WHERE run_id = $1 AND type = 'metrics'")
        .bind(run_id)
        .fetch_one(&store.pool)
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(journaled as u64, EVENTS);
    let newest = store::journal::last_seq(&store.pool, store::journal::Scope::Run(run_id)).await.unwrap();
    let mut last_seq = 0;
    loop {
        match live.try_recv() {
            Ok(entry) => {
                assert!(entry.seq > last_seq);
                last_seq = entry.seq;
            }
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(last_seq, newest, "the newest entry was broadcast");

    // Non-finite values are kept (a NaN loss is what a diverging run must show).
    let mut values = BTreeMap::new();
    values.insert("nan".to_string(), f64::NAN);
    values.insert("inf".to_string(), f64::INFINITY);
    values.insert("neg".to_string(), f64::NEG_INFINITY);
    let line = EventLine::now(Event::Metrics { step: EVENTS + 1, epoch: None, values }).to_json();
    assert!(line.contains(r#""NaN""#) && line.contains(r#""-Infinity""#), "{line}");
    recorder.record(&[Incoming::from_event_line(&line, 0.0)], None).await.unwrap();
    let latest = store::metrics::latest(&store.pool, run_id).await.unwrap();
    assert!(latest["nan"].value.is_nan(), "{:?}", latest["nan"]);
    assert_eq!(latest["inf"].value, f64::INFINITY);
    assert_eq!(latest["neg"].value, f64::NEG_INFINITY);
    let history = store::metrics::history(&store.pool, run_id, "nan").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(serde_json::to_value(history[0]).unwrap()["value"], "NaN");

    let backend = if pg.is_some() { "postgres" } else { "sqlite" };
    println!(
        "ingest rate ({backend}): {points} metric points ({EVENTS} metrics + {EVENTS} progress lines) in {secs:.2} s = {:.0} points/s, {:.0} event lines/s",
        points as f64 / secs,
        2.0 * EVENTS as f64 / secs
    );
    store.pool.close().await;
    if let Some((admin, name)) = cleanup {
        admin.close().await;
        let admin_url = std::env::var("CRT_TEST_POSTGRES_URL").unwrap();
        tokio::task::spawn_blocking(move || common::drop_database(&admin_url, &name)).await.unwrap();
    }
}
