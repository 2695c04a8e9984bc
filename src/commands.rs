//! What each command does. `main` only parses, starts tracing and calls one
//! of these; the stage commands and `all` are one [`Pipeline`] with
//! different stages switched on ([`stages`]).

use tokio_util::sync::CancellationToken;

use crate::config::{DbArgs, DoctorArgs, TokenArgs};
use crate::db::Database;
use crate::doctor::{self, Verdict};
use crate::pipeline::{Pipeline, Settings, page_url};

/// `produce`, `consume`, `serve` and `all`: builds the pipeline of the
/// command's stages, tells a person where the page is, and runs it until
/// shut down (a producer with a maximum stops on its own).
pub async fn stages(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pipeline = Pipeline::build(settings).await?;
    if let Some(addr) = pipeline.address() {
        println!("catlog-live is live at {}", page_url(addr));
    }
    if let Some(addr) = pipeline.metrics_address() {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    pipeline.run(shutdown).await?;
    Ok(())
}

/// `migrate`: creates the database if needed and applies the migrations.
pub async fn migrate(args: &DbArgs) -> anyhow::Result<()> {
    let db: Database = args.database_url.parse()?;
    db.ensure_exists().await?;
    crate::db::migrate(&db).await?;
    println!("database {} is up to date", db.target());
    Ok(())
}

/// `doctor`: prints one line per check; fails if any check fails.
pub async fn doctor(args: &DoctorArgs) -> anyhow::Result<()> {
    let checks = doctor::run(&args.kafka, &args.db, &args.group).await;
    for check in &checks {
        println!("{check}");
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

/// `token`: prints a signed token valid for `--ttl`.
pub fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let signer = crate::serve::tokens::Signer::from_settings(
        args.jwt_secret.as_deref(),
        args.jwt_private_key_file.as_deref(),
    )?;
    println!("{}", signer.mint(args.ttl, args.subject.as_deref())?);
    Ok(())
}
