//! Turning lapin errors into sentences an operator can act on.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// The broker's reply code behind `e`, when the broker sent one.
pub(crate) fn soft_error(e: &lapin::Error) -> Option<&AMQPSoftError> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(soft_error(e), Some(AMQPSoftError::NOTFOUND))
}

/// Whether the error means the connection or channel is gone (as opposed to the broker
/// refusing one operation on a live channel).
pub(crate) fn is_connection_loss(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::RuntimeShutdownError(_) => true,
        ErrorKind::ProtocolError(amqp) => matches!(amqp.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// lapin's message plus what to check, for the errors operators meet most.
pub(crate) fn lapin_error(e: &lapin::Error) -> String {
    let hint = match e.kind() {
        ErrorKind::IOError(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Some("is the broker running and is the port right?"),
            std::io::ErrorKind::InvalidData => Some("TLS or protocol mismatch: is this an amqps:// port?"),
            _ => None,
        },
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                Some("check the user name, password and the user's permissions on the vhost")
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Some("does the vhost exist and may the user use it?"),
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => Some("the broker closed the connection"),
            _ => None,
        },
        ErrorKind::MissingHeartbeatError => Some("the broker stopped answering heartbeats"),
        _ => None,
    };
    match hint {
        Some(hint) => format!("{e} ({hint})"),
        None => e.to_string(),
    }
}
