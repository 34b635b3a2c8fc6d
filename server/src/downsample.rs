//! Thinning a metric history for plotting without hiding spikes.

use crate::store::metrics::MetricPoint;

/// At most `max_points` points of `points` (ordered by step): the history is cut into
/// `max_points / 3` equal buckets and each bucket keeps its minimum, maximum and last point,
/// so a one-step spike survives any amount of thinning. `max_points` must be at least 3.
pub fn downsample(points: &[MetricPoint], max_points: usize) -> Vec<MetricPoint> {
    if points.len() <= max_points {
        return points.to_vec();
    }
    let buckets = (max_points / 3).max(1);
    let n = points.len();
    let mut out = Vec::with_capacity(buckets * 3);
    for b in 0..buckets {
        let bucket = &points[b * n / buckets..(b + 1) * n / buckets];
        if bucket.is_empty() {
            continue;
        }
        let by_value = |a: &(usize, &MetricPoint), b: &(usize, &MetricPoint)| a.1.value.total_cmp(&b.1.value);
        let min = bucket.iter().enumerate().min_by(by_value).map(|(i, _)| i).unwrap_or(0);
        let max = bucket.iter().enumerate().max_by(by_value).map(|(i, _)| i).unwrap_or(0);
        let mut keep = [min, max, bucket.len() - 1];
        keep.sort_unstable();
        let mut prev = None;
        for i in keep {
            if prev != Some(i) {
                out.push(bucket[i]);
                prev = Some(i);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<MetricPoint> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| MetricPoint { step: i as i64, epoch: None, ts: 0.0, value: v })
            .collect()
    }

    #[test]
    fn short_histories_are_returned_whole() {
        let s = series(&[1.0, 2.0, 3.0]);
        assert_eq!(downsample(&s, 3), s);
    }

    #[test]
    fn spikes_and_the_last_point_survive() {
        let mut values: Vec<f64> = (0..10_000).map(|i| 1.0 - i as f64 * 1e-5).collect();
        values[4321] = 50.0;
        values[777] = -3.0;
        let s = series(&values);
        let d = downsample(&s, 30);
        assert!(d.len() <= 30, "{} points", d.len());
        assert!(d.iter().any(|p| p.step == 4321 && p.value == 50.0));
        assert!(d.iter().any(|p| p.step == 777 && p.value == -3.0));
        assert_eq!(d.last().unwrap().step, 9999);
        assert!(d.windows(2).all(|w| w[0].step < w[1].step), "ordered by step, no duplicates");
    }
}
