//! A small adapter around Slurm's command-line tools (`sbatch`, `squeue`, `scancel`, `sinfo`).
//!
//! The server writes a batch script ([`batch_script`]) into the attempt directory, submits it
//! ([`submit`]), follows its jobs with one `squeue` call per poll ([`poll`]), and passes stops on
//! with `scancel` ([`signal`], [`cancel`]). Every call has a timeout ([`CLI_TIMEOUT`]): Slurm's
//! clients hang for ~10 s per try when slurmctld is down. The tools are found on `PATH`, or in
//! `CRT_SLURM_BIN_DIR` when that is set.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// How long one Slurm client command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// Bounds checked by [`SlurmResources::validate`].
pub const MAX_CPUS: u32 = 256;
pub const MAX_MEM_MB: u64 = 4_194_304;
pub const MAX_TIME_LIMIT_MIN: u32 = 525_600;
pub const MAX_GPUS: u32 = 16;
pub const MAX_EXTRA_ARGS: usize = 16;
pub const MAX_EXTRA_ARG_LEN: usize = 200;
pub const MAX_PARTITION_LEN: usize = 200;

/// Per-run resources; every field optional (server-wide defaults fill gaps).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    pub partition: Option<String>,
    /// `--cpus-per-task`, 1..=256.
    pub cpus: Option<u32>,
    /// `--mem=<n>M`, 1..=4_194_304.
    pub mem_mb: Option<u64>,
    /// `--time=<n>` (minutes), 1..=525_600.
    pub time_limit_min: Option<u32>,
    /// `--gres=gpu:<n>`, 0..=16 (0: no `--gres` line).
    pub gpus: Option<u32>,
    /// Extra sbatch arguments: each starts with `--`, at most 16, each ≤ 200 chars, no newlines.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl SlurmResources {
    /// `self` with gaps filled from `defaults`. `extra_args` counts as a gap when empty: a run's
    /// own list replaces the default list, it is not appended to it.
    pub fn or(&self, defaults: &SlurmResources) -> SlurmResources {
        SlurmResources {
            partition: self.partition.clone().or_else(|| defaults.partition.clone()),
            cpus: self.cpus.or(defaults.cpus),
            mem_mb: self.mem_mb.or(defaults.mem_mb),
            time_limit_min: self.time_limit_min.or(defaults.time_limit_min),
            gpus: self.gpus.or(defaults.gpus),
            extra_args: if self.extra_args.is_empty() { defaults.extra_args.clone() } else { self.extra_args.clone() },
        }
    }

    /// The bounds above; `Err((field, message))` names the field and what is expected.
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn err(field: &str, message: String) -> Result<(), (String, String)> {
            Err((field.to_string(), message))
        }
        if let Some(p) = &self.partition {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ',');
            if p.is_empty() || p.len() > MAX_PARTITION_LEN || !p.chars().all(ok_char) {
                return err(
                    "partition",
                    format!(
                        "expected a Slurm partition name (1 to {MAX_PARTITION_LEN} characters: letters, digits, \
                         '_', '-', '.', ','), got {p:?}"
                    ),
                );
            }
        }
        if let Some(n) = self.cpus {
            if !(1..=MAX_CPUS).contains(&n) {
                return err("cpus", format!("expected a number of CPUs from 1 to {MAX_CPUS}, got {n}"));
            }
        }
        if let Some(n) = self.mem_mb {
            if !(1..=MAX_MEM_MB).contains(&n) {
                return err("mem_mb", format!("expected memory in MB from 1 to {MAX_MEM_MB}, got {n}"));
            }
        }
        if let Some(n) = self.time_limit_min {
            if !(1..=MAX_TIME_LIMIT_MIN).contains(&n) {
                return err(
                    "time_limit_min",
                    format!("expected a time limit in minutes from 1 to {MAX_TIME_LIMIT_MIN}, got {n}"),
                );
            }
        }
        if let Some(n) = self.gpus {
            if n > MAX_GPUS {
                return err("gpus", format!("expected a number of GPUs from 0 to {MAX_GPUS}, got {n}"));
            }
        }
        if self.extra_args.len() > MAX_EXTRA_ARGS {
            return err(
                "extra_args",
                format!("expected at most {MAX_EXTRA_ARGS} extra sbatch arguments, got {}", self.extra_args.len()),
            );
        }
        for (i, a) in self.extra_args.iter().enumerate() {
            if !a.starts_with("--") {
                return err(
                    "extra_args",
                    format!("item {i}: expected an sbatch option starting with \"--\", got {a:?}"),
                );
            }
            if a.chars().count() > MAX_EXTRA_ARG_LEN {
                return err("extra_args", format!("item {i}: expected at most {MAX_EXTRA_ARG_LEN} characters"));
            }
            if a.chars().any(|c| c.is_control()) {
                return err("extra_args", format!("item {i}: expected no newlines or other control characters"));
            }
        }
        Ok(())
    }
}

/// One batch job to submit.
pub struct JobSpec<'a> {
    pub job_name: &'a str,
    /// The run directory (shared with the nodes): `--chdir`.
    pub workdir: &'a Path,
    /// Slurm's own stdout/stderr of the batch script (e.g. `<attempt dir>/slurm.out`).
    pub output: &'a Path,
    /// The argv the batch shell `exec`s (so signals sent to the batch shell reach it).
    pub command: &'a [String],
    pub resources: &'a SlurmResources,
    /// `--signal=B:USR1@<grace>`: warns the batch shell (our supervisor) before the time limit.
    pub signal_grace_secs: u32,
    /// Extra environment, exported in the script.
    pub env: &'a [(String, String)],
}

/// The batch script: `#!/bin/bash`, `#SBATCH` lines (job name, output, chdir, signal, resources,
/// extra arguments), the exports, then `exec` of the command. Deterministic. Values in `#SBATCH`
/// lines are quoted the way sbatch reads them; everything below them is shell-quoted. A newline
/// in a job name or path cannot be written in an `#SBATCH` line and becomes `_`.
pub fn batch_script(spec: &JobSpec) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut directive = |arg: String| {
        let _ = writeln!(s, "#SBATCH {}", sbatch_quote(&arg));
    };
    directive(format!("--job-name={}", spec.job_name));
    // `%` starts a filename pattern (%j, %x, …) in --output: `%%` is a literal `%`.
    directive(format!("--output={}", spec.output.display().to_string().replace('%', "%%")));
    directive(format!("--chdir={}", spec.workdir.display()));
    directive(format!("--signal=B:USR1@{}", spec.signal_grace_secs));
    let r = spec.resources;
    if let Some(p) = &r.partition {
        directive(format!("--partition={p}"));
    }
    if let Some(n) = r.cpus {
        directive(format!("--cpus-per-task={n}"));
    }
    if let Some(n) = r.mem_mb {
        directive(format!("--mem={n}M"));
    }
    if let Some(n) = r.time_limit_min {
        directive(format!("--time={n}"));
    }
    if let Some(n) = r.gpus.filter(|&n| n > 0) {
        directive(format!("--gres=gpu:{n}"));
    }
    for a in &r.extra_args {
        directive(a.clone());
    }
    for (k, v) in spec.env {
        // Quoting the whole assignment keeps a bad name harmless (bash says "not a valid identifier").
        let _ = writeln!(s, "export {}", shell_quote(&format!("{k}={v}")));
    }
    if spec.command.is_empty() {
        s.push_str("echo 'crt: empty command' >&2\nexit 2\n");
    } else {
        let argv: Vec<String> = spec.command.iter().map(|a| shell_quote(a)).collect();
        let _ = writeln!(s, "exec {}", argv.join(" "));
    }
    s
}

/// Quotes a word for a POSIX shell: unchanged when it only has safe characters, else in single
/// quotes (with `'` written as `'\''`).
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes one argument of an `#SBATCH` line as sbatch splits them (whitespace separates, `'`/`"`
/// quote, `\` escapes, an unquoted `#` starts a comment): unchanged when nothing needs it, else in
/// double quotes with `\` and `"` escaped. Line breaks cannot be written and become `_`.
fn sbatch_quote(arg: &str) -> String {
    let arg = arg.replace(['\n', '\r'], "_");
    if !arg.is_empty() && !arg.chars().any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '#')) {
        return arg;
    }
    format!("\"{}\"", arg.replace('\\', r"\\").replace('"', "\\\""))
}

fn bin(name: &str) -> PathBuf {
    match std::env::var_os("CRT_SLURM_BIN_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join(name),
        _ => PathBuf::from(name),
    }
}

/// Runs one Slurm client command with [`CLI_TIMEOUT`]; its stdout on success, else an error
/// naming the command line and carrying its stderr.
async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let line = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let child = Command::new(bin(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow!("cannot run `{line}`: {e}"))?;
    let out = match tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| anyhow!("`{line}`: {e}"))?,
        Err(_) => bail!("`{line}` did not answer within {} s (is slurmctld up?)", CLI_TIMEOUT.as_secs()),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sbatch --parsable <script>`; the job id (the part before any `;cluster`).
pub async fn submit(script: &Path) -> anyhow::Result<String> {
    let script = script.to_str().ok_or_else(|| anyhow!("batch script path {} is not UTF-8", script.display()))?;
    let out = run("sbatch", &["--parsable", script]).await?;
    let id = out.trim().split(';').next().unwrap_or("").trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("`sbatch --parsable {script}` printed no job id: {:?}", out.trim());
    }
    Ok(id.to_string())
}

/// A job as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// PENDING, RUNNING, COMPLETING, COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, …
    pub state: String,
    /// Why it waits or ended, e.g. Resources, Priority, None.
    pub reason: String,
    /// The node(s) it runs or ran on; None while pending.
    pub node: Option<String>,
}

const POLL_FORMAT: &str = "%i|%T|%N|%r";

/// One `squeue` call for all of `job_ids`. It lists every job of this user in every state
/// (`-t all`) and keeps the asked-for ones, because `squeue -j` fails on an id Slurm has purged;
/// jobs Slurm no longer knows are simply absent from the map.
pub async fn poll(job_ids: &[String]) -> anyhow::Result<HashMap<String, JobInfo>> {
    if job_ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Only this user's jobs (the server submitted them): less to list on a busy cluster.
    let user = std::fs::metadata("/proc/self").map(|m| format!("--user={}", m.uid())).ok();
    let mut args = vec!["-h", "-t", "all", "-o", POLL_FORMAT];
    args.extend(user.as_deref());
    let out = run("squeue", &args).await?;
    Ok(parse_squeue(&out, job_ids))
}

fn parse_squeue(out: &str, job_ids: &[String]) -> HashMap<String, JobInfo> {
    let wanted: HashSet<&str> = job_ids.iter().map(|s| s.as_str()).collect();
    let mut jobs = HashMap::new();
    for line in out.lines() {
        let mut f = line.splitn(4, '|');
        let (Some(id), Some(state), Some(node), Some(reason)) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        let id = id.trim();
        if !wanted.contains(id) {
            continue;
        }
        let node = node.trim();
        let info = JobInfo {
            state: state.trim().to_string(),
            reason: reason.trim().to_string(),
            node: (!node.is_empty() && node != "(null)").then(|| node.to_string()),
        };
        jobs.insert(id.to_string(), info);
    }
    jobs
}

/// `scancel -b --signal=<sig> <id>`: the signal reaches the batch shell (our supervisor).
pub async fn signal(job_id: &str, sig: &str) -> anyhow::Result<()> {
    run("scancel", &["-b", &format!("--signal={sig}"), job_id]).await.map(drop)
}

/// Plain `scancel <id>`: SIGCONT + SIGTERM to the job, SIGKILL after Slurm's KillWait.
pub async fn cancel(job_id: &str) -> anyhow::Result<()> {
    run("scancel", &[job_id]).await.map(drop)
}

/// A node of a partition as `sinfo` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    /// idle, mixed, allocated, drained, down, … (a `*` suffix: not responding).
    pub state: String,
    pub cpus: u32,
    /// Generic resources, e.g. `gpu:4`; empty when none.
    pub gres: String,
    /// The partition (without sinfo's `*` default marker).
    pub partition: String,
}

const NODES_FORMAT: &str = "%N|%T|%c|%P|%G";

/// `sinfo -N -h -o …` for one partition, or all when None (a node in two partitions is listed
/// twice).
pub async fn nodes(partition: Option<&str>) -> anyhow::Result<Vec<NodeInfo>> {
    let mut args = vec!["-N", "-h", "-o", NODES_FORMAT];
    let p;
    if let Some(part) = partition {
        p = format!("--partition={part}");
        args.push(&p);
    }
    let out = run("sinfo", &args).await?;
    parse_sinfo(&out)
}

fn parse_sinfo(out: &str) -> anyhow::Result<Vec<NodeInfo>> {
    let mut nodes = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.splitn(5, '|').map(str::trim).collect();
        let [name, state, cpus, partition, gres] = f[..] else {
            bail!("unexpected sinfo line {line:?}");
        };
        let cpus = cpus.parse().map_err(|_| anyhow!("sinfo: unexpected CPU count in {line:?}"))?;
        let gres = if gres == "(null)" { "" } else { gres };
        nodes.push(NodeInfo {
            name: name.to_string(),
            state: state.to_string(),
            cpus,
            gres: gres.to_string(),
            partition: partition.trim_end_matches('*').to_string(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(r: &'a SlurmResources, command: &'a [String], env: &'a [(String, String)]) -> JobSpec<'a> {
        JobSpec {
            job_name: "crt-7",
            workdir: Path::new("/data/runs/7"),
            output: Path::new("/data/runs/7/attempt-1/slurm.out"),
            command,
            resources: r,
            signal_grace_secs: 30,
            env,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn script_is_exact_and_quoted() {
        let r = SlurmResources {
            partition: Some("gpu".into()),
            cpus: Some(4),
            mem_mb: Some(8000),
            time_limit_min: Some(90),
            gpus: Some(2),
            extra_args: strings(&["--account=lab", "--comment=a b # c"]),
        };
        let cmd = strings(&["/opt/crt/crt-trainer", "supervise", "it's a test", "--", "x y"]);
        let env = vec![("CRT_RUN".to_string(), "7".to_string()), ("CRT_NOTE".to_string(), "a 'b'".to_string())];
        let got = batch_script(&spec(&r, &cmd, &env));
        let want = r#"#!/bin/bash
#SBATCH --job-name=crt-7
#SBATCH --output=/data/runs/7/attempt-1/slurm.out
#SBATCH --chdir=/data/runs/7
#SBATCH --signal=B:USR1@30
#SBATCH --partition=gpu
#SBATCH --cpus-per-task=4
#SBATCH --mem=8000M
#SBATCH --time=90
#SBATCH --gres=gpu:2
#SBATCH --account=lab
#SBATCH "--comment=a b # c"
export CRT_RUN=7
export 'CRT_NOTE=a '\''b'\'''
exec /opt/crt/crt-trainer supervise 'it'\''s a test' -- 'x y'
"#;
        assert_eq!(got, want);
        assert_eq!(got, batch_script(&spec(&r, &cmd, &env)), "deterministic");
    }

    #[test]
    fn script_without_resources_has_only_the_fixed_lines() {
        let r = SlurmResources::default();
        let cmd = strings(&["true"]);
        let got = batch_script(&spec(&r, &cmd, &[]));
        for absent in ["--partition", "--cpus-per-task", "--mem", "--time", "--gres"] {
            assert!(!got.contains(absent), "{absent} in\n{got}");
        }
        for present in ["--job-name=crt-7", "--output=", "--chdir=/data/runs/7", "--signal=B:USR1@30"] {
            assert!(got.contains(&format!("#SBATCH {present}")), "{present} missing in\n{got}");
        }
        assert!(got.ends_with("\nexec true\n"), "{got}");
        // Zero GPUs: no --gres line (a cluster without GresTypes=gpu rejects --gres=gpu:0).
        let r = SlurmResources { gpus: Some(0), ..Default::default() };
        assert!(!batch_script(&spec(&r, &cmd, &[])).contains("--gres"));
        let r = SlurmResources { gpus: Some(1), ..Default::default() };
        assert!(batch_script(&spec(&r, &cmd, &[])).contains("#SBATCH --gres=gpu:1\n"));
    }

    #[test]
    fn sbatch_lines_quote_paths() {
        let r = SlurmResources::default();
        let cmd = strings(&["true"]);
        let s = JobSpec {
            workdir: Path::new("/data/my runs/#1"),
            output: Path::new("/data/my runs/50%/slurm.out"),
            job_name: "a\"b",
            ..spec(&r, &cmd, &[])
        };
        let got = batch_script(&s);
        assert!(got.contains("#SBATCH \"--chdir=/data/my runs/#1\"\n"), "{got}");
        assert!(got.contains("#SBATCH \"--output=/data/my runs/50%%/slurm.out\"\n"), "{got}");
        assert!(got.contains("#SBATCH \"--job-name=a\\\"b\"\n"), "{got}");
        let s = JobSpec { job_name: "x\ny", ..spec(&r, &cmd, &[]) };
        assert!(batch_script(&s).contains("#SBATCH --job-name=x_y\n"));
    }

    /// The script is plain bash below the #SBATCH comments: run it and see the argv arrive intact.
    #[test]
    fn script_runs_under_bash_with_arguments_intact() {
        let dir = tempfile::tempdir().unwrap();
        let tricky = "it's a \"test\" $HOME `id` \\ *".to_string();
        let cmd = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            r#"printf '%s|%s' "$1" "$CRT_V" > out.txt"#.to_string(),
            "sh".to_string(),
            tricky.clone(),
        ];
        let env = vec![("CRT_V".to_string(), "v'1 $x".to_string())];
        let r = SlurmResources::default();
        let script = dir.path().join("job.sbatch");
        std::fs::write(&script, batch_script(&spec(&r, &cmd, &env))).unwrap();
        let st = std::process::Command::new("bash").arg(&script).current_dir(dir.path()).status().unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), format!("{tricky}|v'1 $x"));
    }

    #[test]
    fn shell_quote_cases() {
        assert_eq!(shell_quote("abc-1.2/x=y"), "abc-1.2/x=y");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$x;rm"), "'$x;rm'");
    }

    #[test]
    fn or_fills_gaps() {
        let defaults = SlurmResources {
            partition: Some("debug".into()),
            cpus: Some(2),
            mem_mb: Some(4000),
            time_limit_min: Some(60),
            gpus: Some(0),
            extra_args: strings(&["--account=lab"]),
        };
        assert_eq!(SlurmResources::default().or(&defaults), defaults);
        let run = SlurmResources { cpus: Some(8), gpus: Some(1), ..Default::default() };
        let got = run.or(&defaults);
        assert_eq!(got.cpus, Some(8));
        assert_eq!(got.gpus, Some(1));
        assert_eq!(got.partition.as_deref(), Some("debug"));
        assert_eq!(got.mem_mb, Some(4000));
        assert_eq!(got.time_limit_min, Some(60));
        assert_eq!(got.extra_args, strings(&["--account=lab"]));
        let run = SlurmResources { extra_args: strings(&["--qos=high"]), ..Default::default() };
        assert_eq!(run.or(&defaults).extra_args, strings(&["--qos=high"]), "a run's list replaces the default");
        assert_eq!(defaults.or(&SlurmResources::default()), defaults);
    }

    #[test]
    fn validate_bounds() {
        let ok = |r: SlurmResources| assert_eq!(r.validate(), Ok(()), "{r:?}");
        let bad = |r: SlurmResources, field: &str| match r.validate() {
            Err((f, msg)) => {
                assert_eq!(f, field, "{r:?}: {msg}");
                assert!(!msg.is_empty());
            }
            Ok(()) => panic!("{r:?} passed; expected an error for {field}"),
        };
        let d = SlurmResources::default;
        ok(d());
        ok(SlurmResources {
            partition: Some("gpu-a100_x.2".into()),
            cpus: Some(256),
            mem_mb: Some(4_194_304),
            time_limit_min: Some(525_600),
            gpus: Some(16),
            extra_args: vec!["--x".to_string(); 16],
        });
        ok(SlurmResources { cpus: Some(1), mem_mb: Some(1), time_limit_min: Some(1), gpus: Some(0), ..d() });

        bad(SlurmResources { partition: Some(String::new()), ..d() }, "partition");
        bad(SlurmResources { partition: Some("a b".into()), ..d() }, "partition");
        bad(SlurmResources { partition: Some("a\nb".into()), ..d() }, "partition");
        bad(SlurmResources { cpus: Some(0), ..d() }, "cpus");
        bad(SlurmResources { cpus: Some(257), ..d() }, "cpus");
        bad(SlurmResources { mem_mb: Some(0), ..d() }, "mem_mb");
        bad(SlurmResources { mem_mb: Some(4_194_305), ..d() }, "mem_mb");
        bad(SlurmResources { time_limit_min: Some(0), ..d() }, "time_limit_min");
        bad(SlurmResources { time_limit_min: Some(525_601), ..d() }, "time_limit_min");
        bad(SlurmResources { gpus: Some(17), ..d() }, "gpus");
        bad(SlurmResources { extra_args: vec!["--x".into(); 17], ..d() }, "extra_args");
        bad(SlurmResources { extra_args: vec!["-x".into()], ..d() }, "extra_args");
        bad(SlurmResources { extra_args: vec!["x".into()], ..d() }, "extra_args");
        bad(SlurmResources { extra_args: vec![format!("--{}", "a".repeat(199))], ..d() }, "extra_args");
        ok(SlurmResources { extra_args: vec![format!("--{}", "a".repeat(198))], ..d() });
        bad(SlurmResources { extra_args: vec!["--comment=a\nb".into()], ..d() }, "extra_args");
        bad(SlurmResources { extra_args: vec!["--comment=a\rb".into()], ..d() }, "extra_args");
    }

    #[test]
    fn deserialize_rejects_unknown_fields() {
        let r: SlurmResources = serde_json::from_str(r#"{"cpus": 2}"#).unwrap();
        assert_eq!(r, SlurmResources { cpus: Some(2), ..Default::default() });
        assert!(serde_json::from_str::<SlurmResources>(r#"{"cpu": 2}"#).is_err());
    }

    #[test]
    fn squeue_output_is_filtered_and_parsed() {
        let out = "12|RUNNING|node1|None\n13|PENDING||Resources\n99|COMPLETED|node2|None\n14|CANCELLED|node1|None\n";
        let ids = strings(&["12", "13", "14", "404"]);
        let got = parse_squeue(out, &ids);
        assert_eq!(got.len(), 3);
        assert_eq!(got["12"], JobInfo { state: "RUNNING".into(), reason: "None".into(), node: Some("node1".into()) });
        assert_eq!(got["13"], JobInfo { state: "PENDING".into(), reason: "Resources".into(), node: None });
        assert_eq!(got["14"].state, "CANCELLED");
        assert!(!got.contains_key("99") && !got.contains_key("404"));
    }

    #[test]
    fn sinfo_output_is_parsed() {
        let out = "vm|idle|8|debug*|(null)\ng1|mixed|64|gpu|gpu:a100:4\n";
        let got = parse_sinfo(out).unwrap();
        assert_eq!(
            got[0],
            NodeInfo { name: "vm".into(), state: "idle".into(), cpus: 8, gres: "".into(), partition: "debug".into() }
        );
        assert_eq!(got[1].gres, "gpu:a100:4");
        assert_eq!(got[1].partition, "gpu");
        assert!(parse_sinfo("garbage").is_err());
    }
}
