//! Listing NVIDIA GPUs with `nvidia-smi`: one query gives both the inventory and the live load.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::process::Command;

/// The query the server runs (`--query-gpu` fields in the order [`parse`] expects).
pub const QUERY_ARGS: [&str; 2] =
    ["--query-gpu=index,name,uuid,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"];

/// nvidia-smi can hang for many seconds on a wedged driver; a query must not hold up the server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One GPU as nvidia-smi reports it. `index` is the PCI-bus order, the order CUDA uses too when
/// the trainer runs with `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    /// None where the driver prints `[N/A]` or `[Not Supported]` (e.g. for MIG instances).
    pub utilization_pct: Option<f64>,
    pub memory_used_mib: Option<u64>,
    pub memory_total_mib: Option<u64>,
}

/// A line of nvidia-smi's output that is not a GPU record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct BadLine {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// What one run of nvidia-smi found.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// No nvidia-smi at that path: a machine without NVIDIA GPUs, not an error.
    Absent,
    /// It answered; lines that are not GPU records are set aside, not fatal.
    Listed { gpus: Vec<Gpu>, bad_lines: Vec<BadLine> },
    /// It exists but failed, e.g. "couldn't communicate with the NVIDIA driver".
    Failed(String),
}

/// Runs `program` with [`QUERY_ARGS`].
pub async fn query(program: &Path) -> Query {
    let child = Command::new(program)
        .args(QUERY_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Query::Absent,
        Err(e) => return Query::Failed(format!("cannot run {}: {e}", program.display())),
    };
    let output = match tokio::time::timeout(QUERY_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Query::Failed(format!("{}: {e}", program.display())),
        Err(_) => return Query::Failed(format!("{} did not answer within {QUERY_TIMEOUT:?}", program.display())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // nvidia-smi prints its errors on stdout ("No devices were found" exits with 6).
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = [stdout.trim(), stderr.trim()].into_iter().find(|s| !s.is_empty()).unwrap_or("no output");
        let first = said.lines().next().unwrap_or(said);
        return Query::Failed(format!("{} exited with {}: {first}", program.display(), output.status));
    }
    let (gpus, bad_lines) = parse(&stdout);
    Query::Listed { gpus, bad_lines }
}

/// Parses `index, name, uuid, utilization.gpu, memory.used, memory.total` lines, sorted by
/// index. Fields are taken from both ends of the line, because a GPU name may contain a comma
/// and the other fields never do.
pub fn parse(output: &str) -> (Vec<Gpu>, Vec<BadLine>) {
    let mut gpus: Vec<Gpu> = Vec::new();
    let mut bad = Vec::new();
    for (i, text) in output.lines().enumerate() {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let reject = |reason: String| BadLine { line: i + 1, text: text.to_string(), reason };
        match parse_line(text) {
            Ok(gpu) if gpus.iter().any(|g| g.index == gpu.index) => {
                bad.push(reject(format!("GPU index {} is listed twice", gpu.index)))
            }
            Ok(gpu) => gpus.push(gpu),
            Err(reason) => bad.push(reject(reason)),
        }
    }
    gpus.sort_by_key(|g| g.index);
    (gpus, bad)
}

fn parse_line(text: &str) -> Result<Gpu, String> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    if fields.len() < 6 {
        return Err(format!("expected 6 comma-separated fields, got {}", fields.len()));
    }
    let n = fields.len();
    let index = fields[0].parse::<u32>().map_err(|_| format!("index {:?} is not a GPU index", fields[0]))?;
    let name = fields[1..n - 4].join(", ");
    let uuid = fields[n - 4];
    if name.is_empty() || uuid.is_empty() {
        return Err("empty name or uuid".into());
    }
    Ok(Gpu {
        index,
        name,
        uuid: uuid.to_string(),
        utilization_pct: number("utilization.gpu", fields[n - 3])?,
        memory_used_mib: number("memory.used", fields[n - 2])?,
        memory_total_mib: number("memory.total", fields[n - 1])?,
    })
}

/// A number, or None for the driver's "[N/A]" / "[Not Supported]" placeholders.
fn number<T: std::str::FromStr>(what: &str, field: &str) -> Result<Option<T>, String> {
    if field.starts_with('[') && field.ends_with(']') {
        return Ok(None);
    }
    field.parse::<T>().map(Some).map_err(|_| format!("{what} {field:?} is not a number"))
}

/// Writes an executable `#!/bin/sh` script for tests, through a child process: a write descriptor
/// held by the (multi-threaded, forking) test process could leak into another test's child
/// between fork and exec, and running the script would then fail with ETXTBSY.
#[cfg(test)]
pub(crate) fn write_script(path: &Path, body: &str) {
    use std::io::Write;
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1.tmp\" && chmod 755 \"$1.tmp\" && mv \"$1.tmp\" \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    writer.stdin.take().expect("stdin").write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).expect("write");
    assert!(writer.wait().expect("wait").success(), "cannot write {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &str = "0, NVIDIA H100 80GB HBM3, GPU-4bd0a3b4-1c11-2e5a-9cc3-5d0c2c1d0a11, 37, 1024, 81559";
    const A100: &str = "1, NVIDIA A100-SXM4-40GB, GPU-7f1e0c2d-aaaa-bbbb-cccc-0123456789ab, 0, 0, 40960";

    #[test]
    fn no_gpus() {
        assert_eq!(parse(""), (vec![], vec![]));
        assert_eq!(parse("\n  \n"), (vec![], vec![]));
    }

    #[test]
    fn one_gpu() {
        let (gpus, bad) = parse(&format!("{H100}\n"));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            gpus,
            vec![Gpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-4bd0a3b4-1c11-2e5a-9cc3-5d0c2c1d0a11".into(),
                utilization_pct: Some(37.0),
                memory_used_mib: Some(1024),
                memory_total_mib: Some(81559),
            }]
        );
    }

    #[test]
    fn two_gpus_sorted_by_index_with_crlf() {
        let (gpus, bad) = parse(&format!("{A100}\r\n{H100}\r\n"));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(gpus[1].name, "NVIDIA A100-SXM4-40GB");
        assert_eq!(gpus[1].memory_total_mib, Some(40960));
    }

    #[test]
    fn placeholders_and_commas_in_names() {
        let (gpus, bad) = parse("0, NVIDIA H100, MIG 1g.10gb, MIG-abc, [N/A], [Not Supported], 9984");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(gpus[0].name, "NVIDIA H100, MIG 1g.10gb");
        assert_eq!(gpus[0].uuid, "MIG-abc");
        assert_eq!((gpus[0].utilization_pct, gpus[0].memory_used_mib), (None, None));
        assert_eq!(gpus[0].memory_total_mib, Some(9984));
    }

    #[test]
    fn malformed_lines_are_set_aside() {
        let text = format!(
            "No devices were found\n{H100}\nx, name, GPU-1, 1, 2, 3\n0, again, GPU-2, 1, 2, 3\n1, a, GPU-3, busy, 2, 3\n1, a, b\n{A100}"
        );
        let (gpus, bad) = parse(&text);
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        let reasons: Vec<(usize, &str)> = bad.iter().map(|b| (b.line, b.reason.as_str())).collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert_eq!(reasons[0].0, 1);
        assert!(reasons[0].1.contains("6 comma-separated"), "{reasons:?}");
        assert!(reasons[1].1.contains("not a GPU index"), "{reasons:?}");
        assert!(reasons[2].1.contains("listed twice"), "{reasons:?}");
        assert!(reasons[3].1.contains("utilization.gpu"), "{reasons:?}");
        assert!(bad[4].to_string().starts_with("line 6:"), "{}", bad[4]);
    }

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let path = dir.join("nvidia-smi");
        write_script(&path, body);
        path
    }

    #[tokio::test]
    async fn queries_a_real_program() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(query(&dir.path().join("missing")).await, Query::Absent);

        // The arguments reach the program as the real nvidia-smi expects them.
        let ok = script(
            dir.path(),
            &format!("[ \"$1 $2\" = \"{} {}\" ] || exit 9\necho '{H100}'", QUERY_ARGS[0], QUERY_ARGS[1]),
        );
        match query(&ok).await {
            Query::Listed { gpus, bad_lines } => assert_eq!((gpus.len(), bad_lines.len()), (1, 0)),
            other => panic!("{other:?}"),
        }

        let failing = script(
            dir.path(),
            "echo 'NVIDIA-SMI has failed because it couldn'\\''t communicate with the NVIDIA driver'; exit 9",
        );
        match query(&failing).await {
            Query::Failed(msg) => assert!(msg.contains("couldn't communicate") && msg.contains('9'), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
