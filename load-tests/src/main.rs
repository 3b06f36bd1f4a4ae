//! `cascade-load`: parse flags, run the load, print the report.

use clap::Parser;

use cascade_load::cli::Args;
use cascade_load::report;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cascade-load: error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(cascade_load::execute(&config)) {
        Ok(summary) => {
            print!("{}", report::render(&summary));
            if let Some(path) = &config.out {
                println!("summary written to {}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cascade-load: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
