//! The Slurm adapter (`crt_server::launch::slurm`) against a real single-node Slurm, as started
//! by `scripts/ci-slurm.sh` (which exports `SLURM_CONF` and `CRT_TEST_SLURM=1`). Without
//! `CRT_TEST_SLURM=1` each test says it is skipped and passes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crt_server::launch::slurm::{self, JobInfo, JobSpec, SlurmResources};

const DEADLINE: Duration = Duration::from_secs(60);

fn have_slurm(test: &str) -> bool {
    if std::env::var("CRT_TEST_SLURM").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("{test}: skipped: no Slurm (run scripts/ci-slurm.sh)");
    false
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Writes the batch script for `command` into `dir` and submits it.
async fn submit_in(
    dir: &Path,
    name: &str,
    command: &[String],
    resources: &SlurmResources,
    env: &[(String, String)],
) -> String {
    let output = dir.join("slurm.out");
    let spec =
        JobSpec { job_name: name, workdir: dir, output: &output, command, resources, signal_grace_secs: 30, env };
    let script = dir.join("job.sbatch");
    std::fs::write(&script, slurm::batch_script(&spec)).unwrap();
    let id = slurm::submit(&script).await.unwrap_or_else(|e| panic!("submit: {e:#}"));
    assert!(!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()), "job id {id:?}");
    id
}

async fn poll_one(id: &str) -> Option<JobInfo> {
    slurm::poll(&[id.to_string()]).await.unwrap_or_else(|e| panic!("poll: {e:#}")).remove(id)
}

/// Polls until `pred` holds for the job (or the file condition); panics with what was seen.
async fn wait_for(id: &str, dir: &Path, what: &str, pred: impl Fn(Option<&JobInfo>) -> bool) -> Option<JobInfo> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let info = poll_one(id).await;
        if pred(info.as_ref()) {
            return info;
        }
        if seen.last() != Some(&info) {
            seen.push(info);
        }
        if Instant::now() > deadline {
            panic!(
                "job {id}: timed out waiting for {what}; states seen: {seen:?}\nslurm.out:\n{}",
                std::fs::read_to_string(dir.join("slurm.out")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_file(id: &str, dir: &Path, file: &Path) {
    wait_for(id, dir, &format!("{} to appear", file.display()), |_| file.exists()).await;
}

#[tokio::test]
async fn submitted_job_runs_and_writes_its_file() {
    if !have_slurm("submitted_job_runs_and_writes_its_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tricky = "it's a \"b c\" $HOME".to_string();
    let command = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"printf '%s|%s|%s' "$1" "$CRT_NOTE" "$SLURM_JOB_ID" > "out file.txt""#.to_string(),
        "sh".to_string(),
        tricky.clone(),
    ];
    // Every resource line, as the real sbatch must accept it.
    let resources = SlurmResources {
        partition: Some("debug".into()),
        cpus: Some(2),
        mem_mb: Some(64),
        time_limit_min: Some(5),
        gpus: Some(0),
        extra_args: strings(&["--comment=crt test job", "--no-requeue"]),
    };
    resources.validate().unwrap();
    let env = vec![("CRT_NOTE".to_string(), "x 'y'".to_string())];
    let id = submit_in(dir.path(), "crt-test-write", &command, &resources, &env).await;

    let known = ["PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "COMPLETED"];
    let first = wait_for(&id, dir.path(), "the job to be listed", |i| i.is_some()).await.unwrap();
    assert!(known.contains(&first.state.as_str()), "first state {first:?}");
    let out = dir.path().join("out file.txt");
    wait_file(&id, dir.path(), &out).await;
    let done = wait_for(&id, dir.path(), "COMPLETED", |i| i.is_some_and(|i| i.state == "COMPLETED")).await.unwrap();
    assert!(done.node.is_some(), "{done:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{tricky}|x 'y'|{id}"));
    assert!(dir.path().join("slurm.out").exists(), "Slurm's output file");
}

#[tokio::test]
async fn signal_reaches_the_command() {
    if !have_slurm("signal_reaches_the_command") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let command = strings(&[
        "/bin/bash",
        "-c",
        "trap 'echo got-term > term.marker; exit 0' TERM; echo up > ready.marker; while :; do sleep 0.1; done",
    ]);
    let id = submit_in(dir.path(), "crt-test-signal", &command, &SlurmResources::default(), &[]).await;
    wait_file(&id, dir.path(), &dir.path().join("ready.marker")).await;
    slurm::signal(&id, "TERM").await.unwrap_or_else(|e| panic!("signal: {e:#}"));
    let marker = dir.path().join("term.marker");
    wait_file(&id, dir.path(), &marker).await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "got-term");
    // The trap exits 0: the job ends COMPLETED, not CANCELLED.
    let end = wait_for(&id, dir.path(), "the job to end", |i| {
        i.is_some_and(|i| !matches!(i.state.as_str(), "PENDING" | "RUNNING" | "COMPLETING"))
    })
    .await
    .unwrap();
    assert_eq!(end.state, "COMPLETED", "{end:?}");
}

#[tokio::test]
async fn cancel_ends_the_job_cancelled() {
    if !have_slurm("cancel_ends_the_job_cancelled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let command = strings(&["/bin/sh", "-c", "echo up > ready.marker; exec sleep 300"]);
    let id = submit_in(dir.path(), "crt-test-cancel", &command, &SlurmResources::default(), &[]).await;
    wait_file(&id, dir.path(), &dir.path().join("ready.marker")).await;
    slurm::cancel(&id).await.unwrap_or_else(|e| panic!("cancel: {e:#}"));
    wait_for(&id, dir.path(), "CANCELLED", |i| i.is_some_and(|i| i.state == "CANCELLED")).await;
}

#[tokio::test]
async fn poll_skips_unknown_jobs() {
    if !have_slurm("poll_skips_unknown_jobs") {
        return;
    }
    let got = slurm::poll(&strings(&["999999999", "4000000000", "not-a-job"])).await.unwrap();
    assert_eq!(got, HashMap::new());
    assert_eq!(slurm::poll(&[]).await.unwrap(), HashMap::new());

    // A known job beside unknown ones: only it is listed.
    let dir = tempfile::tempdir().unwrap();
    let id = submit_in(dir.path(), "crt-test-poll", &strings(&["true"]), &SlurmResources::default(), &[]).await;
    let ids = vec![id.clone(), "999999999".to_string()];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = slurm::poll(&ids).await.unwrap();
        assert!(!got.contains_key("999999999"));
        if let Some(info) = got.get(&id) {
            assert_eq!(got.len(), 1);
            // Keep the workdir until the job is done with it.
            if info.state == "COMPLETED" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "job {id} not listed COMPLETED: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn nodes_lists_this_host() {
    if !have_slurm("nodes_lists_this_host") {
        return;
    }
    let out = std::process::Command::new("hostname").arg("-s").output().unwrap();
    let host = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let nodes = slurm::nodes(Some("debug")).await.unwrap_or_else(|e| panic!("nodes: {e:#}"));
    let node = nodes.iter().find(|n| n.name == host).unwrap_or_else(|| panic!("{host} not in {nodes:?}"));
    assert_eq!(node.cpus, 8, "{node:?}");
    assert_eq!(node.partition, "debug");
    assert!(!node.state.is_empty());
    let all = slurm::nodes(None).await.unwrap();
    assert!(all.iter().any(|n| n.name == host), "{all:?}");
    assert!(slurm::nodes(Some("no-such-partition")).await.map(|n| n.is_empty()).unwrap_or(true));
}
