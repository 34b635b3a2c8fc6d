//! Browser-test harness: a real headless Chromium driven through chromedriver (WebDriver) with
//! fantoccini. Missing browser tools fail the test with instructions; they never skip it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

const INSTALL_HINT: &str = "the dashboard tests need Chromium and its WebDriver: \
     `apt-get install chromium chromium-driver` (Debian), or set CHROME_BIN and CHROMEDRIVER";

/// An executable from `env` or the first of `names` found on PATH.
fn find_tool(env: &str, names: &[&str]) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file; {INSTALL_HINT}", path.display());
        return path;
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for name in names {
        if let Some(found) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            return found;
        }
    }
    panic!("none of {names:?} is on PATH (nor is {env} set); {INSTALL_HINT}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port()
}

/// The repository's `static/vendor` must hold uPlot, which `scripts/assets.sh` copies from npm.
pub fn require_assets() {
    let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../static/vendor/uPlot.iife.min.js");
    assert!(vendor.is_file(), "{} is missing: run scripts/assets.sh (npm ci) first", vendor.display());
}

/// chromedriver plus one Chromium session; both end when this is dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    port: u16,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start(width: u32, height: u32) -> Browser {
        let chromium = find_tool("CHROME_BIN", &["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = find_tool("CHROMEDRIVER", &["chromedriver"]);
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", chromedriver.display()));
        wait_for_port(port, Duration::from_secs(20));
        let profile = tempfile::tempdir().expect("browser profile dir");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot open a Chromium session through chromedriver: {e}; {INSTALL_HINT}"));
        let session = client.session_id().await.ok().flatten();
        Browser { client, driver, port, session, _profile: profile }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` (returning a value, or null while not ready) until it returns non-null.
    pub async fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(script, vec![]).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if Instant::now() > deadline {
                let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
                let body = self.js("return document.body ? document.body.innerText.slice(0, 3000) : ''", vec![]).await;
                panic!(
                    "timed out after {timeout:?} waiting for {what} on {url}; the page reads:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    pub async fn wait_path(&self, what: &str, prefix: &str) -> String {
        let script = format!("return location.pathname.startsWith({prefix:?}) ? location.pathname : null");
        self.wait_js(what, Duration::from_secs(20), &script).await.as_str().unwrap_or_default().to_string()
    }

    pub async fn click(&self, css: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Replaces an input's text as a user would type it.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no input {css}: {e}"));
        el.clear().await.unwrap_or_else(|e| panic!("clearing {css}: {e}"));
        el.send_keys(text).await.unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    pub async fn select(&self, css: &str, value: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no select {css}: {e}"));
        el.select_by_value(value).await.unwrap_or_else(|e| panic!("choosing {value} in {css}: {e}"));
    }

    pub async fn text(&self, css: &str) -> String {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no element {css}: {e}"));
        el.text().await.unwrap_or_else(|e| panic!("reading {css}: {e}"))
    }

    /// Lays pages out as a phone of `width` × `height` CSS pixels would (Chromium's device
    /// emulation; a desktop window cannot be made that narrow).
    pub fn emulate_phone(&self, width: u32, height: u32) {
        let id = self.session.as_deref().expect("a WebDriver session");
        let body = json!({
            "cmd": "Emulation.setDeviceMetricsOverride",
            "params": { "width": width, "height": height, "deviceScaleFactor": 1, "mobile": true }
        });
        let response = driver_request(self.port, "POST", &format!("/session/{id}/goog/cdp/execute"), &body.to_string())
            .expect("asking chromedriver for device emulation");
        assert!(response.starts_with("HTTP/1.1 200"), "device emulation refused: {response}");
    }

    /// A PNG of the whole page at `width` pixels: the window grows until its viewport holds
    /// the page (the window's frame, if any, and reflowed charts change what is needed).
    pub async fn screenshot_page(&self, width: u32, path: &Path) {
        let mut height = 900;
        for _ in 0..4 {
            self.client.set_window_size(width, height).await.expect("resizing the window");
            // Charts follow their container's size on the next frames.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let gap = self.js("return document.documentElement.scrollHeight - window.innerHeight", vec![]).await;
            match gap.as_i64() {
                Some(gap) if gap > 0 && height < 6000 => height += gap as u32,
                _ => break,
            }
        }
        let png = self.client.screenshot().await.expect("taking a screenshot");
        std::fs::create_dir_all(path.parent().expect("screenshot dir")).expect("creating the screenshot dir");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the WebDriver session makes chromedriver quit Chromium. Drop cannot await, and
        // after a panic the async client may be gone, so this is one plain blocking request.
        if let Some(id) = self.session.take() {
            end_session(self.port, &id);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn end_session(port: u16, id: &str) {
    let _ = driver_request(port, "DELETE", &format!("/session/{id}"), "");
}

/// One blocking HTTP/1.1 request to chromedriver; returns the raw response (read up to its
/// Content-Length: chromedriver may keep the connection open).
fn driver_request(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, rest)| {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            });
            length.is_some_and(|len| rest.len() >= len)
        });
        if n == 0 || complete {
            return Ok(text.into_owned());
        }
    }
}

fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the documentation screenshots go.
pub fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}
