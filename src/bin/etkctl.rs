//! `etkctl`: the operator's command line (see `etjanstekort_gateway::ctl`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    etjanstekort_gateway::ctl::main()
}
