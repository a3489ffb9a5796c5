//! MOCK `ssh root@host apt-get -y full-upgrade` of the patching tests: there is no Debian host
//! here, so the host's upgrade is asked of the simulated host — the Proxmox simulator's control
//! API (`POST /_sim/host/upgrade`). Arguments: the simulator's base URL, its token id and secret.
//! Prints the answer; exits 0 when the upgrade went through, 1 (with the message) when it failed.

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, token_id, secret] = args.as_slice() else {
        eprintln!("usage: pf-test-ssh <sim base url> <token id> <secret>");
        std::process::exit(2);
    };
    let answer = reqwest::Client::new()
        .post(format!("{}/_sim/host/upgrade", base.trim_end_matches('/')))
        .header("Authorization", format!("PVEAPIToken={token_id}={secret}"))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => {
            println!("{}", r.text().await.unwrap_or_default());
        }
        Ok(r) => {
            eprintln!("{}: {}", r.status(), r.text().await.unwrap_or_default());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
