//! `cascade-load`: parse flags, run the load, print the report.

use clap::Parser;

use cascade_load::cli::{Args, Config};
use cascade_load::find_max::Progress;
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
    if config.find_max.is_some() {
        return find_max(&runtime, &config);
    }
    let result = runtime.block_on(cascade_load::execute(&config));
    finish(result, report::render, &config)
}

/// Prints the final report (and where the JSON summary went), or the error.
fn finish<S>(
    result: anyhow::Result<S>,
    render: impl Fn(&S) -> String,
    config: &Config,
) -> std::process::ExitCode {
    match result {
        Ok(summary) => {
            print!("{}", render(&summary));
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

/// `--find-max`: each step's line as soon as it ends, then the verdict.
fn find_max(runtime: &tokio::runtime::Runtime, config: &Config) -> std::process::ExitCode {
    let run = cascade_load::execute_find_max(config, |progress| {
        match progress {
            Progress::Start(header, settings) => {
                print!("{}", report::find_max_intro(header, settings))
            }
            Progress::Step(step) => print!("{}", report::step_line(step)),
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
    });
    finish(runtime.block_on(run), report::find_max_verdict, config)
}
