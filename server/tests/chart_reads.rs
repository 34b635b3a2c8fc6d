//! The chart read path: a history thinned from the precomputed levels equals the same thinning
//! computed here from the whole stored history, after a trainer's run is resumed and replaces
//! steps, after MLflow-style appends out of order with repeated steps, with NaN and ±inf; and
//! the levels kept up to date point by point equal levels built from scratch, byte for byte.
//! Runs on SQLite or Postgres (`CRT_TEST_DB`), through the one recording entry point.

mod common;

use std::collections::BTreeMap;

use crt_server::downsample;
use crt_server::record::{Incoming, Recorder};
use crt_server::store::metrics::{self, Logged, MetricPoint};
use crt_server::store::{self, rollup, runs::ConfigColumns, Store};
use crt_trainer::events::{Event, EventLine};
use sqlx::Row;

/// A small deterministic generator (the test needs variety, not a crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly smooth values, with spikes and non-finite ones.
    fn value(&mut self, step: i64) -> f64 {
        match self.below(200) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => 1e6,
            4 => -1e6,
            _ => 1.0 / (step as f64 + 2.0) + self.below(1000) as f64 * 1e-6,
        }
    }
}

async fn open(env: &common::TestEnv) -> Store {
    let url = env
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", env.dir.path().join("charts.db").display()));
    Store::open(&url).await.expect("opening the store")
}

async fn new_run(store: &Store, kind: crt_trainer::config::RunKind) -> (i64, i64) {
    let exp = store::experiments::create(store, &format!("charts-{}", rand_name()), "", &[]).await.unwrap();
    let mut w = store.write().await.unwrap();
    let run = store::runs::insert(w.conn(), exp.id, "r", kind, &ConfigColumns::default(), &Default::default(), 0.0)
        .await
        .unwrap();
    w.commit().await.unwrap();
    (exp.id, run)
}

fn rand_name() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn metrics_line(step: i64, values: &[(&str, f64)]) -> Incoming {
    let values: BTreeMap<String, f64> = values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    Incoming::Event(EventLine::now(Event::Metrics { step: step as u64, epoch: Some(step as f64 / 50.0), values }))
}

/// The thinning computed from the whole history: buckets of the plan's width, each keeping
/// its minimum and maximum (by `total_cmp`, ties to the later point) and its last point.
fn expected(full: &[MetricPoint], max_points: usize) -> Vec<MetricPoint> {
    if full.len() <= max_points {
        return full.to_vec();
    }
    let plan = downsample::plan(full[0].step, full[full.len() - 1].step, max_points);
    let w = plan.width();
    // The one-bucket plan (3 to 5 points) holds every step.
    let bucket_of = |s: i64| if plan.group == i64::MAX { 0 } else { s.div_euclid(w) };
    // (step, rank at the step) orders points; the history comes ordered by both.
    let mut ranked: Vec<((i64, i64), MetricPoint)> = Vec::new();
    for p in full {
        let n = match ranked.last() {
            Some(((s, n), _)) if *s == p.step => n + 1,
            _ => 0,
        };
        ranked.push(((p.step, n), *p));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < ranked.len() {
        let bucket = bucket_of(ranked[i].1.step);
        let end = ranked[i..].iter().position(|(_, p)| bucket_of(p.step) != bucket).map_or(ranked.len(), |k| i + k);
        let slice = &ranked[i..end];
        let key = |x: &((i64, i64), MetricPoint)| (x.1.value, x.0);
        let cmp = |a: &&((i64, i64), MetricPoint), b: &&((i64, i64), MetricPoint)| {
            key(a).0.total_cmp(&key(b).0).then(key(a).1.cmp(&key(b).1))
        };
        let min = slice.iter().min_by(cmp).unwrap();
        let max = slice.iter().max_by(cmp).unwrap();
        let last = slice.last().unwrap();
        let mut keep = vec![min, max, last];
        keep.sort_by_key(|x| x.0);
        keep.dedup_by_key(|x| x.0);
        out.extend(keep.iter().map(|x| x.1));
        i = end;
    }
    out
}

fn same(a: &[MetricPoint], b: &[MetricPoint]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.step == y.step && x.epoch == y.epoch && x.ts == y.ts && x.value.to_bits() == y.value.to_bits()
                || (x.step == y.step && x.value.is_nan() && y.value.is_nan())
        })
}

async fn check_reads(store: &Store, run: i64, key: &str) {
    let full = metrics::history(&store.pool, run, key).await.unwrap();
    assert!(!full.is_empty());
    for max_points in [3, 4, 10, 31, 300, 1000, 2999, full.len(), full.len() + 5] {
        let thinned = rollup::read(&store.pool, run, key, max_points).await.unwrap();
        assert_eq!(thinned.total, full.len() as u64, "{key}: points counted");
        let got = thinned.points.unwrap_or_else(|| full.clone());
        let want = expected(&full, max_points);
        assert!(got.len() <= max_points, "{key} in {max_points}: {} points", got.len());
        assert!(same(&got, &want), "{key} in {max_points} points: the levels' answer differs from the history's");
    }
    // Spikes survive: the history's extremes are among the thinned points at 30 points.
    let thinned = rollup::read(&store.pool, run, key, 30).await.unwrap().points.unwrap_or_else(|| full.clone());
    let max = full.iter().map(|p| p.value).max_by(f64::total_cmp).unwrap();
    let min = full.iter().map(|p| p.value).min_by(f64::total_cmp).unwrap();
    assert!(thinned.iter().any(|p| p.value.to_bits() == max.to_bits() || (max.is_nan() && p.value.is_nan())));
    assert!(thinned.iter().any(|p| p.value.to_bits() == min.to_bits()));
}

/// The stored levels of a run, then the same levels rebuilt from the raw points.
async fn assert_levels_equal_a_rebuild(store: &Store, run: i64) {
    let rows = |store: &Store| {
        let pool = store.pool.clone();
        async move {
            sqlx::query(
                "SELECT key, level, chunk, data FROM metric_rollup WHERE run_id = $1 ORDER BY key, level, chunk",
            )
            .bind(run)
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let (k, l, c): (String, i64, i64) =
                    (r.try_get("key").unwrap(), r.try_get("level").unwrap(), r.try_get("chunk").unwrap());
                (k, l, c, r.try_get::<Vec<u8>, _>("data").unwrap())
            })
            .collect::<Vec<_>>()
        }
    };
    let kept = rows(store).await;
    assert!(!kept.is_empty());
    sqlx::query("DELETE FROM metric_rollup WHERE run_id = $1").bind(run).execute(&store.pool).await.unwrap();
    rollup::backfill(store).await.unwrap();
    let rebuilt = rows(store).await;
    assert_eq!(kept.len(), rebuilt.len(), "as many chunks kept as rebuilt");
    for (a, b) in kept.iter().zip(&rebuilt) {
        assert!(a == b, "chunk {:?} level {} #{} differs from its rebuild", a.0, a.1, a.2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_trainer_replacing_steps() {
    let env = common::TestEnv::new();
    let store = open(&env).await;
    let (exp, run) = new_run(&store, crt_trainer::config::RunKind::Train).await;
    let recorder = Recorder::new(store.clone(), run, exp, env.dir.path().to_path_buf());
    let mut rng = Lcg(7);
    let record = |from: i64, to: i64, rng: &mut Lcg| {
        let mut lines = Vec::new();
        for step in from..to {
            lines.push(metrics_line(step, &[("loss", rng.value(step)), ("acc", rng.value(step))]));
        }
        lines
    };
    // First attempt: 6,000 steps in batches of varied size.
    let mut step = 0;
    while step < 6000 {
        let n = 1 + rng.below(700) as i64;
        let lines = record(step, (step + n).min(6000), &mut rng);
        recorder.record(&lines, None).await.unwrap();
        step += n;
    }
    // Resumed from a checkpoint at step 2,345: steps 2,345.. are reported again with new values
    // (the old maxima and NaNs there must go), reaching 7,000.
    let mut step = 2345;
    while step < 7000 {
        let n = 1 + rng.below(900) as i64;
        let lines = record(step, (step + n).min(7000), &mut rng);
        recorder.record(&lines, None).await.unwrap();
        step += n;
    }
    // One batch that repeats a step inside itself.
    recorder
        .record(&[metrics_line(6990, &[("loss", 123.0)]), metrics_line(6990, &[("loss", 0.5)])], None)
        .await
        .unwrap();
    for key in ["loss", "acc"] {
        check_reads(&store, run, key).await;
    }
    let full = metrics::history(&store.pool, run, "loss").await.unwrap();
    assert_eq!(full.len(), 7000, "replaced, not duplicated");
    // A chart page reads every key at once: each key gets its own answer, a short one whole.
    let short: Vec<_> = (0..50).map(|s| metrics_line(s, &[("short", s as f64)])).collect();
    recorder.record(&short, None).await.unwrap();
    let keys = ["loss", "short", "acc"];
    for max_points in [3, 40, 100, 1000, 7000] {
        let many = rollup::read_many(&store.pool, run, &keys, max_points).await.unwrap();
        assert_eq!(many.len(), keys.len());
        for (key, got) in keys.iter().zip(&many) {
            let full = metrics::history(&store.pool, run, key).await.unwrap();
            assert_eq!(got.total, full.len() as u64, "{key}: points counted");
            let points = got.points.clone().unwrap_or_else(|| full.clone());
            assert!(same(&points, &expected(&full, max_points)), "{key} in {max_points}, read beside other keys");
        }
    }
    assert_levels_equal_a_rebuild(&store, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_appends_out_of_order_with_repeated_steps() {
    let env = common::TestEnv::new();
    let store = open(&env).await;
    let (exp, run) = new_run(&store, crt_trainer::config::RunKind::External).await;
    let recorder = Recorder::new(store.clone(), run, exp, env.dir.path().to_path_buf());
    let mut rng = Lcg(11);
    let mut ts = 1.7e9;
    for batch in 0..40 {
        let mut items = Vec::new();
        for _ in 0..(1 + rng.below(400)) {
            // Mostly forward, sometimes far back, sometimes negative or huge steps.
            let step = match rng.below(50) {
                0 => -(rng.below(1000) as i64),
                1 => 1_000_000_000 + rng.below(10) as i64,
                2..=9 => rng.below(3000) as i64,
                _ => batch * 300 + rng.below(300) as i64,
            };
            ts += 0.001;
            items.push(Incoming::Logged(Logged { key: "m".into(), step, ts, value: rng.value(step) }));
            if rng.below(3) == 0 {
                items.push(Incoming::Logged(Logged { key: "m".into(), step, ts, value: rng.value(step) }));
            }
        }
        recorder.record(&items, None).await.unwrap();
    }
    check_reads(&store, run, "m").await;
    assert_levels_equal_a_rebuild(&store, run).await;
}

/// On Postgres, sqlx's Any driver types a NULL float (how NaN is stored) as FLOAT4, and a cached
/// statement keeps the types of its first execution: the same statement with a float in that
/// place then failed ("incorrect binary data format in bind parameter"). On one connection, each
/// statement shape first with a NULL float, then with floats, must store both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_float_first_does_not_break_the_same_statement_later() {
    let env = common::TestEnv::new();
    let store = open(&env).await;
    let (exp, run) = new_run(&store, crt_trainer::config::RunKind::External).await;
    let point = |step: i64, value: f64| Logged { key: "m".into(), step, ts: 1.7e9 + step as f64, value };
    let one = |v: f64| BTreeMap::from([("t".to_string(), v)]);
    let mut w = store.write().await.unwrap();
    metrics::append(w.conn(), run, &[point(0, f64::NAN), point(1, 1.0)]).await.unwrap();
    metrics::append(w.conn(), run, &[point(2, 2.0), point(3, 3.0)]).await.unwrap();
    metrics::upsert_step(w.conn(), run, 10, None, 1.7e9, &one(f64::NAN)).await.unwrap();
    metrics::upsert_step(w.conn(), run, 11, Some(1.0), 1.7e9, &one(0.5)).await.unwrap();
    let columns = |sigma| ConfigColumns { sigma, ..ConfigColumns::default() };
    let kind = crt_trainer::config::RunKind::External;
    let placement = Default::default();
    store::runs::insert(w.conn(), exp, "a", kind, &columns(None), &placement, 0.0).await.unwrap();
    let b = store::runs::insert(w.conn(), exp, "b", kind, &columns(Some(0.25)), &placement, 0.0).await.unwrap();
    w.commit().await.unwrap();

    let values: Vec<(i64, Option<f64>)> =
        sqlx::query("SELECT step, value FROM metrics WHERE run_id = $1 ORDER BY key, step")
            .bind(run)
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("step"), r.get("value")))
            .collect();
    assert_eq!(
        values,
        [(0, None), (1, Some(1.0)), (2, Some(2.0)), (3, Some(3.0)), (10, None), (11, Some(0.5))],
        "NaN is stored as NULL, the floats after it as themselves"
    );
    let sigma: Option<f64> =
        sqlx::query("SELECT sigma FROM runs WHERE id = $1").bind(b).fetch_one(&store.pool).await.unwrap().get("sigma");
    assert_eq!(sigma, Some(0.25));
}
