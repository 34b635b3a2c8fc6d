//! The Slurm backend end to end: the real server, the real trainer and a real (single-node)
//! Slurm, driven over HTTP. Needs `eval "$(scripts/ci-slurm.sh)"` (it sets `CRT_TEST_SLURM=1`
//! and `SLURM_CONF`); without it every test says it is skipped and passes.
//!
//! libtest runs tests in name order: the time-limit test (which waits out Slurm's 1-minute
//! minimum limit) sits in a module named to sort first, so its wait overlaps the others.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{train_config, Server, SseClient, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(600);

fn have_slurm() -> bool {
    if std::env::var("CRT_TEST_SLURM").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: no Slurm (run scripts/ci-slurm.sh)");
    false
}

/// Creates a run on the Slurm backend (`slurm`: its resources, or none).
async fn create_slurm_run(server: &Server, exp: i64, parents: &[i64], config: Value, slurm: Option<Value>) -> i64 {
    let mut body = json!({ "experiment_id": exp, "parents": parents, "config": config, "backend": "slurm" });
    if let Some(s) = slurm {
        body["slurm"] = s;
    }
    let (st, created) = server.post("/api/v1/runs", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert_eq!(created["backend"], "slurm", "{created}");
    created["id"].as_i64().unwrap()
}

async fn artifacts(server: &Server, run: i64) -> Vec<Value> {
    let (st, body) = server.get(&format!("/api/v1/runs/{run}/artifacts")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body.as_array().cloned().unwrap_or_default()
}

async fn has_checkpoint(server: &Server, run: i64) -> bool {
    artifacts(server, run).await.iter().any(|a| a["kind"] == "checkpoint")
}

fn job_id(run: &Value) -> String {
    assert_eq!(run["handle"]["backend"], "slurm", "{run}");
    let id = run["handle"]["job_id"].as_str().unwrap_or_else(|| panic!("no job id: {run}")).to_string();
    assert!(!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()), "job id {id:?}");
    id
}

/// Running on a node, with metrics recorded (the trainer is between steps, so a stop is seen).
async fn wait_running_with_metrics(server: &Server, run: i64) -> Value {
    server
        .wait_run(run, LONG, "running with metrics", |r| {
            r["status"] == "running" && r["metrics"].as_object().is_some_and(|m| !m.is_empty())
        })
        .await
}

async fn stop(server: &Server, run: i64) {
    let (st, resp) = server.post(&format!("/api/v1/runs/{run}/stop"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{resp}");
}

fn error_of(run: &Value) -> String {
    run["error"].as_str().unwrap_or_default().to_string()
}

mod a_starts_first {
    use super::*;

    /// Slurm's time-limit warning (`--signal=B:USR1@30`, from the harness's 20 s stop grace)
    /// stops the run at a checkpoint; it resumes as a new attempt.
    #[tokio::test]
    async fn time_limit_stops_and_resumes() {
        if !have_slurm() {
            return;
        }
        let env = TestEnv::new();
        let server = env.server();
        let exp = server.create_experiment("slurm time limit").await;
        let run =
            create_slurm_run(&server, exp, &[], train_config(200, 2000), Some(json!({ "time_limit_min": 1 }))).await;
        // Slurm sends the warning signal up to a minute early (its event resolution), so with a
        // one-minute limit the attempt can be warned and stopped at once: wait for it to have
        // started, not for a "running" state the poll might never see.
        let started = |r: &Value| r["status"] != "queued" && r["handle"]["attempt_dir"].is_string();
        let r = server.wait_run(run, LONG, "attempt 1 started", started).await;
        let script =
            std::fs::read_to_string(Path::new(r["handle"]["attempt_dir"].as_str().unwrap()).join("job.sbatch"))
                .unwrap();
        assert!(script.contains("#SBATCH --time=1\n"), "{script}");
        assert!(script.contains("#SBATCH --signal=B:USR1@30\n"), "{script}");

        let r = server.wait_run(run, Duration::from_secs(180), "the end of the time-limited attempt", |r| {
            !matches!(r["status"].as_str(), Some("queued" | "running"))
        });
        let r = r.await;
        println!("time-limited attempt ended after {:.1} s running", r["wall_time_s"].as_f64().unwrap_or(-1.0));
        assert_eq!(r["status"], "stopped", "{r:#}\nserver log:\n{}", server.log());
        assert!(error_of(&r).contains("time limit"), "{r:#}");
        assert_eq!(r["resumable"], true);
        assert_eq!(r["attempt"], 1);
        assert!(has_checkpoint(&server, run).await, "the trainer wrote a checkpoint when warned");
        let exit: Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(r["handle"]["attempt_dir"].as_str().unwrap()).join("exit.json"))
                .unwrap(),
        )
        .unwrap();
        assert!(exit["signals_received"].as_array().unwrap().iter().any(|s| s == "USR1"), "{exit}");

        let (st, resp) = server.post(&format!("/api/v1/runs/{run}/resume"), &json!({})).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{resp}");
        assert_eq!(resp["config"]["resume"], true);
        let r = server.wait_run(run, LONG, "attempt 2 started", |r| started(r) && r["attempt"] == 2).await;
        assert!(r["handle"]["attempt_dir"].as_str().unwrap().ends_with("attempts/2"), "{r:#}");
        // Attempt 2 has the same one-minute limit, so it may already have been warned and stopped.
        if r["status"] == "running" {
            let (st, resp) = server.post(&format!("/api/v1/runs/{run}/stop"), &json!({})).await;
            // 409: the time limit stopped it between the poll and this request.
            assert!(st == StatusCode::ACCEPTED || st == StatusCode::CONFLICT, "{resp}");
        }
        let r = server.wait_status(run, "stopped", Duration::from_secs(90)).await;
        assert_eq!(r["attempt"], 2);
    }
}

/// A train job, then a certify job on its model, watched live over SSE.
#[tokio::test]
async fn train_and_certify_as_jobs_with_live_events() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let server = env.server_with(&["--backend", "slurm"]);
    let exp = server.create_experiment("slurm flow").await;
    // Batches of 32: a few train metrics (every 20 steps) while it runs, besides the evaluation.
    let mut config = train_config(2, 2000);
    config["optim"]["batch_size"] = json!(32);
    let created = Instant::now();
    let run = server.create_run(exp, &[], config).await;
    let mut sse = SseClient::connect(&server, &format!("/api/v1/runs/{run}/events"), None).await;
    let (mut running, mut metrics_while_running, mut latency, mut last_status) = (false, 0, None, Value::Null);
    while let Some(ev) = sse.next(LONG).await {
        if ev.event == "status" {
            running = ev.data["status"] == "running";
            if running && latency.is_none() {
                latency = Some(created.elapsed());
            }
            if !running && ev.data["status"] != "queued" {
                last_status = ev.data;
                break;
            }
        }
        if ev.event == "metrics" && running {
            metrics_while_running += 1;
        }
    }
    assert_eq!(last_status["status"], "finished", "{last_status}; server log:\n{}", server.log());
    let latency = latency.expect("a running status event");
    println!("sbatch -> running (create to status running): {:.2} s", latency.as_secs_f64());
    assert!(metrics_while_running >= 1, "metric events while running: {metrics_while_running}");

    let r = server.run(run).await;
    assert_eq!(r["backend"], "slurm");
    job_id(&r);
    assert!(r["backend_state"]["node"].as_str().is_some_and(|n| !n.is_empty()), "{r:#}");
    assert_eq!(r["exit_code"], 0);
    let dir = Path::new(r["handle"]["attempt_dir"].as_str().unwrap());
    assert!(dir.join("job.sbatch").is_file());
    let arts = artifacts(&server, run).await;
    assert!(arts.iter().any(|a| a["path"] == "attempts/1/job.sbatch"), "{arts:#?}");

    let config = json!({"kind": "certify", "smoothing": {"n0": 50, "n": 500, "max": 10, "skip": 100, "batch": 250}});
    let cert = server.create_run(exp, &[run], config).await;
    let mut sse = SseClient::connect(&server, &format!("/api/v1/runs/{cert}/events"), None).await;
    let (mut certificates, mut ran, mut last_status) = (0, false, Value::Null);
    while let Some(ev) = sse.next(LONG).await {
        if ev.event == "certificate" {
            certificates += 1;
        }
        ran |= ev.event == "status" && ev.data["status"] == "running";
        if ev.event == "status" && !matches!(ev.data["status"].as_str(), Some("queued" | "running")) {
            last_status = ev.data;
            break;
        }
    }
    assert_eq!(last_status["status"], "finished", "{last_status}; server log:\n{}", server.log());
    assert_eq!(certificates, 10, "one certificate event per image");
    assert!(ran, "a short job still shows as running before it ends");
    let r = server.run(cert).await;
    assert_eq!(r["backend"], "slurm");
    assert_ne!(job_id(&r), job_id(&server.run(run).await), "its own job");
    assert!(r["backend_state"]["node"].as_str().is_some_and(|n| !n.is_empty()), "{r:#}");
    let (st, certs) = server.get(&format!("/api/v1/runs/{cert}/certificates")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(certs.as_array().unwrap().len(), 10);
}

/// A stop through the API reaches the job's supervisor; resume finishes in attempt 2.
#[tokio::test]
async fn stop_and_resume_on_slurm() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("slurm stop").await;
    // Long enough that the stop always comes before the end, even on a fast machine.
    let mut config = train_config(20, 1000);
    config["optim"]["batch_size"] = json!(32);
    let run = create_slurm_run(&server, exp, &[], config, None).await;
    wait_running_with_metrics(&server, run).await;
    stop(&server, run).await;
    let r = server.wait_status(run, "stopped", Duration::from_secs(90)).await;
    assert_eq!(r["resumable"], true);
    assert_eq!(r["exit_code"], 0, "the trainer stopped cleanly: {r:#}");
    assert!(has_checkpoint(&server, run).await, "stop writes a checkpoint");

    let (st, resp) = server.post(&format!("/api/v1/runs/{run}/resume"), &json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{resp}");
    let r = server.wait_status(run, "finished", LONG).await;
    assert_eq!(r["attempt"], 2);
    assert!(r["handle"]["attempt_dir"].as_str().unwrap().ends_with("attempts/2"), "{r:#}");
    let logs = server.get(&format!("/api/v1/runs/{run}/logs?limit=10000")).await.1;
    assert!(
        logs["lines"].as_array().unwrap().iter().any(|l| l["line"].as_str().unwrap().contains("resumed from step")),
        "the trainer continued from its checkpoint"
    );
}

/// `scancel` from outside CRT Lab: the run crashed (resumable), and says why.
#[tokio::test]
async fn outside_scancel_crashes() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("slurm scancel").await;
    let run = create_slurm_run(&server, exp, &[], train_config(50, 2000), None).await;
    let r = wait_running_with_metrics(&server, run).await;
    let job = job_id(&r);
    let st = std::process::Command::new("scancel").arg(&job).status().expect("running scancel");
    assert!(st.success());
    let r = server.wait_run(run, Duration::from_secs(90), "the end", |r| r["status"] != "running").await;
    assert_eq!(r["status"], "crashed", "{r:#}");
    let err = error_of(&r);
    assert!(err.contains("outside CRT Lab") && err.contains("scancel"), "{err}");
    assert_eq!(r["resumable"], true);
}

/// The trainer exits 3 after a few lines on stderr: failed, with the code and those lines.
#[tokio::test]
async fn nonzero_exit_fails_with_last_lines() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    // The real supervisor, supervising a "trainer" that fails.
    let script = env.dir.path().join("failing-trainer.sh");
    let real = common::trainer_bin();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = supervise ]; then exec '{}' \"$@\"; fi\n\
             echo 'loading things' >&2\necho 'boom line' >&2\nexit 3\n",
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.display().to_string();
    let server = env.server_with(&["--trainer-bin", &script, "--backend", "slurm"]);
    let exp = server.create_experiment("slurm fail").await;
    let run = server.create_run(exp, &[], train_config(1, 256)).await;
    let r =
        server.wait_run(run, LONG, "the end", |r| !matches!(r["status"].as_str(), Some("queued" | "running"))).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["exit_code"], 3, "{r:#}");
    let err = error_of(&r);
    assert!(err.contains("status 3") && err.contains("boom line") && err.contains("loading things"), "{err}");
    assert_eq!(r["resumable"], false);
    job_id(&r);
}

/// A job Slurm cannot start yet leaves the run queued with Slurm's reason; a stop cancels it.
#[tokio::test]
async fn pending_job_is_queued_and_stops() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("slurm pending").await;
    let slurm = json!({ "extra_args": ["--begin=now+3600"] });
    let run = create_slurm_run(&server, exp, &[], train_config(1, 256), Some(slurm)).await;
    let r =
        server.wait_run(run, Duration::from_secs(60), "PENDING", |r| r["backend_state"]["state"] == "PENDING").await;
    assert_eq!(r["status"], "queued", "{r:#}");
    assert!(r["backend_state"]["reason"].as_str().is_some_and(|s| !s.is_empty()), "{r:#}");
    let job = job_id(&r);
    // This test's jobs by their working directory (job names repeat across tests: run ids are
    // per database, and finished jobs stay listed for MinJobAge).
    let out = std::process::Command::new("squeue").args(["-h", "-t", "all", "-o", "%i %Z"]).output().unwrap();
    let jobs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, wd)| Path::new(wd.trim()).starts_with(env.dir.path()))
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(jobs, vec![job.clone()], "one job for the queued run, not one per scheduling pass");
    // Still pending a few polls later (not a sleep-as-assertion: it must not have started).
    let seen = Instant::now();
    while seen.elapsed() < Duration::from_secs(3) {
        let r = server.run(run).await;
        assert_eq!(r["status"], "queued", "{r:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let asked = Instant::now();
    stop(&server, run).await;
    let r = server.wait_status(run, "stopped", Duration::from_secs(60)).await;
    println!("pending job stopped in {:.2} s", asked.elapsed().as_secs_f64());
    assert!(asked.elapsed() < Duration::from_secs(30), "a pending job is cancelled, not waited out");
    let dir = Path::new(r["handle"]["attempt_dir"].as_str().unwrap());
    assert!(!dir.join("exit.json").exists(), "it never ran");
    let out = std::process::Command::new("squeue").args(["-h", "-t", "all", "-o", "%i %T"]).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let state = out.lines().find_map(|l| l.strip_prefix(&format!("{job} "))).unwrap_or("(purged)");
    assert!(matches!(state, "CANCELLED" | "(purged)"), "job {job}: {state}");
}

/// sbatch refuses the job (no such partition): the run fails with sbatch's words.
#[tokio::test]
async fn rejected_submission_fails_the_run() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let server = env.server();
    let exp = server.create_experiment("slurm rejected").await;
    let slurm = json!({ "partition": "no-such-partition" });
    let run = create_slurm_run(&server, exp, &[], train_config(1, 256), Some(slurm)).await;
    let r = server.wait_run(run, Duration::from_secs(60), "the end", |r| r["status"] != "queued").await;
    assert_eq!(r["status"], "failed", "{r:#}");
    let err = error_of(&r);
    assert!(err.contains("sbatch") && err.contains("partition"), "{err}");
}

/// The server is SIGKILLed while a Slurm job runs and restarted: the job goes on, the server
/// catches up, and what it stored equals the trainer's event log.
#[tokio::test]
async fn server_killed_while_a_job_runs_loses_nothing() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let mut server = env.server();
    let exp = server.create_experiment("slurm restart").await;
    let run = create_slurm_run(&server, exp, &[], train_config(6, 2000), None).await;
    let r = wait_running_with_metrics(&server, run).await;
    let job = job_id(&r);
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = env.server();
    let r = server.run(run).await;
    assert!(["running", "finished"].contains(&r["status"].as_str().unwrap()), "re-attached: {r:#}");
    assert_eq!(job_id(&r), job, "the same job");
    let r = server.wait_status(run, "finished", Duration::from_secs(600)).await;
    assert_eq!(r["attempt"], 1);
    common::assert_stored_equals_log(&server, run).await;
}

/// With Slurm as the backend the compute card lists the partition's nodes (`sinfo`); without it,
/// there is no Slurm section.
#[tokio::test]
async fn devices_list_the_slurm_nodes() {
    if !have_slurm() {
        return;
    }
    let env = TestEnv::new();
    let server = env.server_with(&["--backend", "slurm", "--slurm-partition", "debug"]);
    let (st, d) = server.get("/api/v1/devices").await;
    assert_eq!(st, StatusCode::OK);
    let host = String::from_utf8(std::process::Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
    let nodes = d["slurm"]["nodes"].as_array().unwrap_or_else(|| panic!("{d:#}"));
    assert_eq!(d["slurm"]["partition"], "debug");
    assert!(nodes.iter().any(|n| n["name"] == host.trim() && n["cpus"] == 8), "{d:#}");
    let local = env.server();
    assert_eq!(local.get("/api/v1/devices").await.1["slurm"], Value::Null);
}
