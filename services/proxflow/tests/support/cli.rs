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

/// [`proxflow`] from a test's async code: on a blocking thread, so the services the test runs in
/// its own runtime keep serving while the binary talks to them.
pub async fn run(env: &[(&'static str, String)], args: &[&str]) -> Output {
    let env = env.to_vec();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        proxflow(&env, &args)
    })
    .await
    .expect("the blocking thread joins")
}

/// Runs `proxflow <args>` that must succeed; its standard output.
pub async fn stdout_of(env: &[(&'static str, String)], args: &[&str]) -> String {
    let out = run(env, args).await;
    assert!(
        out.status.success(),
        "proxflow {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `proxflow <args> --json` that must succeed; its output as JSON.
pub async fn json_of(env: &[(&'static str, String)], args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = stdout_of(env, &args).await;
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("proxflow {args:?}: not JSON ({e}):\n{out}"))
}

/// Output bytes as text.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Whether every line of a table starts its columns where its header line starts them: the
/// header's words are the columns, each value begins at its header's offset.
pub fn assert_aligned(table: &str) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|(i, c)| !c.is_whitespace() && (*i == 0 || header[..*i].ends_with(' ')))
        .map(|(i, _)| i)
        .collect();
    assert!(starts.len() > 1, "a header of columns: {header:?}");
    for line in lines.filter(|l| !l.trim().is_empty()) {
        for &start in &starts[1..] {
            let before = line.get(..start).unwrap_or(line);
            assert!(
                before.ends_with(' ') && line.get(start..start + 1).is_some_and(|c| c != " "),
                "column at {start} of {header:?} misaligned in {line:?}\n{table}"
            );
        }
    }
}
