//! rtpvisor: read the configuration, run the service, exit 0 after an orderly shutdown.
use clap::Parser;
use rtpvisor::config::{Cli, Config};

fn main() -> anyhow::Result<()> {
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
