//! Engine benchmark; the measuring code is `crates/qt-engine/benches/throughput.rs`.

use anyhow::Result;

pub fn run() -> Result<()> {
    anyhow::bail!("the engine benchmark is not written yet")
}
