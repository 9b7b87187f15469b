//! `reconcile` and `redeliver`: what asks GitHub for what it never delivered.

use super::*;

/// `reconcile`: plans what GitHub never delivered (with `dry_run`, prints what it
/// would plan), one line per commit.
pub async fn reconcile(
    compiled: app::Compiled,
    dry_run: bool,
    repository: Option<&str>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if compiled.config.github.reconcile.is_none() {
        return Err(CliError::Usage(
            "[github.reconcile] is not configured: name the repositories to reconcile".into(),
        ));
    }
    let only = repository
        .map(crate::pattern::compile_repository_glob)
        .transpose()
        .map_err(|message| CliError::Usage(format!("--repository: {message}")))?;
    let app = app::App::build(compiled, false).await?;
    let Some(reconciler) = app.reconciler() else {
        return Err(CliError::Usage(
            "reconcile needs github.token or a GitHub App to call GitHub".into(),
        ));
    };
    let lines = reconciler.run(only.as_ref(), dry_run).await?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `redeliver`: asks GitHub to redeliver what never got through since `since` ago, and
/// prints one line per delivery (what it would do, with `dry_run`).
pub async fn redeliver(
    config: &Config,
    since: std::time::Duration,
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let Some(redeliver) = &config.github.redeliver else {
        return Err(CliError::Usage(
            "[github.redeliver] names no hooks: list the webhooks whose deliveries to look at"
                .into(),
        ));
    };
    if since.as_secs() > crate::config::MAX_LOOK_BACK_SECS {
        return Err(CliError::Usage(
            "--since goes further back than GitHub keeps deliveries (3 days)".into(),
        ));
    }
    let Some(client) =
        crate::github::GithubClient::from_config(&config.github, &config.typed.github_auth)?
    else {
        return Err(CliError::Usage(
            "redeliver needs github.token or a GitHub App to call GitHub".into(),
        ));
    };
    let from = std::time::SystemTime::now() - since;
    let found = crate::source::github::redeliver::redeliver_failed(
        &client,
        &redeliver.hooks,
        from,
        dry_run,
    )
    .await?;
    for redelivery in &found {
        writeln!(out, "{redelivery}")?;
    }
    eprintln!(
        "{} deliveries {} since {}",
        found.len(),
        if dry_run {
            "to redeliver"
        } else {
            "redelivered"
        },
        humantime::format_rfc3339_seconds(from)
    );
    Ok(())
}
