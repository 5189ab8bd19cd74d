//! The real Radicale 3.9.0 the CalDAV tests run against (there is no CalDAV emulator: a real
//! server is the better oracle). `.ci/run` starts it and exports `CALLSIDE_RADICALE_URL`; under
//! `CI=true` a missing URL fails the tests (they never skip in CI). Locally the first test that
//! needs it starts one through `tests/radicale/start.sh`, tied to the test process (it stops when
//! the process exits). Used by the connector's unit tests and the service tests in `tests/api`.

use std::sync::OnceLock;

/// Radicale's base URL (e.g. `http://127.0.0.1:5232/`); panics with a clear message if it
/// cannot be had.
pub fn url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("CALLSIDE_RADICALE_URL")
            && !url.trim().is_empty()
        {
            return Ok(url.trim().to_owned());
        }
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            return Err("CALLSIDE_RADICALE_URL is not set under CI=true: the CalDAV tests need the Radicale that \
                        .ci/run starts (tests/radicale/start.sh); they never skip in CI"
                .to_owned());
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/radicale/start.sh");
        let output = std::process::Command::new("bash")
            .arg(script)
            .env("RADICALE_WATCH_PID", std::process::id().to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|err| format!("could not run {script}: {err}"))?;
        let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || url.is_empty() {
            return Err(format!(
                "starting Radicale with {script} failed ({}). Run it yourself and export \
                 CALLSIDE_RADICALE_URL=$(tests/radicale/start.sh), or see its output above",
                output.status
            ));
        }
        Ok(url)
    })
    .clone()
    .unwrap_or_else(|err| panic!("{err}"))
}
