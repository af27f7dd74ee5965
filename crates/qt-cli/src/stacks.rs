//! Thread stacks deep enough for any message a broker can deliver.
//!
//! RabbitMQ delivers message headers that nest tables and arrays as deep as its frame size
//! allows: tens of thousands of levels in its default 128 KiB frame. lapin parses them on a
//! thread of its own with a parser that recurses once per level, and on a default 2 MiB
//! thread stack a few thousand levels overflow it: the process aborts, and every restart
//! meets the same message again. lapin takes no stack size for that thread, so qt raises
//! the default for every thread started in the process: `RUST_MIN_STACK`, which std reads
//! when the first thread starts. Setting it from within needs `std::env::set_var`, which is
//! `unsafe` and forbidden in this workspace, so qt executes itself again with it set,
//! before anything else runs. An operator who sets `RUST_MIN_STACK` keeps their value.
//!
//! Only memory a thread touches is resident: a thread stack costs address space, and real
//! memory only while a deeply nested message is being read.

use std::os::unix::process::CommandExt as _;

use crate::logging;

/// `RUST_MIN_STACK`: the stack size of every thread started without one, in bytes.
const MIN_STACK_VAR: &str = "RUST_MIN_STACK";

/// Set beside `RUST_MIN_STACK` when qt chose the value, so agents do not inherit it.
const SET_BY_QT_VAR: &str = "QT_SET_RUST_MIN_STACK";

/// 64 MiB: room, with a margin, for an optimised build to read the deepest headers that
/// RabbitMQ's default 128 KiB frame holds (ARCHITECTURE.md, "No message stops the
/// process").
const STACK_BYTES: usize = 64 << 20;

/// Executes qt again with `RUST_MIN_STACK` set, unless it is set already. Returns only
/// when there is nothing to do, or when the exec failed: then qt runs on with default
/// stacks and says what that risks.
pub fn ensure_deep_enough() {
    if std::env::var_os(MIN_STACK_VAR).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next();
    let error = match std::env::current_exe() {
        Ok(exe) => {
            let mut cmd = std::process::Command::new(&exe);
            if let Some(arg0) = arg0 {
                cmd.arg0(arg0);
            }
            let error = cmd
                .args(args)
                .env(MIN_STACK_VAR, STACK_BYTES.to_string())
                .env(SET_BY_QT_VAR, "1")
                .exec();
            format!("cannot execute {} again: {error}", exe.display())
        }
        Err(error) => format!("cannot find qt's own executable: {error}"),
    };
    logging::warn_early(&format!(
        "{error}; running with default 2 MiB thread stacks, on which a RabbitMQ message with deeply nested headers crashes qt. Set {MIN_STACK_VAR}={STACK_BYTES} in qt's environment to avoid this step"
    ));
}

/// Keeps the stack size qt chose for itself out of an agent's environment. A value the
/// operator set passes on, like the rest of qt's environment.
pub fn keep_out_of(cmd: &mut tokio::process::Command) {
    if std::env::var_os(SET_BY_QT_VAR).is_some() {
        cmd.env_remove(MIN_STACK_VAR).env_remove(SET_BY_QT_VAR);
    }
}
