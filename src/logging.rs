//! Log output on stderr: human-readable lines, or one JSON object per line for
//! log collectors (`RAFKA_LOG_FORMAT=json`). `RUST_LOG` filters as usual.
//!
//! openraft reports every failed RPC to a peer at ERROR, and again at WARN
//! (about four lines per failed heartbeat), once per group and per retry: with
//! a peer down, hundreds of lines a second that say nothing an operator must
//! act on. The ERROR events are dropped here, and the default filter keeps
//! openraft at ERROR (`info,openraft=error`; `openraft=warn` brings its
//! per-retry warnings back). The peer network reports each peer becoming
//! unreachable and reachable again once; errors that are not about the
//! network (storage, fatal ones) keep their level.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Environment variable choosing the format: `text` (default) or `json`.
pub const FORMAT_ENV: &str = "RAFKA_LOG_FORMAT";
const DEFAULT_FILTER: &str = "info,openraft=error";

#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error("{FORMAT_ENV}={0:?} is neither \"text\" nor \"json\"")]
    UnknownFormat(String),
    #[error("cannot install the logger: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the process's logger.
pub fn init() -> Result<(), LogSetupError> {
    let json = match std::env::var(FORMAT_ENV) {
        Err(_) => false,
        Ok(format) if format.eq_ignore_ascii_case("text") => false,
        Ok(format) if format.eq_ignore_ascii_case("json") => true,
        Ok(other) => return Err(LogSetupError::UnknownFormat(other)),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let output = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(|metadata: &Metadata<'_>| !is_peer_rpc_failure(metadata)))
        .with(output)
        .try_init()?;
    Ok(())
}

/// openraft's ERROR events about one failed RPC to a peer (openraft =0.9.25,
/// pinned in Cargo.toml): the replication stream's `RPCError` (field `err`), and
/// the vote and leadership-confirmation timeouts and failures of the core
/// (fields `target` and `error`). Storage errors and fatal errors have other
/// field sets and stay at ERROR.
fn is_peer_rpc_failure(metadata: &Metadata<'_>) -> bool {
    if *metadata.level() != Level::ERROR || !metadata.is_event() {
        return false;
    }
    let has = |name: &str| metadata.fields().field(name).is_some();
    match metadata.target() {
        "openraft::replication" => has("err"),
        target if target.starts_with("openraft::core") => has("target") && has("error"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn drops_openraft_peer_rpc_errors_and_keeps_the_rest() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter_fn(|metadata: &Metadata<'_>| !is_peer_rpc_failure(metadata)))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(captured.clone())
                    .with_ansi(false),
            );
        tracing::subscriber::with_default(subscriber, || {
            // The shapes of openraft's own events (target, level, field names).
            tracing::error!(target: "openraft::replication", err = "peer 2 unreachable", "RPCError");
            tracing::error!(target: "openraft::core::raft_core", { error = "timeout", target = "2" }, "timeout");
            tracing::error!(target: "openraft::replication", error = "disk full", "storage error on replication");
            tracing::error!(target: "openraft::core::raft_core", error = "fatal", "quit RaftCore::main on error");
            tracing::warn!(target: "openraft::replication", err = "peer 2 unreachable", "a warning stays");
            tracing::error!(target: "rafka::cluster", err = "ours", "our own errors stay");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("RPCError") && !text.contains("timeout"), "{text}");
        for kept in [
            "storage error on replication",
            "quit RaftCore::main",
            "a warning stays",
            "our own errors stay",
        ] {
            assert!(text.contains(kept), "{kept} missing from {text}");
        }
    }
}
