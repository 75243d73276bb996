//! rtpvisor: read the configuration, run the service, exit 0 after an orderly shutdown.
//! `rtpvisor loadgen ...` and `rtpvisor check ...` are operator commands with flags of their own.
use clap::Parser;
use rtpvisor::config::{Cli, Config};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args();
    if let Some(command @ ("loadgen" | "check")) = args.nth(1).as_deref() {
        let argv = std::iter::once(command.to_string()).chain(args).collect();
        let code = if command == "loadgen" { rtpvisor::loadgen::main(argv) } else { rtpvisor::check::main(argv) };
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let cfg = match Config::load(&cli, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rtpvisor: {e}");
            std::process::exit(2);
        }
    };
    if cli.print_config {
        print!("{}", cfg.to_toml_redacted());
        return Ok(());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    actix_rt::System::new().block_on(rtpvisor::app::run(cfg))
}
