//! MOCK `ssh root@host apt-get -y full-upgrade` of the patching tests: there is no Debian host
//! here, so the host's upgrade is asked of the simulated host — the Proxmox simulator's control
//! API ([`proxflow_pve_sim::control::host_upgrade`]). Arguments: the simulator's base URL (plain
//! HTTP, as the tests run it), its token id and secret. Prints the answer; exits 0 when the upgrade
//! went through, 1 (with the message) when it failed.

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, token_id, secret] = args.as_slice() else {
        eprintln!("usage: pf-test-ssh <sim base url> <token id> <secret>");
        std::process::exit(2);
    };
    let http = reqwest::Client::new();
    match proxflow_pve_sim::control::host_upgrade(&http, base, token_id, secret).await {
        Ok(answer) => println!("{answer}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
