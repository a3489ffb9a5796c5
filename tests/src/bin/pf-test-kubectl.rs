//! MOCK kubectl — the one mock of the patching tests: there is no Kubernetes API server here, so
//! the simulator's kubectl stand-in answers the patcher's calls from a JSON file of node state
//! (`--state FILE`, first). What it answers and the state's shape: [`proxflow_pve_sim::kubectl`].

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match proxflow_pve_sim::kubectl::run(&args) {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
