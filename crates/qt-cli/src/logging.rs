//! Logs: text or JSON through `tracing-subscriber`, with every line passed through URL
//! credential masking before it is written, so a library error that embeds a connection
//! string cannot leak a password.

use std::io::Write;

use qt_core::config::{LogConfig, LogFormat};
use qt_core::secret::mask_url_credentials;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Writes each log record to stderr with URL credentials masked.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskingStderr;

pub struct MaskingWriter {
    buf: Vec<u8>,
}

impl Write for MaskingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskingWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let masked = mask_url_credentials(&text);
        let _ = std::io::stderr().lock().write_all(masked.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for MaskingStderr {
    type Writer = MaskingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        MaskingWriter {
            buf: Vec::with_capacity(256),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MaskingStderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Reports a fatal error before (or instead of) logging being set up.
pub fn fatal(message: &str) {
    let _ = writeln!(std::io::stderr(), "qt: error: {}", mask_url_credentials(message));
}

/// A warning from before logging is set up.
pub fn warn_early(message: &str) {
    let _ = writeln!(std::io::stderr(), "qt: warning: {}", mask_url_credentials(message));
}
