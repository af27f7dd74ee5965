//! SendMessage for qt messages: body checks, headers as attributes, FIFO ids.

use aws_sdk_sqs::Client;
use bytes::Bytes;
use qt_core::Headers;
use qt_core::config::is_fifo_queue;

use crate::attributes::{is_sqs_char, to_attributes};
use crate::connection::describe;

/// One message to send.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub queue_url: &'a str,
    pub body: &'a Bytes,
    pub headers: &'a Headers,
    /// MessageGroupId: required by FIFO queues, and sent to standard queues too when
    /// given (fair queues use it).
    pub group_id: Option<&'a str>,
    /// MessageDeduplicationId, sent to FIFO queues only (standard queues refuse it).
    pub deduplication_id: Option<&'a str>,
}

/// Sends and returns the MessageId SQS assigned.
pub async fn send(client: &Client, message: Outgoing<'_>) -> Result<Option<String>, String> {
    let body = text_body(message.body)?;
    let attributes = to_attributes(message.headers);
    let fifo = is_fifo_queue(message.queue_url);
    let mut request = client.send_message().queue_url(message.queue_url).message_body(body);
    if !attributes.is_empty() {
        request = request.set_message_attributes(Some(attributes));
    }
    if let Some(group) = message.group_id {
        request = request.message_group_id(group);
    } else if fifo {
        return Err(format!(
            "{} is a FIFO queue and needs a MessageGroupId (the message key)",
            message.queue_url
        ));
    }
    if fifo && let Some(id) = message.deduplication_id {
        request = request.message_deduplication_id(id);
    }
    let out = request.send().await.map_err(|e| describe(&e))?;
    Ok(out.message_id)
}

/// SQS bodies are non-empty text made of the characters XML allows.
fn text_body(body: &Bytes) -> Result<&str, String> {
    let text = std::str::from_utf8(body).map_err(|_| {
        "SQS message bodies are text and this body is not UTF-8; base64-encode binary payloads".to_owned()
    })?;
    if text.is_empty() {
        return Err("SQS does not accept an empty message body".to_owned());
    }
    if let Some(c) = text.chars().find(|c| !is_sqs_char(*c)) {
        return Err(format!(
            "SQS does not accept the character U+{:04X} in a message body",
            u32::from(c)
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_sqs_refuses_are_explained() {
        assert!(text_body(&Bytes::from_static(b"{\"ok\":true}")).is_ok());
        assert!(
            text_body(&Bytes::from_static(&[0xff, 0xfe]))
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(text_body(&Bytes::new()).unwrap_err().contains("empty"));
        assert!(
            text_body(&Bytes::from_static(b"a\x00b"))
                .unwrap_err()
                .contains("U+0000")
        );
    }
}
