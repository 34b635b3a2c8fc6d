//! Thinning a metric history for plotting without hiding spikes.
//!
//! A history is cut into buckets of equal *step* width; each bucket keeps its minimum, its
//! maximum and its last point, so a one-step spike survives any amount of thinning. A bucket is
//! a summary that merges exactly (min of mins, max of maxes, last of lasts, counts add), which is
//! what lets the store keep precomputed levels of widths 4, 16, 64, … steps up to date as points
//! arrive and answer a chart from one level, whatever the history's length
//! (`store::rollup`). Values compare by `f64::total_cmp`, so NaN is above +inf: a NaN in a bucket
//! is its maximum and is never hidden.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::store::metrics::MetricPoint;

/// Bucket width of level `level` (1 ..= [`TOP_LEVEL`]): 4^level steps.
pub fn width(level: u32) -> i64 {
    4i64.pow(level)
}

/// The coarsest precomputed level (buckets of 65,536 steps).
pub const TOP_LEVEL: u32 = 8;

/// Buckets per stored chunk of a level.
pub const CHUNK: i64 = 32;

/// A point with its rank among the values logged at its step (MLflow keeps several per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub n: i64,
    pub p: MetricPoint,
}

impl Ranked {
    /// NaN is one value here whatever its bits (the database gives back only one NaN).
    pub fn new(n: i64, mut p: MetricPoint) -> Ranked {
        if p.value.is_nan() {
            p.value = f64::NAN;
        }
        Ranked { n, p }
    }

    fn order(&self) -> (i64, i64) {
        (self.p.step, self.n)
    }

    /// By value, then by position: ties go to the later point, so the choice does not depend
    /// on the order points were merged in.
    fn cmp_value(&self, other: &Ranked) -> Ordering {
        self.p.value.total_cmp(&other.p.value).then(self.order().cmp(&other.order()))
    }
}

/// The summary of the points in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub count: u64,
    /// The smallest step in the bucket (where a history starts).
    pub first: i64,
    pub min: Ranked,
    pub max: Ranked,
    pub last: Ranked,
}

impl Bucket {
    pub fn of(p: Ranked) -> Bucket {
        Bucket { count: 1, first: p.p.step, min: p, max: p, last: p }
    }

    pub fn merge(&mut self, o: &Bucket) {
        self.count += o.count;
        self.first = self.first.min(o.first);
        if o.min.cmp_value(&self.min) == Ordering::Less {
            self.min = o.min;
        }
        if o.max.cmp_value(&self.max) == Ordering::Greater {
            self.max = o.max;
        }
        if o.last.order() > self.last.order() {
            self.last = o.last;
        }
    }

    /// The kept points in step order, each once.
    pub fn points(&self) -> impl Iterator<Item = MetricPoint> {
        let mut keep = [self.min, self.max, self.last];
        keep.sort_by_key(Ranked::order);
        let mut out = Vec::with_capacity(3);
        for (i, r) in keep.iter().enumerate() {
            if i == 0 || keep[i - 1].order() != r.order() {
                out.push(r.p);
            }
        }
        out.into_iter()
    }
}

/// Buckets by index at one width.
pub type Buckets = BTreeMap<i64, Bucket>;

/// Adds points to the buckets of width `w`.
pub fn add_points(buckets: &mut Buckets, w: i64, points: &[Ranked]) {
    for p in points {
        let b = Bucket::of(*p);
        buckets.entry(p.p.step.div_euclid(w)).and_modify(|x| x.merge(&b)).or_insert(b);
    }
}

/// How a history that is too long for `max_points` is read: from `level`, `group` buckets at a
/// time (aligned on multiples of `group`, so the answer is stable as a run grows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub level: u32,
    pub group: i64,
}

impl Plan {
    /// The width of the buckets the chart gets.
    pub fn width(&self) -> i64 {
        width(self.level).saturating_mul(self.group)
    }
}

/// The plan for a history spanning steps `first ..= last` to fit `max_points` (≥ 3): the finest
/// precomputed level whose buckets, grouped, give at most `max_points / 3` buckets.
pub fn plan(first: i64, last: i64, max_points: usize) -> Plan {
    let buckets = (max_points / 3).max(1) as i64;
    if buckets == 1 {
        // One bucket for everything (`thin` reads group i64::MAX as "all").
        return Plan { level: TOP_LEVEL, group: i64::MAX };
    }
    let span = last.saturating_sub(first).max(0).saturating_add(1);
    // One bucket more than span / width may straddle the alignment, hence buckets - 1.
    let needed = ceil_div(span, buckets - 1);
    let level = (1..=TOP_LEVEL).rev().find(|&l| width(l) <= needed).unwrap_or(1);
    let group = ceil_div(needed, width(level)).max(1);
    Plan { level, group }
}

/// `a / b` rounded up, for positive `a` and `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The chart points from one level's buckets grouped by the plan.
pub fn thin(buckets: &Buckets, group: i64) -> Vec<MetricPoint> {
    let mut grouped: Vec<Bucket> = Vec::new();
    let mut current: Option<i64> = None;
    for (&b, bucket) in buckets {
        let g = if group == i64::MAX { 0 } else { b.div_euclid(group) };
        match (current == Some(g), grouped.last_mut()) {
            (true, Some(last)) => last.merge(bucket),
            _ => {
                grouped.push(*bucket);
                current = Some(g);
            }
        }
    }
    grouped.iter().flat_map(Bucket::points).collect()
}

/// One stored chunk: the buckets it holds, as bytes (little-endian, fixed-size records).
pub fn encode(buckets: &Buckets) -> Vec<u8> {
    let mut out = Vec::with_capacity(buckets.len() * RECORD);
    for (&b, bucket) in buckets {
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&bucket.count.to_le_bytes());
        out.extend_from_slice(&bucket.first.to_le_bytes());
        for r in [bucket.min, bucket.max, bucket.last] {
            out.extend_from_slice(&r.p.step.to_le_bytes());
            out.extend_from_slice(&r.n.to_le_bytes());
            out.extend_from_slice(&r.p.ts.to_le_bytes());
            out.extend_from_slice(&r.p.value.to_le_bytes());
            out.extend_from_slice(&r.p.epoch.unwrap_or(f64::NAN).to_le_bytes());
            out.push(r.p.epoch.is_some() as u8);
        }
    }
    out
}

const POINT: usize = 8 * 5 + 1;
const RECORD: usize = 24 + 3 * POINT;

/// The buckets of a chunk; `None` when the bytes are not a whole number of records.
pub fn decode(bytes: &[u8], into: &mut Buckets) -> Option<()> {
    if !bytes.len().is_multiple_of(RECORD) {
        return None;
    }
    let f = |s: &[u8], at: usize| f64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    let i = |s: &[u8], at: usize| i64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    for rec in bytes.chunks_exact(RECORD) {
        let point = |k: usize| {
            let s = &rec[24 + k * POINT..24 + (k + 1) * POINT];
            let epoch = (s[40] == 1).then(|| f(s, 32));
            Ranked::new(i(s, 8), MetricPoint { step: i(s, 0), epoch, ts: f(s, 16), value: f(s, 24) })
        };
        let bucket =
            Bucket { count: i(rec, 8) as u64, first: i(rec, 16), min: point(0), max: point(1), last: point(2) };
        into.insert(i(rec, 0), bucket);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(step: i64, n: i64, value: f64) -> Ranked {
        Ranked::new(
            n,
            MetricPoint { step, epoch: (step % 2 == 0).then_some(step as f64 / 10.0), ts: step as f64, value },
        )
    }

    fn buckets(points: &[Ranked], w: i64) -> Buckets {
        let mut b = Buckets::new();
        add_points(&mut b, w, points);
        b
    }

    #[test]
    fn spikes_and_the_last_point_survive() {
        let mut points: Vec<Ranked> = (0..10_000).map(|i| ranked(i, 0, 1.0 - i as f64 * 1e-5)).collect();
        points[4321].p.value = 50.0;
        points[777].p.value = -3.0;
        let plan = plan(0, 9_999, 30);
        let d = thin(&buckets(&points, width(plan.level)), plan.group);
        assert!(d.len() <= 30, "{} points", d.len());
        assert!(d.iter().any(|p| p.step == 4321 && p.value == 50.0));
        assert!(d.iter().any(|p| p.step == 777 && p.value == -3.0));
        assert_eq!(d.last().unwrap().step, 9_999);
        assert!(d.windows(2).all(|w| w[0].step < w[1].step), "ordered by step, no duplicates");
    }

    #[test]
    fn merging_is_independent_of_order_and_keeps_nan_as_the_maximum() {
        let points = [
            ranked(5, 0, 2.0),
            ranked(6, 0, f64::NAN),
            ranked(6, 1, -f64::INFINITY),
            ranked(7, 0, 2.0),
            ranked(4, 0, 9.0),
        ];
        let forward = buckets(&points, 16);
        let mut reversed = points;
        reversed.reverse();
        // NaN is unequal to itself: compare the printed form.
        assert_eq!(format!("{forward:?}"), format!("{:?}", buckets(&reversed, 16)));
        let b = forward[&0];
        assert!(b.max.p.value.is_nan());
        assert_eq!(b.min.p.value, -f64::INFINITY);
        assert_eq!((b.last.p.step, b.count), (7, 5));
    }

    #[test]
    fn plans_fit_the_points_asked_for() {
        for (first, last, max) in
            [(0, 19_999, 1000), (0, 19_999, 2000), (-50, 10, 3), (0, 1 << 40, 300), (7, 7_000_007, 99)]
        {
            let plan = plan(first, last, max);
            let w = plan.width();
            let groups = if plan.group == i64::MAX { 1 } else { last.div_euclid(w) - first.div_euclid(w) + 1 };
            assert!(groups * 3 <= max as i64, "{first}..{last} in {max}: {plan:?} gives {groups} groups");
            // Not needlessly coarse: at least half the buckets asked for, when the steps allow.
            if last - first + 1 >= max as i64 {
                assert!(groups >= (max as i64 / 3 - 1) / 2, "{first}..{last} in {max}: only {groups} groups");
            }
        }
    }

    #[test]
    fn chunks_round_trip() {
        let points = [ranked(3, 0, 1.5), ranked(3, 1, f64::INFINITY), ranked(40, 0, f64::NAN), ranked(-9, 2, -0.25)];
        let b = buckets(&points, 4);
        let mut back = Buckets::new();
        decode(&encode(&b), &mut back).unwrap();
        assert_eq!(format!("{b:?}"), format!("{back:?}"), "NaN compares unequal, so compare the printed form");
        assert!(decode(&[0; 7], &mut back).is_none());
    }
}
