//! The precomputed chart levels of each metric history (`metric_rollup`), kept up to date in the
//! transaction that writes the points, so a chart reads one level of one history instead of the
//! whole history, however long it is (`crate::downsample` defines the buckets).
//!
//! Two ways in: [`add`] merges new points into the buckets (values that only add to a history:
//! MLflow appends, a trainer's steps past its last stored one), and [`rebuild`] recomputes the
//! buckets over a range of steps from the stored points and then each level from the one below
//! (a resumed trainer replacing steps: a replaced value cannot be taken out of a min or a max).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::downsample::{self, add_points, width, Bucket, Buckets, Ranked, CHUNK, TOP_LEVEL};
use crate::store::metrics::MetricPoint;

/// Loaded buckets by key and level, and the chunks that changed.
#[derive(Default)]
struct Levels {
    buckets: BTreeMap<String, BTreeMap<u32, Buckets>>,
    dirty: BTreeMap<String, BTreeSet<(u32, i64)>>,
}

impl Levels {
    fn level(&mut self, key: &str, level: u32) -> &mut Buckets {
        if !self.buckets.contains_key(key) {
            self.buckets.insert(key.to_string(), BTreeMap::new());
        }
        self.buckets.get_mut(key).expect("inserted above").entry(level).or_default()
    }

    /// Replaces the buckets `lo ..= hi` of a level with `fresh`; the chunks of the buckets
    /// removed or added change (not every chunk of the range: steps may be sparse).
    fn replace(&mut self, key: &str, level: u32, lo: i64, hi: i64, fresh: Buckets) {
        let buckets = self.level(key, level);
        let old: Vec<i64> = buckets.range(lo..=hi).map(|(b, _)| *b).collect();
        for b in &old {
            buckets.remove(b);
        }
        let added: Vec<i64> = fresh.keys().copied().collect();
        buckets.extend(fresh);
        for b in old.into_iter().chain(added) {
            self.mark(key, level, b);
        }
    }

    fn mark(&mut self, key: &str, level: u32, bucket: i64) {
        if !self.dirty.contains_key(key) {
            self.dirty.insert(key.to_string(), BTreeSet::new());
        }
        self.dirty.get_mut(key).expect("inserted above").insert((level, bucket.div_euclid(CHUNK)));
    }
}

/// Index of the first and last bucket of `level` holding steps `lo ..= hi`.
fn span(level: u32, lo: i64, hi: i64) -> (i64, i64) {
    (lo.div_euclid(width(level)), hi.div_euclid(width(level)))
}

/// Chunks to load: those holding buckets `lo ..= hi` of a key's level.
struct Wanted<'a> {
    key: &'a str,
    level: u32,
    lo: i64,
    hi: i64,
}

/// Loads the wanted chunks: one statement per 100 ranges, each range its own index search
/// (`UNION ALL`: SQLite plans an `OR` of such ranges as a scan of the run's rows).
async fn load(conn: &mut AnyConnection, run_id: i64, wanted: &[Wanted<'_>], into: &mut Levels) -> anyhow::Result<()> {
    for part in wanted.chunks(100) {
        let mut p = super::Placeholders::new(conn);
        let arms: Vec<String> = part
            .iter()
            .map(|_| {
                format!(
                    "SELECT key, level, data FROM metric_rollup WHERE run_id = {} AND key = {} AND level = {} \
                     AND chunk >= {} AND chunk <= {}",
                    p.one(),
                    p.one(),
                    p.one(),
                    p.one(),
                    p.one()
                )
            })
            .collect();
        let sql = arms.join(" UNION ALL ");
        let mut query = sqlx::query(&sql);
        for w in part {
            query = query
                .bind(run_id)
                .bind(w.key)
                .bind(w.level as i64)
                .bind(w.lo.div_euclid(CHUNK))
                .bind(w.hi.div_euclid(CHUNK));
        }
        for row in query.fetch_all(&mut *conn).await? {
            let key: String = row.try_get("key")?;
            let level = row.try_get::<i64, _>("level")? as u32;
            let data: Vec<u8> = row.try_get("data")?;
            downsample::decode(&data, into.level(&key, level)).context("a stored chart level is damaged")?;
        }
    }
    Ok(())
}

/// Writes the changed chunks back (a chunk left without buckets is deleted).
async fn save(conn: &mut AnyConnection, run_id: i64, levels: &Levels) -> anyhow::Result<()> {
    let mut rows: Vec<(&str, i64, i64, Vec<u8>)> = Vec::new();
    let empty = Buckets::new();
    for (key, dirty) in &levels.dirty {
        for &(level, chunk) in dirty {
            let buckets = levels.buckets.get(key).and_then(|l| l.get(&level)).unwrap_or(&empty);
            let part: Buckets =
                buckets.range(chunk * CHUNK..(chunk + 1).saturating_mul(CHUNK)).map(|(b, x)| (*b, *x)).collect();
            if part.is_empty() {
                sqlx::query("DELETE FROM metric_rollup WHERE run_id = $1 AND key = $2 AND level = $3 AND chunk = $4")
                    .bind(run_id)
                    .bind(key.as_str())
                    .bind(level as i64)
                    .bind(chunk)
                    .execute(&mut *conn)
                    .await?;
            } else {
                rows.push((key, level as i64, chunk, downsample::encode(&part)));
            }
        }
    }
    for batch in rows.chunks(200) {
        let sql = format!(
            "INSERT INTO metric_rollup (run_id, key, level, chunk, data) VALUES {} \
             ON CONFLICT (run_id, key, level, chunk) DO UPDATE SET data = excluded.data",
            super::values_rows(conn, batch.len(), 5)
        );
        let mut query = sqlx::query(&sql);
        for (key, level, chunk, data) in batch {
            query = query.bind(run_id).bind(*key).bind(*level).bind(*chunk).bind(data.as_slice());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Merges points that only add to their keys' histories (none replaces a stored point).
pub async fn add(conn: &mut AnyConnection, run_id: i64, by_key: &BTreeMap<String, Vec<Ranked>>) -> anyhow::Result<()> {
    let mut wanted = Vec::new();
    for (key, points) in by_key {
        let Some((lo, hi)) = step_range(points) else { continue };
        for level in 1..=TOP_LEVEL {
            let (a, b) = span(level, lo, hi);
            wanted.push(Wanted { key, level, lo: a, hi: b });
        }
    }
    let mut levels = Levels::default();
    load(conn, run_id, &wanted, &mut levels).await?;
    for (key, points) in by_key {
        for level in 1..=TOP_LEVEL {
            add_points(levels.level(key, level), width(level), points);
            // Only the chunks that got points change (sparse steps may skip whole chunks).
            let mut marked = None;
            for p in points {
                let chunk = p.p.step.div_euclid(width(level)).div_euclid(CHUNK);
                if marked != Some(chunk) {
                    levels.mark(key, level, chunk * CHUNK);
                    marked = Some(chunk);
                }
            }
        }
    }
    save(conn, run_id, &levels).await
}

/// Recomputes a key's buckets over steps `lo ..= hi` from the stored points, after points in
/// that range were replaced.
pub async fn rebuild(conn: &mut AnyConnection, run_id: i64, key: &str, lo: i64, hi: i64) -> anyhow::Result<()> {
    let mut levels = Levels::default();
    // Each level is needed where it is rebuilt and where the level above takes its children.
    let wanted: Vec<Wanted> = (1..=TOP_LEVEL)
        .map(|level| {
            let (a, b) = span(level, lo, hi);
            if level == TOP_LEVEL {
                Wanted { key, level, lo: a, hi: b }
            } else {
                let (pa, pb) = span(level + 1, lo, hi);
                Wanted { key, level, lo: pa.saturating_mul(4), hi: pb.saturating_mul(4).saturating_add(3) }
            }
        })
        .collect();
    load(conn, run_id, &wanted, &mut levels).await?;
    let (a, b) = span(1, lo, hi);
    let first = a.saturating_mul(width(1));
    let last = b.saturating_mul(width(1)).saturating_add(width(1) - 1);
    let mut fresh = Buckets::new();
    add_points(&mut fresh, width(1), &stored_points(conn, run_id, key, first, last).await?);
    levels.replace(key, 1, a, b, fresh);
    for level in 2..=TOP_LEVEL {
        let (a, b) = span(level, lo, hi);
        let mut fresh = Buckets::new();
        let below = levels.level(key, level - 1);
        for (&child, bucket) in below.range(a.saturating_mul(4)..=b.saturating_mul(4).saturating_add(3)) {
            fresh.entry(child.div_euclid(4)).and_modify(|x: &mut Bucket| x.merge(bucket)).or_insert(*bucket);
        }
        levels.replace(key, level, a, b, fresh);
    }
    save(conn, run_id, &levels).await
}

fn step_range(points: &[Ranked]) -> Option<(i64, i64)> {
    let lo = points.iter().map(|p| p.p.step).min()?;
    let hi = points.iter().map(|p| p.p.step).max()?;
    Some((lo, hi))
}

async fn stored_points(
    conn: &mut AnyConnection,
    run_id: i64,
    key: &str,
    lo: i64,
    hi: i64,
) -> anyhow::Result<Vec<Ranked>> {
    sqlx::query(
        "SELECT step, n, epoch, ts, value FROM metrics WHERE run_id = $1 AND key = $2 AND step >= $3 AND step <= $4",
    )
    .bind(run_id)
    .bind(key)
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let p = MetricPoint {
            step: r.try_get("step")?,
            epoch: r.try_get("epoch")?,
            ts: r.try_get("ts")?,
            value: r.try_get::<Option<f64>, _>("value")?.unwrap_or(f64::NAN),
        };
        Ok(Ranked::new(r.try_get("n")?, p))
    })
    .collect()
}

/// A history thinned for a chart: the points stored, and the thinned points, or `None` when
/// the whole history fits (read it as it is).
pub struct Thinned {
    pub total: u64,
    pub points: Option<Vec<MetricPoint>>,
}

/// Reads a key's history thinned to at most `max_points` (≥ 3) points from one level.
pub async fn read(pool: &AnyPool, run_id: i64, key: &str, max_points: usize) -> anyhow::Result<Thinned> {
    let mut all = read_many(pool, run_id, &[key], max_points).await?;
    Ok(all.pop().expect("one key asked, one answer"))
}

/// [`read`] for several keys of a run at once, in two statements whatever their number (a run
/// page asks for every key): the top levels of all keys, then the level each key's plan picks.
pub async fn read_many(pool: &AnyPool, run_id: i64, keys: &[&str], max_points: usize) -> anyhow::Result<Vec<Thinned>> {
    let mut conn = pool.acquire().await?;
    let mut top = Levels::default();
    let wanted: Vec<Wanted> =
        keys.iter().map(|&key| Wanted { key, level: TOP_LEVEL, lo: i64::MIN, hi: i64::MAX }).collect();
    load(&mut conn, run_id, &wanted, &mut top).await?;
    let mut plans = Vec::with_capacity(keys.len());
    let mut deeper = Vec::new();
    for &key in keys {
        let buckets = top.level(key, TOP_LEVEL);
        let total: u64 = buckets.values().map(|b| b.count).sum();
        let plan = match (buckets.values().next(), buckets.values().next_back()) {
            (Some(first), Some(last)) if total > max_points as u64 => {
                let (first, last) = (first.first, last.last.p.step);
                let plan = downsample::plan(first, last, max_points);
                if plan.level != TOP_LEVEL {
                    let (lo, hi) = span(plan.level, first, last);
                    deeper.push(Wanted { key, level: plan.level, lo, hi });
                }
                Some(plan)
            }
            _ => None,
        };
        plans.push((total, plan));
    }
    let mut levels = Levels::default();
    if !deeper.is_empty() {
        load(&mut conn, run_id, &deeper, &mut levels).await?;
    }
    let thinned = keys
        .iter()
        .zip(plans)
        .map(|(&key, (total, plan))| {
            let points = plan.map(|plan| {
                let from = if plan.level == TOP_LEVEL { &mut top } else { &mut levels };
                downsample::thin(from.level(key, plan.level), plan.group)
            });
            Thinned { total, points }
        })
        .collect();
    Ok(thinned)
}

/// Summarizes histories stored before the chart levels existed (once; a no-op afterwards).
pub async fn backfill(store: &super::Store) -> anyhow::Result<()> {
    let missing = sqlx::query(
        "SELECT l.run_id, l.key FROM metric_latest l WHERE NOT EXISTS (SELECT 1 FROM metric_rollup r \
         WHERE r.run_id = l.run_id AND r.key = l.key AND r.level = $1)",
    )
    .bind(TOP_LEVEL as i64)
    .fetch_all(&store.pool)
    .await?;
    for row in missing {
        let (run_id, key): (i64, String) = (row.try_get("run_id")?, row.try_get("key")?);
        let mut w = store.write().await?;
        let range = sqlx::query("SELECT MIN(step) AS lo, MAX(step) AS hi FROM metrics WHERE run_id = $1 AND key = $2")
            .bind(run_id)
            .bind(&key)
            .fetch_one(w.conn())
            .await?;
        if let (Some(lo), Some(hi)) = (range.try_get::<Option<i64>, _>("lo")?, range.try_get::<Option<i64>, _>("hi")?) {
            rebuild(w.conn(), run_id, &key, lo, hi).await?;
        }
        w.commit().await?;
    }
    Ok(())
}
