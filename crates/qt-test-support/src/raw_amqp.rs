//! An AMQP 0-9-1 publisher that writes a message's headers exactly as given, nesting that
//! the client libraries cannot write without crashing included: the frames of one
//! confirmed `basic.publish`, written by hand over a plain TCP connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;

/// A `headers` table with one entry, `name`, holding arrays nested `depth` levels deep
/// around an empty array: about five bytes per level.
pub fn nested_arrays(name: &str, depth: usize) -> Vec<u8> {
    let mut value = b"A\0\0\0\0".to_vec();
    for _ in 1..depth {
        let mut outer = b"A".to_vec();
        outer.extend_from_slice(&u32_len(value.len()).to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut entry = short_str(name);
    entry.extend_from_slice(&value);
    let mut table = u32_len(entry.len()).to_be_bytes().to_vec();
    table.extend_from_slice(&entry);
    table
}

/// Publishes `body` with `message_id` and the encoded `headers` table to `queue` through
/// the default exchange of the broker at `url` (`amqp://user:password@host:port/vhost`), and
/// waits for the broker's confirm.
pub fn publish(url: &str, queue: &str, message_id: &str, headers: &[u8], body: &[u8]) {
    let rest = url.strip_prefix("amqp://").expect("a plain amqp:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("guest:guest", authority));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let vhost = match path.split('?').next().unwrap_or("") {
        "" => "/".to_owned(),
        v => v.replace("%2f", "/").replace("%2F", "/"),
    };
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };

    let mut s = TcpStream::connect(&addr).expect("connect to RabbitMQ");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    expect_method(&mut s, 10, 10); // connection.start

    let mut start_ok = 0u32.to_be_bytes().to_vec(); // client properties: none
    start_ok.extend_from_slice(&short_str("PLAIN"));
    start_ok.extend_from_slice(&long_str(format!("\0{user}\0{password}").as_bytes()));
    start_ok.extend_from_slice(&short_str("en_US"));
    send_method(&mut s, 0, 10, 11, &start_ok);

    let tune = expect_method(&mut s, 10, 30);
    let mut tune_ok = tune[..6].to_vec(); // the broker's channel-max and frame-max
    tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
    send_method(&mut s, 0, 10, 31, &tune_ok);
    let mut open = short_str(&vhost);
    open.extend_from_slice(&short_str(""));
    open.push(0);
    send_method(&mut s, 0, 10, 40, &open);
    expect_method(&mut s, 10, 41);

    send_method(&mut s, 1, 20, 10, &short_str("")); // channel.open
    expect_method(&mut s, 20, 11);
    send_method(&mut s, 1, 85, 10, &[0]); // confirm.select
    expect_method(&mut s, 85, 11);

    let mut publish = 0u16.to_be_bytes().to_vec();
    publish.extend_from_slice(&short_str("")); // default exchange
    publish.extend_from_slice(&short_str(queue));
    publish.push(0b01); // mandatory
    send_method(&mut s, 1, 60, 40, &publish);
    let mut header = 60u16.to_be_bytes().to_vec();
    header.extend_from_slice(&0u16.to_be_bytes()); // weight
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    // property flags: headers, delivery-mode, message-id
    header.extend_from_slice(&(0x2000u16 | 0x1000 | 0x0080).to_be_bytes());
    header.extend_from_slice(headers);
    header.push(2); // persistent
    header.extend_from_slice(&short_str(message_id));
    send_frame(&mut s, FRAME_HEADER, 1, &header);
    send_frame(&mut s, FRAME_BODY, 1, body);
    let (class, method) = read_method(&mut s).0;
    assert_eq!(
        (class, method),
        (60, 80),
        "the broker confirms the publish with basic.ack"
    );

    send_method(&mut s, 0, 10, 50, &[0, 200, 0, 0, 0, 0, 0]); // connection.close
    let _ = read_method(&mut s);
}

fn send_method(s: &mut TcpStream, channel: u16, class: u16, method: u16, args: &[u8]) {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    send_frame(s, FRAME_METHOD, channel, &payload);
}

fn send_frame(s: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u32_len(payload.len()).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(FRAME_END);
    s.write_all(&frame).unwrap();
}

/// The next method frame's (class, method) and arguments.
fn read_method(s: &mut TcpStream) -> ((u16, u16), Vec<u8>) {
    let mut head = [0u8; 7];
    s.read_exact(&mut head).expect("a frame from RabbitMQ");
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload).unwrap();
    assert_eq!(head[0], FRAME_METHOD, "a method frame");
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    ((class, method), payload[4..size].to_vec())
}

fn expect_method(s: &mut TcpStream, class: u16, method: u16) -> Vec<u8> {
    let (got, args) = read_method(s);
    assert_eq!(
        got,
        (class, method),
        "RabbitMQ answered with method {got:?} instead of ({class}, {method}): {}",
        String::from_utf8_lossy(&args)
    );
    args
}

fn short_str(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).expect("a short string")];
    out.extend_from_slice(s.as_bytes());
    out
}

fn long_str(b: &[u8]) -> Vec<u8> {
    let mut out = u32_len(b.len()).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap()
}
