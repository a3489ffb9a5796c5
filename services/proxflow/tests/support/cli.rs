//! Running the `proxflow` binary as an operator would, for the CLI tests: only the `PROXFLOW_*`
//! settings the test gives, none inherited from the environment running the tests.
#![allow(dead_code)]

use std::process::{Command, Output};

/// `proxflow` with no `PROXFLOW_*` variable from the test's environment and quiet logs; the caller
/// adds its settings, arguments and pipes.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxflow"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROXFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs `proxflow <args>` with exactly the `PROXFLOW_*` variables of `env`.
pub fn proxflow(env: &[(&str, String)], args: &[&str]) -> Output {
    command()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .expect("proxflow runs")
}

/// Output bytes as text.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}
