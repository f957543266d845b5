//! Headless Chromium for tests that look at a page as an operator would: the live DOM of
//! a page that keeps itself fresh (read over the DevTools protocol), and screenshots.
//!
//! `make integration` installs the Debian `chromium` package when it is missing. Every
//! Chromium gets a fresh profile directory and is stopped by pid (its `Proc`) when the
//! test drops it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::client::{self, Target};
use super::process::Proc;

/// Flags that keep a headless Chromium quiet, local and self-contained.
const FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The Chromium binary on PATH.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Some(path) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
        {
            return path;
        }
    }
    panic!("chromium is not installed: `make integration` installs it (apt-get install chromium)");
}

fn command(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args(FLAGS).arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn profile() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("edgepin-chromium-")
        .tempdir()
        .expect("chromium profile dir")
}

/// Load `url` at `width`×`height` and save a PNG screenshot at `path`.
pub fn screenshot(url: &str, path: &Path, (width, height): (u32, u32)) {
    let dir = profile();
    let _ = std::fs::remove_file(path);
    let mut cmd = command(dir.path());
    cmd.arg(format!("--screenshot={}", path.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg("--hide-scrollbars")
        .arg(url);
    let mut proc = Proc::spawn("chromium-screenshot", cmd, dir.path());
    let exited = proc.wait_exit(Duration::from_secs(60));
    assert!(
        exited.is_some_and(|s| s.success()),
        "chromium screenshot failed:\n{}",
        proc.log_tail(20)
    );
    let png = std::fs::read(path).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
}

/// A headless Chromium showing one page, driven over the DevTools protocol.
pub struct Browser {
    proc: Proc,
    _profile: tempfile::TempDir,
    devtools: SocketAddr,
}

impl Browser {
    /// Start Chromium on `url` and wait for its DevTools endpoint.
    pub fn open(url: &str) -> Browser {
        Browser::open_with(url, &[])
    }

    /// The same, with more Chromium flags.
    pub fn open_with(url: &str, flags: &[&str]) -> Browser {
        let dir = profile();
        let mut cmd = command(dir.path());
        cmd.args(flags);
        cmd.arg("--remote-debugging-address=127.0.0.1")
            .arg("--remote-debugging-port=0")
            .arg("--window-size=1400,1000")
            .arg(url);
        let mut proc = Proc::spawn("chromium", cmd, dir.path());
        // Chromium writes the port it chose to DevToolsActivePort in the profile.
        let port_file = dir.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()));
            if let Some(port) = port {
                break port;
            }
            assert!(proc.alive(), "chromium exited:\n{}", proc.log_tail(20));
            assert!(
                Instant::now() < deadline,
                "chromium did not open DevTools:\n{}",
                proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            proc,
            _profile: dir,
            devtools: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The DevTools WebSocket path of the page.
    async fn page_socket(&self) -> Option<String> {
        let list = client::get(&Target::plain(self.devtools), "/json/list").await.ok()?;
        let targets: serde_json::Value = serde_json::from_slice(&list.body).ok()?;
        let url = targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
            .as_str()?
            .to_string();
        Some(url)
    }

    /// Evaluate `expression` in the page; `None` while the page is between documents.
    pub async fn eval(&self, expression: &str) -> Option<serde_json::Value> {
        let url = self.page_socket().await?;
        let stream = client::connect(&Target::plain(self.devtools)).await.ok()?;
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.ok()?;
        let call = serde_json::json!({
            "id": 1,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true },
        });
        ws.send(Message::Text(call.to_string().into())).await.ok()?;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(msg)) = ws.next().await {
                let Ok(text) = msg.into_text() else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    continue;
                };
                if v["id"] == 1 {
                    return Some(v);
                }
            }
            None
        })
        .await
        .ok()??;
        let _ = ws.close(None).await;
        let result = &answer["result"];
        if result.get("exceptionDetails").is_some() {
            return None;
        }
        Some(result["result"]["value"].clone())
    }

    /// The rendered DOM of the current document.
    pub async fn dom(&self) -> Option<String> {
        let v = self.eval("document.documentElement.outerHTML").await?;
        v.as_str().map(str::to_string)
    }

    /// Chromium's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}
