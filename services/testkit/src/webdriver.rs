//! A real browser for the console tests: headless Chromium driven over W3C WebDriver by
//! `chromedriver` (Debian's `chromium` and `chromium-driver`, installed by the test command). Only
//! what the tests use: navigate, find, click, type, read text and attributes, cookies, screenshots.
//! A missing browser is an error naming the packages, never a skipped test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Why the browser could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// chromium or chromedriver is not installed.
    #[error(
        "{0} not found: install Debian's chromium and chromium-driver (deploy/dev/install-tools.sh test)"
    )]
    Missing(&'static str),
    /// chromedriver could not be started or did not become ready.
    #[error("chromedriver: {0}")]
    Driver(String),
    /// A WebDriver command failed.
    #[error("webdriver {command}: {message}")]
    Command {
        /// The command.
        command: String,
        /// What the driver said.
        message: String,
    },
    /// Writing a screenshot.
    #[error("writing {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

fn which(candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in candidates {
        let absolute = Path::new(name);
        if absolute.is_absolute() && absolute.exists() {
            return Some(absolute.to_owned());
        }
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.exists() {
                return Some(candidate);
            }
        }
    }
    None
}

fn free_port() -> Result<u16, BrowserError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BrowserError::Driver(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| BrowserError::Driver(e.to_string()))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a phone-or-laptop sized window.
    pub async fn start(width: u32, height: u32) -> Result<Self, BrowserError> {
        let driver_bin = which(&["chromedriver", "/usr/bin/chromedriver"])
            .ok_or(BrowserError::Missing("chromedriver"))?;
        let chromium = which(&["chromium", "chromium-browser", "/usr/bin/chromium"])
            .ok_or(BrowserError::Missing("chromium"))?;
        let port = free_port()?;
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BrowserError::Driver(format!("{}: {e}", driver_bin.display())))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .ok();
            if let Some(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Driver("not ready within 20 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = browser
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({
                    "capabilities": { "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": chromium,
                            "args": [
                                "--headless=new", "--no-sandbox", "--disable-gpu",
                                "--disable-dev-shm-usage", "--no-first-run",
                                format!("--window-size={width},{height}"),
                            ]
                        }
                    }}
                })),
            )
            .await?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Driver(format!("no session id in {answer}")))?
            .to_owned();
        Ok(browser)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BrowserError> {
        let command = format!("{method} {path}");
        let url = format!("{}{path}", self.base);
        let request = self.http.request(method, url);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        let response = request.send().await.map_err(|e| BrowserError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
        let ok = response.status().is_success();
        let value: Value = response.json().await.map_err(|e| BrowserError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
        if !ok {
            return Err(BrowserError::Command {
                command,
                message: value["value"]["message"]
                    .as_str()
                    .unwrap_or("error")
                    .to_owned(),
            });
        }
        Ok(value["value"].clone())
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.call(
            reqwest::Method::POST,
            &self.path("/url"),
            Some(json!({ "url": url })),
        )
        .await
        .map(drop)
    }

    /// The current page's URL.
    pub async fn url(&self) -> Result<String, BrowserError> {
        let v = self
            .call(reqwest::Method::GET, &self.path("/url"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> Result<Element<'_>, BrowserError> {
        let v = self
            .call(
                reqwest::Method::POST,
                &self.path("/element"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(Element {
            browser: self,
            id: v[ELEMENT_KEY].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Every element matching `css`.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>, BrowserError> {
        let v = self
            .call(
                reqwest::Method::POST,
                &self.path("/elements"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(v.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|e| Element {
                        browser: self,
                        id: e[ELEMENT_KEY].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The value of cookie `name` as the browser holds it.
    pub async fn cookie(&self, name: &str) -> Result<Value, BrowserError> {
        self.call(
            reqwest::Method::GET,
            &self.path(&format!("/cookie/{name}")),
            None,
        )
        .await
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let v = self
            .call(reqwest::Method::GET, &self.path("/screenshot"), None)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| BrowserError::Command {
                command: "screenshot".into(),
                message: e.to_string(),
            })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| BrowserError::Io(dir.to_owned(), e))?;
        }
        std::fs::write(path, png).map_err(|e| BrowserError::Io(path.to_owned(), e))
    }

    /// Resizes the window (to look at a page as a phone would).
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), BrowserError> {
        self.call(
            reqwest::Method::POST,
            &self.path("/window/rect"),
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(drop)
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Result<Value, BrowserError> {
        self.call(
            reqwest::Method::POST,
            &self.path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }
}

impl Element<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        rest: &str,
        body: Option<Value>,
    ) -> Result<Value, BrowserError> {
        self.browser
            .call(
                method,
                &self.browser.path(&format!("/element/{}{rest}", self.id)),
                body,
            )
            .await
    }

    /// Clicks it.
    pub async fn click(&self) -> Result<(), BrowserError> {
        self.call(reqwest::Method::POST, "/click", Some(json!({})))
            .await
            .map(drop)
    }

    /// Types `text` into it.
    pub async fn type_text(&self, text: &str) -> Result<(), BrowserError> {
        self.call(
            reqwest::Method::POST,
            "/value",
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// Its rendered text.
    pub async fn text(&self) -> Result<String, BrowserError> {
        let v = self.call(reqwest::Method::GET, "/text", None).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Attribute `name`, if set.
    pub async fn attribute(&self, name: &str) -> Result<Option<String>, BrowserError> {
        let v = self
            .call(reqwest::Method::GET, &format!("/attribute/{name}"), None)
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }
}

impl Browser {
    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn quit(mut self) {
        let path = self.path("");
        if self
            .call(reqwest::Method::DELETE, &path, None)
            .await
            .is_ok()
        {
            self.session.clear();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group, Chromium and its helpers included: killing the
        // group leaves no browser behind, even after a test panicked before `quit`.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}
