//! `qt pause -c FILE` and `qt resume -c FILE`: pause or resume the running `qt run` of that
//! configuration through its admin server (`POST /pause`, `POST /resume`).

use std::io::Write;
use std::process::ExitCode;

use super::load_or_report;
use crate::admin_client::AdminClient;
use crate::cli::ConfigArg;

pub async fn pause(args: &ConfigArg) -> anyhow::Result<ExitCode> {
    change(args, "qt pause", "/pause").await
}

pub async fn resume(args: &ConfigArg) -> anyhow::Result<ExitCode> {
    change(args, "qt resume", "/resume").await
}

async fn change(args: &ConfigArg, command: &str, path: &str) -> anyhow::Result<ExitCode> {
    let config = match load_or_report(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let answer = AdminClient::for_config(&config, command)?.post(path, None).await?;
    let field = |name: &str| {
        answer
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_owned()
    };
    let (state, was) = (field("state"), field("was"));
    let in_flight = answer.get("in_flight").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    if state == was {
        writeln!(out, "{} was already {state}", config.name)?;
    } else {
        writeln!(out, "{} {state} (was {was})", config.name)?;
    }
    if state == "paused" && in_flight > 0 {
        writeln!(
            out,
            "{in_flight} message(s) taken before the pause are finishing; /status shows metrics.inflight"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
