//! `catlog-live`: parse the command line, start tracing, dispatch.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use catlog_live::commands;
use catlog_live::config::{self, Command};
use catlog_live::shutdown;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; a broken one is not.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", config::one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rskafka=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let shutdown = shutdown::on_signal();
    let result = match &cli.command {
        Command::Produce(args) => commands::stages(args.into(), shutdown).await,
        Command::Consume(args) => commands::stages(args.into(), shutdown).await,
        Command::Serve(args) => commands::stages(args.into(), shutdown).await,
        Command::All(args) => commands::stages(args.into(), shutdown).await,
        Command::Migrate(args) => commands::migrate(args).await,
        Command::Doctor(args) => commands::doctor(args).await,
        Command::Token(args) => commands::token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
