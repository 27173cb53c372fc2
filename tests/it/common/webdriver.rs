//! Headless Chromium driven through chromedriver's W3C WebDriver HTTP API, with reqwest:
//! no WebDriver crate, the protocol is a handful of JSON POSTs.
//!
//! [`Browser::start`] starts `chromedriver` on a free port and opens a session with a
//! fresh profile in a temp dir; dropping the `Browser` ends the session (which closes
//! Chromium) and then kills chromedriver. A missing `chromium` or `chromedriver` is a
//! panic that names the Debian package, never a skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::net::free_port;
use super::process::Owned;
use super::tools::{CHROMEDRIVER, CHROMIUM};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer `/status`, and Chromium to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A WebDriver session of a headless Chromium, ended when dropped.
pub struct Browser {
    client: Client,
    base: String,
    session: String,
    port: u16,
    dir: TempDir,
    driver: Owned,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window 1280x900).
    pub async fn start() -> Browser {
        let (chromium, chromedriver) = (CHROMIUM.path(), CHROMEDRIVER.path());
        let dir = tempfile::Builder::new()
            .prefix("imagersync-browser-")
            .tempdir()
            .expect("tempdir");
        let client = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        let mut failures = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(&chromedriver);
            cmd.arg(format!("--port={port}")).arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ));
            let log = dir.path().join("chromedriver.out");
            let mut driver = Owned::spawn(&format!("chromedriver :{port}"), cmd, &log, &log);
            let base = format!("http://127.0.0.1:{port}");
            if let Err(e) = wait_ready(&client, &base, &mut driver).await {
                failures.push_str(&format!("{e}\n{}", driver.log_tail(20)));
                continue;
            }
            let profile = dir.path().join("profile");
            let args = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Containers often have a small /dev/shm; Chromium then crashes tabs.
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
            ]
            .iter()
            .map(|a| a.to_string())
            .chain([format!("--user-data-dir={}", profile.display())])
            .collect::<Vec<_>>();
            let capabilities = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
            }}});
            let answer = client
                .post(format!("{base}/session"))
                .json(&capabilities)
                .send()
                .await;
            let value = match answer {
                Ok(r) => r.json::<Value>().await.unwrap_or_default(),
                Err(e) => Value::String(e.to_string()),
            };
            match value["value"]["sessionId"].as_str() {
                Some(session) => {
                    return Browser {
                        client,
                        base,
                        session: session.to_owned(),
                        port,
                        dir,
                        driver,
                    }
                }
                None => failures.push_str(&format!(
                    "new session refused: {value}\n{}",
                    driver.log_tail(20)
                )),
            }
        }
        panic!("headless Chromium did not start through chromedriver:\n{failures}");
    }

    /// A temp dir owned by the browser, for screenshots.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method.clone(), &url);
        if method != Method::GET && method != Method::DELETE {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let value: Value = response.json().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "WebDriver {method} {path} {body}: HTTP {status}: {value}"
        );
        value["value"].clone()
    }

    /// Opens `url` and waits until the page has loaded.
    pub async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Resizes the window (CSS pixels).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    async fn element(&self, css: &str) -> String {
        let value = self
            .call(
                Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {value}"))
            .to_owned()
    }

    /// Clicks the element `css` selects, as a user would (it must be visible).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(Method::POST, &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Clears the input `css` selects and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(Method::POST, &format!("/element/{id}/clear"), json!({}))
            .await;
        self.call(
            Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Runs `script` every 100 ms until it returns something other than `null` or
    /// `false`, and returns that. After `timeout` it panics with `what`, the last value,
    /// the page's text and a screenshot in the browser's temp dir.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.execute(script).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if Instant::now() > deadline {
                let shot = self.dir().join("timeout.png");
                self.screenshot(&shot).await;
                let text = self.execute("return document.body.innerText").await;
                panic!(
                    "waited {timeout:?} for {what}; last value {value}; screenshot {}\npage text:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let value = self.call(Method::GET, "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("screenshot is base64"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    /// Ends the session so chromedriver closes Chromium and its helper processes; a
    /// plain blocking request, since `Drop` cannot await. chromedriver itself is then
    /// killed by its [`Owned`].
    fn drop(&mut self) {
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.port
        );
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.driver.log_tail(40));
        }
    }
}

async fn wait_ready(client: &Client, base: &str, driver: &mut Owned) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = driver.exited() {
            return Err(format!("chromedriver exited with {status}"));
        }
        if let Ok(r) = client
            .get(format!("{base}/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            let value: Value = r.json().await.unwrap_or_default();
            if value["value"]["ready"] == Value::Bool(true) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "chromedriver at {base} not ready after {START_TIMEOUT:?}"
    ))
}
