//! Event latency, trainer write → SSE client, for the local backend: a real training run, an
//! SSE client following it, and the trainer's own timestamps from its event log. Prints p50/p95
//! (the note and docs/api.md quote them); asserts only that every metrics event arrived once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{event_log, train_config, TestEnv};
use crt_trainer::events::{unix_now, Event};

#[tokio::test]
async fn trainer_write_to_sse_latency() {
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("latency").await;
    let run = server.create_run(exp, &[], train_config(3, 6000)).await;
    let mut sse = common::SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), None).await;
    let mut received: BTreeMap<u64, f64> = BTreeMap::new();
    loop {
        let Some(ev) = sse.next(Duration::from_secs(120)).await else { panic!("the stream went quiet") };
        let now = unix_now();
        if ev.event == "metrics" {
            let step = ev.data["step"].as_u64().unwrap();
            // The first delivery counts (a resumed run would repeat steps; this one does not).
            received.entry(step).or_insert(now);
        }
        if ev.event == "status" && ["finished", "failed", "crashed"].contains(&ev.data["status"].as_str().unwrap_or(""))
        {
            break;
        }
    }
    assert_eq!(server.run(run).await["status"], "finished");
    let r = server.run(run).await;
    let log = event_log(std::path::Path::new(r["out_dir"].as_str().unwrap()));
    // Per step, the first metrics line the trainer wrote (evaluation metrics share a step).
    let mut logged: BTreeMap<u64, f64> = BTreeMap::new();
    for line in &log {
        if let Event::Metrics { step, .. } = &line.event {
            logged.entry(*step).or_insert(line.ts);
        }
    }
    assert_eq!(logged.keys().collect::<Vec<_>>(), received.keys().collect::<Vec<_>>(), "every step reached the client");
    let mut latencies: Vec<f64> = logged.iter().map(|(step, ts)| received[step] - ts).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] * 1000.0;
    println!(
        "event latency trainer -> SSE (local backend, {} metrics events): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        latencies.len(),
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
}
