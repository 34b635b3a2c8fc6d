//! Test harness: the real `crt-server` binary on an ephemeral port with a fresh database
//! (a SQLite file in a tempdir, or a new Postgres database with `CRT_TEST_DB=postgres`),
//! the real `crt-trainer` next to it, and MNIST from a shared cache (`CRT_DATA_DIR`, default
//! `<repo>/target/crt-data`). Everything is driven over HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const SERVER: &str = env!("CARGO_BIN_EXE_crt-server");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The trainer binary: `CRT_TRAINER_BIN`, or `crt-trainer` beside `crt-server`, built once
/// per test binary (a no-op when the workspace build already made it).
pub fn trainer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("CRT_TRAINER_BIN") {
            return PathBuf::from(bin);
        }
        let server = Path::new(SERVER);
        let profile_dir = server.parent().expect("target profile dir");
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "crt-trainer", "--bin", "crt-trainer", "--target-dir"]).arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(repo_root()).status().expect("running cargo build for crt-trainer");
        assert!(status.success(), "cargo build -p crt-trainer failed");
        let bin = profile_dir.join("crt-trainer");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
    .clone()
}

/// The shared dataset cache, with MNIST fetched (once, under a file lock).
pub fn datasets_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::var("CRT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target/crt-data"));
        std::fs::create_dir_all(&dir).expect("creating the dataset cache");
        let lock = std::fs::File::create(dir.join(".fetch.lock")).expect("dataset lock file");
        lock.lock().expect("locking the dataset cache");
        let out = Command::new(trainer_bin())
            .args(["data", "fetch", "mnist", "--data-dir"])
            .arg(&dir)
            .output()
            .expect("running crt-trainer data fetch");
        assert!(out.status.success(), "crt-trainer data fetch mnist failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .clone()
}

/// A place for one test's server: a tempdir and a database.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub database_url: Option<String>,
    pg: Option<(String, String)>,
}

impl TestEnv {
    /// A tempdir and a fresh database: `CRT_TEST_DB=sqlite` (the default) is a SQLite file in the
    /// tempdir; `CRT_TEST_DB=postgres` is a new database on the server `CRT_TEST_POSTGRES_URL`
    /// names (required then; `scripts/ci-postgres.sh` prints it), dropped again on Drop.
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        match std::env::var("CRT_TEST_DB").unwrap_or_default().as_str() {
            "" | "sqlite" => TestEnv { dir, database_url: None, pg: None },
            "postgres" => {
                let admin =
                    std::env::var("CRT_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
                        panic!(
                            "CRT_TEST_DB=postgres needs CRT_TEST_POSTGRES_URL (the admin URL of a Postgres server \
                         whose role may CREATE DATABASE); run `eval \"$(scripts/ci-postgres.sh)\"`"
                        )
                    });
                let name = format!(
                    "crt_test_{}_{}",
                    std::process::id(),
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                );
                pg_admin(&admin, &format!("CREATE DATABASE {name}"));
                let url = with_database(&admin, &name);
                TestEnv { dir, database_url: Some(url), pg: Some((admin, name)) }
            }
            other => panic!("CRT_TEST_DB={other:?}: expected \"sqlite\" (the default) or \"postgres\""),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    pub fn server(&self) -> Server {
        self.server_with(&[])
    }

    /// `--data-dir` and, with Postgres, `--database-url`: what `crt-server token …` needs to
    /// reach this environment's database.
    pub fn database_args(&self) -> Vec<String> {
        let mut args = vec!["--data-dir".to_string(), self.data_dir().display().to_string()];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".into(), url.clone()]);
        }
        args
    }

    /// A new API token made with `crt-server token create` (the real CLI) in this database.
    pub fn token(&self, scope: &str) -> String {
        let out = Command::new(SERVER)
            .args(["token", "create", "--scope", scope, "--name", &format!("test-{scope}")])
            .args(self.database_args())
            .output()
            .expect("running crt-server token create");
        assert!(out.status.success(), "token create failed: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(token.starts_with("crt_"), "token create printed {token:?}");
        token
    }

    pub fn server_with(&self, extra: &[&str]) -> Server {
        let mut args: Vec<String> = Vec::new();
        if !extra.contains(&"--bind") {
            args.extend(["--bind".into(), "127.0.0.1:0".into()]);
        }
        args.extend([
            "--data-dir".into(),
            self.data_dir().display().to_string(),
            "--datasets-dir".into(),
            datasets_dir().display().to_string(),
            "--stop-grace-secs".into(),
            "20".into(),
        ]);
        if !extra.contains(&"--trainer-bin") {
            args.extend(["--trainer-bin".into(), trainer_bin().display().to_string()]);
        }
        if !extra.contains(&"--nvidia-smi") {
            // No GPUs unless a test brings its own nvidia-smi: the trainer built here is CPU-only,
            // and on a GPU machine "auto" runs would otherwise go to the GPU.
            args.extend(["--nvidia-smi".into(), self.dir.path().join("no-nvidia-smi").display().to_string()]);
        }
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".into(), url.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start(&args, &self.dir.path().join("server.log"))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Runs outlive their server (--on-exit detach): end this test's trainers and jobs.
        end_attempts_under(self.dir.path());
        if let Some((admin, name)) = self.pg.take() {
            drop_database(&admin, &name);
        }
    }
}

/// Runs one statement on the Postgres admin database (on its own thread and runtime, so it
/// works from Drop and from async tests alike).
fn pg_admin(admin_url: &str, sql: &str) {
    try_pg_admin(admin_url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn try_pg_admin(admin_url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (admin_url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connecting to CRT_TEST_POSTGRES_URL");
            sqlx::query(&sql).execute(&mut conn).await.map(|_| ()).map_err(|e| e.to_string())
        })
    })
    .join()
    .expect("postgres admin statement")
}

/// Drops a test database. `WITH (FORCE)` ends our own leftover connections, but it is refused
/// while an autovacuum worker (a superuser's process) is in the database, which a test that
/// wrote much can trigger; a plain `DROP DATABASE` makes autovacuum leave, so that is the retry.
pub fn drop_database(admin_url: &str, name: &str) {
    let mut last = String::new();
    for attempt in 0..40 {
        let force = if attempt % 2 == 0 { " WITH (FORCE)" } else { "" };
        match try_pg_admin(admin_url, &format!("DROP DATABASE IF EXISTS {name}{force}")) {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("DROP DATABASE {name} kept failing for 10 s: {last}");
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A running `crt-server`.
pub struct Server {
    child: Child,
    pub base: String,
    pub http: reqwest::Client,
    log: PathBuf,
}

impl Server {
    fn start(args: &[String], log: &Path) -> Server {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("server log");
        let mut child = Command::new(SERVER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("starting crt-server");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining stdout so the server never blocks on it.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("crt-server listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("crt-server did not start; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
            }
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Server { child, base, http, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server with SIGKILL (its trainers live on, as after a real crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the server stops its trainers and exits.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("crt-server did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// From now on every request of `self.http` carries `Authorization: Bearer <token>`.
    pub fn use_token(&mut self, token: &str) {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        self.http =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).default_headers(headers).build().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        split(resp).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp =
            self.http.post(self.url(path)).json(body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        split(resp).await
    }

    pub async fn post_raw(&self, path: &str, body: &str, content_type: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        split(resp).await
    }

    pub async fn create_experiment(&self, name: &str) -> i64 {
        let (st, body) = self.post("/api/v1/experiments", &json!({ "name": name, "tags": ["test"] })).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn create_run(&self, experiment: i64, parents: &[i64], config: Value) -> i64 {
        let (st, body) = self
            .post("/api/v1/runs", &json!({ "experiment_id": experiment, "parents": parents, "config": config }))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn run(&self, id: i64) -> Value {
        let (st, body) = self.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        body
    }

    /// Polls the run until `pred` holds; panics (with the server log) after `timeout`.
    pub async fn wait_run(&self, id: i64, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.run(id).await;
            if pred(&run) {
                return run;
            }
            if Instant::now() > deadline {
                let logs = self.get(&format!("/api/v1/runs/{id}/logs?tail=true&limit=40")).await.1;
                panic!(
                    "run {id}: timed out waiting for {what}; run: {run:#}\nrun logs: {logs:#}\nserver log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_status(&self, id: i64, status: &str, timeout: Duration) -> Value {
        self.wait_run(id, timeout, &format!("status {status}"), |r| r["status"] == status).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|s| s != "Z"),
        Err(_) => false,
    }
}

async fn split(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, body)
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// A client for an SSE stream, parsing the wire format by hand (as a browser would).
pub struct SseClient {
    stream: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl SseClient {
    pub async fn connect(server: &Server, path: &str, last_event_id: Option<i64>) -> SseClient {
        let mut req =
            server.http.get(server.url(path)).header("accept", "text/event-stream").timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("SSE connect");
        assert_eq!(resp.status(), StatusCode::OK, "SSE {path}");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        SseClient { stream: resp.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next event (keep-alive comments skipped), or None on timeout or end of stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse_block(&block) {
                    return Some(ev);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() && id.is_none() {
        return None;
    }
    Some(SseEvent { id, event, data: serde_json::from_str(&data).unwrap_or(Value::String(data)) })
}

/// A short Gaussian-noise LeNet training run on a real MNIST subset.
pub fn train_config(epochs: u64, train_subset: u64) -> Value {
    json!({
        "kind": "train",
        "data": { "dataset": "mnist", "train_subset": train_subset, "test_subset": 500 },
        "arch": "lenet",
        "method": { "name": "gaussian", "sigma": 0.25 },
        "optim": { "epochs": epochs, "batch_size": 128 },
        "seed": 1
    })
}

/// Ends every trainer a test started under `dir`: local process groups (leaders whose command
/// line names a path under it) and Slurm jobs whose working directory is under it.
pub fn end_attempts_under(dir: &Path) {
    for pid in groups_under(dir) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    if let Ok(out) = Command::new("squeue").args(["-h", "-o", "%i %Z"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((id, wd)) = line.split_once(' ') {
                if Path::new(wd.trim()).starts_with(dir) {
                    let _ = Command::new("scancel").arg(id).status();
                }
            }
        }
    }
}

/// Live process-group leaders whose command line names a path under `dir`.
pub fn groups_under(dir: &Path) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).map(|g| g.as_raw());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let names = cmdline.split(|&b| b == 0).any(|a| {
            use std::os::unix::ffi::OsStrExt;
            Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(dir)
        });
        if pgid == Ok(pid) && names && alive(pid as i64) {
            found.push(pid);
        }
    }
    found
}

/// The trainer under a local supervisor: the other live process in its group.
pub async fn trainer_pid(supervisor: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
                let pgid =
                    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).map(|g| g.as_raw() as i64);
                if pid != supervisor && pgid == Ok(supervisor) && alive(pid) {
                    return pid;
                }
            }
        }
        assert!(Instant::now() < deadline, "no trainer in the supervisor {supervisor}'s group");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event line of every attempt of a run, parsed, in order.
pub fn event_log(run_dir: &Path) -> Vec<crt_trainer::events::EventLine> {
    let mut attempts: Vec<PathBuf> = std::fs::read_dir(run_dir.join("attempts"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    attempts.sort_by_key(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok()));
    let mut lines = Vec::new();
    for a in attempts {
        let text = std::fs::read_to_string(a.join("events.jsonl")).unwrap_or_default();
        for l in text.lines().filter(|l| !l.is_empty()) {
            lines.push(crt_trainer::events::EventLine::parse(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")));
        }
    }
    lines
}

/// What the API stored for a run equals its trainer's event log, event type by event type:
/// every metric value, log event, certificate and artifact, none lost and none twice.
pub async fn assert_stored_equals_log(server: &Server, run: i64) {
    let r = server.run(run).await;
    let log = event_log(std::path::Path::new(r["out_dir"].as_str().unwrap()));
    assert!(!log.is_empty(), "the run has an event log");
    let mut want_points = std::collections::BTreeSet::new();
    let (mut want_logs, mut want_certs, mut want_artifacts) =
        (Vec::new(), Vec::new(), std::collections::BTreeSet::new());
    let mut metric_events = 0;
    for line in &log {
        match &line.event {
            crt_trainer::events::Event::Metrics { step, values, .. } => {
                metric_events += 1;
                for (k, v) in values {
                    want_points.insert((k.clone(), *step as i64, v.to_bits()));
                }
            }
            crt_trainer::events::Event::Log { message, .. } => want_logs.push(message.clone()),
            crt_trainer::events::Event::Certified(c) => want_certs.push(c.idx),
            crt_trainer::events::Event::Artifact { path, .. } => {
                want_artifacts.insert(path.rsplit('/').next().unwrap().to_string());
            }
            _ => {}
        }
    }
    let (st, body) = server.get(&format!("/api/v1/runs/{run}/metrics")).await;
    assert_eq!(st, StatusCode::OK);
    let mut got_points = std::collections::BTreeSet::new();
    for (key, series) in body["metrics"].as_object().unwrap() {
        for p in series["points"].as_array().unwrap() {
            let v = p["value"].as_f64().unwrap();
            assert!(
                got_points.insert((key.clone(), p["step"].as_i64().unwrap(), v.to_bits())),
                "point {key} {} twice",
                p["step"]
            );
        }
    }
    assert_eq!(got_points, want_points, "metric values: stored vs event log");
    let logs = server.get(&format!("/api/v1/runs/{run}/logs?stream=trainer&limit=10000")).await.1;
    let got_logs: Vec<String> =
        logs["lines"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap().to_string()).collect();
    assert_eq!(got_logs, want_logs, "trainer log events: stored vs event log");
    let certs = server.get(&format!("/api/v1/runs/{run}/certificates?limit=100000")).await.1;
    if !want_certs.is_empty() {
        let mut got: Vec<u64> = certs.as_array().unwrap().iter().map(|c| c["idx"].as_u64().unwrap()).collect();
        got.sort_unstable();
        let mut want = want_certs.clone();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want, "certificates: stored vs event log");
    }
    let artifacts = server.get(&format!("/api/v1/runs/{run}/artifacts")).await.1;
    for name in &want_artifacts {
        assert!(
            artifacts.as_array().unwrap().iter().any(|a| a["path"].as_str().unwrap().ends_with(name.as_str())),
            "artifact {name} stored"
        );
    }
    // The journal (what SSE replays) holds one entry per metrics event.
    let mut sse = SseClient::connect(server, &format!("/api/v1/runs/{run}/events"), None).await;
    let (mut journal_metrics, mut ids) = (0, std::collections::BTreeSet::new());
    while let Some(ev) = sse.next(Duration::from_secs(2)).await {
        assert!(ids.insert(ev.id.unwrap()), "event id {:?} twice", ev.id);
        if ev.event == "metrics" {
            journal_metrics += 1;
        }
    }
    assert_eq!(journal_metrics, metric_events, "journal metrics entries vs event log");
}

/// The Python of the project's test-tool venv (`scripts/py-venv.sh` makes it; CI runs that first),
/// or `CRT_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CRT_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo_root().join("target/py-venv/bin/python");
    assert!(p.is_file(), "{} is missing: run scripts/py-venv.sh first", p.display());
    p
}

/// Runs tests/mlflow/client_script.py (the real MLflow client) against `server`; returns its
/// summary (the last stdout line: the ids of the runs it made, and its failed checks).
pub fn run_mlflow_client_script(server: &Server, token: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mlflow/client_script.py");
    let out = Command::new(python())
        .arg(script)
        .env("MLFLOW_TRACKING_URI", &server.base)
        .env("MLFLOW_TRACKING_TOKEN", token)
        // No network calls from the client beyond our server.
        .env("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .output()
        .expect("running the MLflow client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the client script failed:\n{stderr}\n{stdout}\nserver log:\n{}", server.log());
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("summary: {e}: {stdout}"))
}
