//! `qt run -c FILE [--until-idle]`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use qt_engine::{BuildError, QueueTrigger, TraceSettings};
use tracing::{error, info, warn};

use super::{EXIT_INVALID_CONFIG, Ready, load_or_report, preflight_or_report};
use crate::cli::RunArgs;
use crate::summary::Summary;
use crate::{admin, logging, wiring};

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let path = &args.config.config;
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    logging::init(&config.observability.log);
    for warning in config.warnings() {
        warn!(config = %path.display(), "{warning}");
    }
    if args.until_idle && !matches!(config.source, qt_core::config::SourceConfig::Mock(_)) {
        logging::fatal("--until-idle needs `source.type: mock`: a broker source is never idle for good");
        return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
    }
    // The same checks as `qt validate`, so that a file it accepts gets as far as connecting.
    let Ready { agents, source } = match preflight_or_report(path, &config).await {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    let store = wiring::store(&config)
        .await
        .context("cannot set up the idempotency store")?;
    let ledger = wiring::ledger(&config).await.context("cannot set up the ledger")?;
    let mut builder = QueueTrigger::builder(config.clone()).adapter(source.adapter.clone());
    for (name, agent) in agents {
        builder = builder.agent(name, agent);
    }
    if let Some(store) = store {
        builder = builder.idempotency_store(store);
    }
    if let Some(ledger) = ledger {
        builder = builder.ledger(ledger);
    }
    let tracing_config = &config.observability.tracing;
    let telemetry = if tracing_config.enabled {
        let telemetry = qt_telemetry::Tracing::start(tracing_config)?;
        builder = builder.tracer(TraceSettings {
            tracer: telemetry.tracer(),
            sample_ratio: tracing_config.sample_ratio,
            export_gate: Some(telemetry.export_gate()),
        });
        info!(endpoint = %tracing_config.effective_endpoint(), sample_ratio = tracing_config.sample_ratio, "exporting traces");
        Some(telemetry)
    } else {
        None
    };
    let trigger = match builder.build() {
        Ok(t) => t,
        Err(BuildError::Config(errors)) => {
            logging::fatal(&format!("{}: {errors}", path.display()));
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    trigger.start().await?;
    let admin = if config.observability.admin.enabled {
        let limits = admin::AdminLimits::for_messages(config.processing.max_message_bytes);
        match admin::serve(
            config.observability.admin.listen,
            trigger.clone(),
            source.mock.clone(),
            limits,
            admin::AdminAuth::from_config(&config.observability.admin),
        )
        .await
        {
            Ok(server) => {
                info!(
                    addr = %server.addr,
                    token_required = config.observability.admin.token.is_some(),
                    "admin server listening (/metrics /healthz /readyz /status /pause /resume)"
                );
                Some(server)
            }
            Err(e) => {
                let _ = trigger.stop().await;
                return Err(e);
            }
        }
    } else {
        None
    };

    let reason = match (&source.mock, args.until_idle) {
        (Some(mock), true) => tokio::select! {
            () = mock.wait_idle() => "source drained",
            r = shutdown_signal() => r?,
        },
        _ => tokio::select! {
            () = trigger.wait_source_closed() => "source closed",
            r = shutdown_signal() => r?,
        },
    };
    info!(reason, "stopping");
    let report = trigger.stop().await;
    // The stop dropped the runs it abandoned; their agents' process groups get their SIGKILL
    // before qt exits, not never.
    let _ = tokio::task::spawn_blocking(crate::agents::wait_for_ending_groups).await;
    let report = report?;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    if let Some(telemetry) = telemetry {
        telemetry.shutdown(config.processing.drain_timeout).await;
    }
    let summary = Summary::from_metrics(&trigger.metrics());
    if !report.drained {
        error!("stopped before every in-flight message finished; those messages were left for redelivery");
    }
    if args.until_idle {
        let title = format!(
            "qt summary ({} source {}):",
            trigger.adapter().kind(),
            trigger.adapter().queue()
        );
        std::io::stdout().lock().write_all(summary.render(&title).as_bytes())?;
    } else {
        info!(summary = %serde_json::to_string(&summary)?, "final counts");
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM, naming which.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
