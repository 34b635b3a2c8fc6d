//! Devices: GPU detection through nvidia-smi, `GET /api/v1/devices`, a run's `device` request,
//! one run per GPU, and which trainer binary gets which `--device`. Without a GPU here, the GPUs
//! come from a stand-in nvidia-smi and GPU runs from a stand-in trainer (shell scripts) that
//! records how the server started it; CPU runs without stand-ins use the real trainer.

mod common;
mod ui_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{train_config, Server, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use ui_support::Browser;

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(60);

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    // Written by a child process: a write descriptor held by this (multi-threaded, forking) test
    // process could leak into another test's child between fork and exec, and running the script
    // then fails with ETXTBSY ("Text file busy").
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writer.stdin.take().unwrap().write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
    assert!(writer.wait().unwrap().success());
    path
}

/// An nvidia-smi that lists two H100s, as the real one answers the server's query.
fn fake_nvidia_smi(dir: &Path) -> PathBuf {
    script(
        dir,
        "nvidia-smi",
        "cat <<'CSV'\n\
         0, NVIDIA H100 80GB HBM3, GPU-00000000-aaaa-bbbb-cccc-000000000000, 12, 2048, 81559\n\
         1, NVIDIA H100 80GB HBM3, GPU-11111111-aaaa-bbbb-cccc-111111111111, 0, 0, 81559\n\
         CSV",
    )
}

/// A trainer that writes `<label> <its arguments> CUDA_DEVICE_ORDER=…` to `argv.txt` in its
/// working directory (the run's), waits until `release` exists, then fails with status 3. As
/// `supervise` (how the server starts it) it runs the command after `--` and writes the exit
/// record as the real supervisor does.
fn fake_trainer(dir: &Path, label: &str, release: &Path) -> PathBuf {
    let body = format!(
        "if [ \"$1\" = supervise ]; then\n\
           attempt=$3; shift 6\n\
           \"$@\"; code=$?\n\
           printf '{{\"code\":%d,\"signal\":null,\"signals_received\":[],\"killed_after_grace\":false,\"trainer_pid\":0,\"host\":\"fake\",\"started_at\":0,\"ended_at\":0}}' $code > \"$attempt/exit.json\"\n\
           exit $code\n\
         fi\n\
         echo \"{label} $* CUDA_DEVICE_ORDER=${{CUDA_DEVICE_ORDER:-unset}}\" > argv.txt\n\
         i=0\n\
         while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n\
         exit 3",
        release.display()
    );
    script(dir, label, &body)
}

/// What the stand-in trainer of `run` recorded.
async fn recorded_argv(run: &Value) -> String {
    let file = Path::new(run["out_dir"].as_str().unwrap()).join("argv.txt");
    let deadline = Instant::now() + SHORT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if text.ends_with('\n') {
                return text.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "{} was not written", file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_on(server: &Server, experiment: i64, device: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({ "experiment_id": experiment, "config": train_config(1, 256) });
    if let Some(d) = device {
        body["device"] = json!(d);
    }
    server.post("/api/v1/runs", &body).await
}

async fn devices(server: &Server) -> Value {
    let (st, body) = server.get("/api/v1/devices").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn without_nvidia_smi_runs_use_the_cpu() {
    let env = TestEnv::new();
    // The harness points --nvidia-smi at a file that does not exist.
    let server = env.server();
    let d = devices(&server).await;
    assert_eq!(d["gpus"], json!([]), "{d}");
    assert!(d["cpu"]["cores"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(d["cpu"]["max_concurrent_runs"], 1);
    assert_eq!(d["gpu_error"], Value::Null, "an absent nvidia-smi is not an error: {d}");
    let (_, home) = server.get("/").await;
    assert!(home.as_str().unwrap().contains("No GPU detected"), "the dashboard says so");

    let exp = server.create_experiment("cpu only").await;
    for (device, says) in
        [("gpu", "no GPU was detected"), ("cuda:0", "no GPU was detected"), ("tpu", "cuda:N"), ("cuda:x", "cuda:N")]
    {
        let (st, body) = create_on(&server, exp, Some(device)).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{device}: {body}");
        assert_eq!(body["field"], "device", "{device}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{device}: {body}");
    }
    let (st, body) = server.post("/api/v1/runs", &json!({"experiment_id": exp, "config": {}, "device": 1})).await;
    assert_eq!((st, &body["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("device")), "{body}");
    let (_, runs) = server.get(&format!("/api/v1/experiments/{exp}/runs")).await;
    assert_eq!(runs, json!([]), "refused requests create no run");

    // A run that names no device trains for real on the CPU.
    let (st, created) = create_on(&server, exp, None).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert_eq!(created["device_request"], "auto");
    let id = created["id"].as_i64().unwrap();
    let run = server.wait_status(id, "finished", LONG).await;
    assert_eq!(run["device"], "cpu", "{run}");
    let (_, page) = server.get(&format!("/runs/{id}")).await;
    assert!(page.as_str().unwrap().contains(r#"id="fact-device">cpu<"#), "the run page shows the device");
}

#[tokio::test]
async fn gpu_runs_get_their_gpu_and_the_cuda_trainer() {
    let env = TestEnv::new();
    let tools = env.dir.path().join("tools");
    let release = tools.join("release");
    let smi = fake_nvidia_smi(&tools);
    let cpu_trainer = fake_trainer(&tools, "cpu-trainer", &release);
    let cuda_trainer = fake_trainer(&tools, "cuda-trainer", &release);
    let arg = |p: &Path| p.display().to_string();
    let (smi, cpu_trainer, cuda_trainer) = (arg(&smi), arg(&cpu_trainer), arg(&cuda_trainer));
    let server =
        env.server_with(&["--nvidia-smi", &smi, "--trainer-bin", &cpu_trainer, "--trainer-cuda-bin", &cuda_trainer]);

    let d = devices(&server).await;
    let gpus = d["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2, "{d}");
    assert_eq!(
        gpus[0],
        json!({"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000000-aaaa-bbbb-cccc-000000000000",
               "utilization_pct": 12.0, "memory_used_mib": 2048, "memory_total_mib": 81559, "busy_run": null})
    );
    assert_eq!(gpus[1]["index"], 1);
    assert_eq!(gpus[1]["uuid"], "GPU-11111111-aaaa-bbbb-cccc-111111111111");

    let exp = server.create_experiment("gpus").await;
    let (st, body) = create_on(&server, exp, Some("cuda:2")).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "device");
    assert!(body["error"].as_str().unwrap().contains("cuda:0, cuda:1"), "{body}");

    // Two runs want GPU 1, one any GPU, one the CPU.
    let mut ids = Vec::new();
    for device in ["cuda:1", "cuda:1", "gpu", "cpu"] {
        let (st, body) = create_on(&server, exp, Some(device)).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        assert_eq!(body["device_request"], device);
        ids.push(body["id"].as_i64().unwrap());
    }
    let (first, second, any, cpu) = (ids[0], ids[1], ids[2], ids[3]);
    let first_run = server.wait_status(first, "running", SHORT).await;
    let any_run = server.wait_status(any, "running", SHORT).await;
    let cpu_run = server.wait_status(cpu, "running", SHORT).await;
    assert_eq!(first_run["device"], "cuda:1");
    assert_eq!(any_run["device"], "cuda:0", "GPU 1 is taken, so 'gpu' gets GPU 0");
    assert_eq!(cpu_run["device"], "cpu");
    // The CPU run was created after the second cuda:1 run, so the scheduler has passed over it.
    assert_eq!(server.run(second).await["status"], "queued", "GPU 1 runs one run at a time");

    let d = devices(&server).await;
    assert_eq!(d["gpus"][1]["busy_run"], first, "{d}");
    assert_eq!(d["gpus"][0]["busy_run"], any, "{d}");
    assert_eq!(d["cpu"]["running"], 1, "{d}");

    let argv = recorded_argv(&first_run).await;
    let config = Path::new(first_run["out_dir"].as_str().unwrap()).join("run-config.json");
    assert_eq!(
        argv,
        format!(
            "cuda-trainer run --config {} --events jsonl --device cuda:1 CUDA_DEVICE_ORDER=PCI_BUS_ID",
            config.display()
        )
    );
    let argv = recorded_argv(&any_run).await;
    assert!(argv.starts_with("cuda-trainer ") && argv.contains(" --device cuda:0 "), "{argv}");
    let argv = recorded_argv(&cpu_run).await;
    assert!(argv.starts_with("cpu-trainer ") && argv.ends_with("--device cpu CUDA_DEVICE_ORDER=unset"), "{argv}");

    // The stand-ins fail; then the second cuda:1 run gets GPU 1.
    std::fs::write(&release, "").unwrap();
    let first_run = server.wait_status(first, "failed", SHORT).await;
    assert!(first_run["error"].as_str().unwrap().contains("status 3"), "{first_run}");
    let second_run = server.wait_status(second, "failed", SHORT).await;
    assert_eq!(second_run["device"], "cuda:1");
    assert!(
        second_run["started_at"].as_f64().unwrap() >= first_run["finished_at"].as_f64().unwrap(),
        "the second run on GPU 1 started only after the first ended: {first_run} {second_run}"
    );
    assert!(recorded_argv(&second_run).await.contains(" --device cuda:1 "));
    server.wait_status(any, "failed", SHORT).await;
    server.wait_status(cpu, "failed", SHORT).await;
    let d = devices(&server).await;
    assert!(d["gpus"].as_array().unwrap().iter().all(|g| g["busy_run"].is_null()), "{d}");
}

#[tokio::test]
async fn without_a_cuda_trainer_gpu_runs_use_the_trainer_bin() {
    let env = TestEnv::new();
    let tools = env.dir.path().join("tools");
    let release = tools.join("release");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(&release, "").unwrap();
    let smi = fake_nvidia_smi(&tools).display().to_string();
    let trainer = fake_trainer(&tools, "trainer", &release).display().to_string();
    let server = env.server_with(&["--nvidia-smi", &smi, "--trainer-bin", &trainer]);

    // "auto" on a machine with GPUs takes a GPU.
    let exp = server.create_experiment("one trainer").await;
    let (st, body) = create_on(&server, exp, None).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let run = server.wait_status(body["id"].as_i64().unwrap(), "failed", SHORT).await;
    assert_eq!(run["device"], "cuda:0");
    let argv = recorded_argv(&run).await;
    assert!(argv.starts_with("trainer run ") && argv.contains(" --device cuda:0 "), "{argv}");
}

/// A server restarted without the GPU a queued run asked for fails that run with the reason,
/// instead of leaving it queued for ever.
#[tokio::test]
async fn a_queued_run_whose_gpu_is_gone_fails() {
    let env = TestEnv::new();
    let tools = env.dir.path().join("tools");
    let smi = fake_nvidia_smi(&tools).display().to_string();
    let cuda = fake_trainer(&tools, "cuda-trainer", &tools.join("release")).display().to_string();
    let mut server = env.server_with(&["--nvidia-smi", &smi, "--trainer-cuda-bin", &cuda]);
    let exp = server.create_experiment("gone").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (st, body) = create_on(&server, exp, Some("cuda:1")).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_i64().unwrap());
    }
    server.wait_status(ids[0], "running", SHORT).await;
    server.kill();

    let server = env.server();
    let waiting = server.wait_status(ids[1], "failed", SHORT).await;
    let error = waiting["error"].as_str().unwrap();
    assert!(error.contains("cuda:1") && error.contains("not detected"), "{waiting}");
    assert_eq!(waiting["device"], Value::Null, "it never ran");
    // The running one outlived the server and was re-attached; it ends as its trainer does.
    assert_eq!(server.run(ids[0]).await["status"], "running");
    std::fs::write(tools.join("release"), "").unwrap();
    let first = server.wait_status(ids[0], "failed", SHORT).await;
    assert_eq!(first["exit_code"], 3, "{first}");
    assert_eq!(first["device"], "cuda:1", "the device of its last attempt stays recorded");
}

/// The experiments page lists the GPUs and follows their load and the runs on them, as the
/// server's periodic nvidia-smi query sees them (here: an nvidia-smi that prints a file).
#[tokio::test]
async fn the_dashboard_follows_the_gpus() {
    ui_support::require_assets();
    let env = TestEnv::new();
    let tools = env.dir.path().join("tools");
    let release = tools.join("release");
    let csv = tools.join("gpus.csv");
    let line = |util: u32| {
        format!("0, NVIDIA H100 80GB HBM3, GPU-0, {util}, 2048, 81559\n1, NVIDIA A100-SXM4-40GB, GPU-1, 0, 0, 40960\n")
    };
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(&csv, line(12)).unwrap();
    let smi = script(&tools, "nvidia-smi", &format!("cat '{}'", csv.display())).display().to_string();
    let cuda = fake_trainer(&tools, "cuda-trainer", &release).display().to_string();
    let server = env.server_with(&["--nvidia-smi", &smi, "--trainer-cuda-bin", &cuda]);
    let b = Browser::start(1280, 900).await;
    b.goto(&server.url("/")).await;

    let gpus_text = "const items = [...document.querySelectorAll('#devices-gpus li')]; \
                     return items.length === 2 ? items.map((li) => li.innerText).join('\\n') : null;";
    let text = b.wait_js("two GPUs listed", SHORT, gpus_text).await;
    let text = text.as_str().unwrap();
    for part in ["cuda:0", "NVIDIA H100 80GB HBM3", "12%", "2.0 / 79.6 GiB", "cuda:1", "NVIDIA A100-SXM4-40GB", "idle"]
    {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    assert!(b.js("return document.getElementById('devices-none').hidden", vec![]).await.as_bool().unwrap());
    assert!(b.text("#devices-cpu").await.contains("0 of 1 run slots busy"));

    // A run on GPU 1 and a busier GPU 0 show up without reloading the page.
    let exp = server.create_experiment("dashboard").await;
    let (st, body) = create_on(&server, exp, Some("cuda:1")).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let run = body["id"].as_i64().unwrap();
    std::fs::write(&csv, line(97)).unwrap();
    let busy = format!(
        "const li = document.querySelector(\"#devices-gpus li[data-index='1']\"); \
         const other = document.querySelector(\"#devices-gpus li[data-index='0']\"); \
         return li && li.innerText.includes('run #{run}') && other.innerText.includes('97%') \
           ? li.querySelector('a').getAttribute('href') : null;"
    );
    let href = b.wait_js("GPU 1 busy with the run and GPU 0 at 97%", SHORT, &busy).await;
    assert_eq!(href, json!(format!("/runs/{run}")));

    // The run page and the experiment's run table say where it runs.
    b.goto(&server.url(&format!("/runs/{run}"))).await;
    b.wait_js(
        "the run's device",
        SHORT,
        "return document.getElementById('fact-device').innerText === 'cuda:1' || null;",
    )
    .await;
    b.goto(&server.url(&format!("/experiments/{exp}"))).await;
    let row = format!("const r = document.querySelector(\"#runs-table tr[data-id='{run}']\"); return r && r.innerText.includes('cuda:1') || null;");
    b.wait_js("the device in the run table", SHORT, &row).await;
    std::fs::write(&release, "").unwrap();
    server.wait_status(run, "failed", SHORT).await;
}
