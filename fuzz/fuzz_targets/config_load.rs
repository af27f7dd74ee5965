//! Configuration loading and validation: `${VAR}` substitution, YAML, structure and meaning.
//!
//! The input is the configuration text, optionally followed by a NUL byte and the
//! environment as `NAME=VALUE` lines, so that the seeds are plain YAML files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qt_core::config::{load_str, substitute};

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env = String::from_utf8_lossy(env);
    let lookup = |name: &str| {
        env.lines()
            .filter_map(|line| line.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
    };
    let _ = substitute(text, lookup);
    match load_str(text, lookup) {
        Ok(config) => {
            let _ = config.warnings();
            let _ = config.to_masked_yaml();
        }
        Err(problems) => {
            let _ = problems.to_string();
        }
    }
});
