//! AMQP field values and tables on one side, qt's string headers and config values on the
//! other.
//!
//! qt headers are strings. Incoming values are rendered as text (numbers in decimal, nested
//! tables and arrays as JSON, byte arrays as base64). When qt re-publishes a message it starts
//! from the original typed table so that a round trip through a retry queue or a DLQ does not
//! turn a producer's integers into strings.

use std::collections::BTreeMap;

use base64::Engine as _;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use qt_core::Headers;

/// Headers a broker writes on its own; they describe one delivery, not the message.
pub(crate) const BROKER_DELIVERY_HEADERS: &[&str] = &["x-delivery-count"];

/// A value as qt header text.
pub(crate) fn to_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::DecimalValue(d) => decimal_text(d.value, d.scale),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::ByteArray(b) => base64::engine::general_purpose::STANDARD.encode(b.as_slice()),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => to_json(value).to_string(),
    }
}

/// A value as JSON, for nested tables and arrays.
pub(crate) fn to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::Float(v) => serde_json::Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
        AMQPValue::DecimalValue(_) | AMQPValue::ShortString(_) | AMQPValue::LongString(_) | AMQPValue::ByteArray(_) => {
            Value::String(to_text(value))
        }
    }
}

fn decimal_text(value: u32, scale: u8) -> String {
    if scale == 0 {
        return value.to_string();
    }
    let digits = format!("{value:0>width$}", width = usize::from(scale) + 1);
    let (int, frac) = digits.split_at(digits.len() - usize::from(scale));
    format!("{int}.{frac}")
}

/// An AMQP headers table as qt headers.
pub(crate) fn headers_from_table(table: Option<&FieldTable>) -> Headers {
    let Some(table) = table else {
        return Headers::new();
    };
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), to_text(v)))
        .collect()
}

/// The table to publish for `wanted`: values unchanged from `original` keep their original
/// AMQP type; new or changed ones are long strings. Names longer than an AMQP short string
/// are reported as an error naming the header.
pub(crate) fn table_for(original: Option<&FieldTable>, wanted: &Headers) -> Result<FieldTable, String> {
    let mut out = BTreeMap::new();
    for (name, value) in wanted.iter() {
        let key = ShortString::try_new(name).map_err(|_| format!("header name {name:?} is longer than 255 bytes"))?;
        let typed = original
            .and_then(|t| t.inner().get(name))
            .filter(|v| to_text(v) == value)
            .cloned();
        out.insert(
            key,
            typed.unwrap_or_else(|| AMQPValue::LongString(LongString::from(value))),
        );
    }
    Ok(FieldTable::from(out))
}

/// Queue arguments from configuration (`x-max-length: 1000`, `x-queue-type: quorum`).
pub(crate) fn arguments_from_config(args: &BTreeMap<String, serde_json::Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let name = ShortString::try_new(key.as_str()).map_err(|_| format!("argument name {key:?} is too long"))?;
        let amqp = match value {
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AMQPValue::LongLongInt(i),
                (None, Some(f)) => AMQPValue::Double(f),
                (None, None) => return Err(format!("argument {key}: {n} is out of range")),
            },
            other => return Err(format!("argument {key}: {other} is not a string, number or boolean")),
        };
        table.insert(name, amqp);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{DecimalValue, FieldArray};

    #[test]
    fn values_render_as_text() {
        assert_eq!(to_text(&AMQPValue::LongLongInt(-5)), "-5");
        assert_eq!(to_text(&AMQPValue::Boolean(true)), "true");
        assert_eq!(to_text(&AMQPValue::LongString("hé".into())), "hé");
        assert_eq!(
            to_text(&AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 })),
            "0.05"
        );
        assert_eq!(to_text(&AMQPValue::ByteArray(vec![1u8, 2, 3].into())), "AQID");
        let mut t = FieldTable::default();
        t.insert("count".into(), AMQPValue::LongInt(2));
        let arr = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(t)]));
        assert_eq!(to_text(&arr), r#"[{"count":2}]"#);
    }

    #[test]
    fn every_numeric_and_scalar_type_a_producer_may_send_renders_as_text_and_json() {
        use serde_json::json;
        let cases = [
            (AMQPValue::ShortShortInt(-8), "-8", json!(-8)),
            (AMQPValue::ShortShortUInt(8), "8", json!(8)),
            (AMQPValue::ShortInt(-16), "-16", json!(-16)),
            (AMQPValue::ShortUInt(16), "16", json!(16)),
            (AMQPValue::LongInt(-32), "-32", json!(-32)),
            (AMQPValue::LongUInt(32), "32", json!(32)),
            (AMQPValue::LongLongInt(-64), "-64", json!(-64)),
            (AMQPValue::Float(1.5), "1.5", json!(1.5)),
            (AMQPValue::Double(-2.25), "-2.25", json!(-2.25)),
            (
                AMQPValue::Timestamp(1_700_000_000),
                "1700000000",
                json!(1_700_000_000u64),
            ),
            (AMQPValue::Boolean(false), "false", json!(false)),
            (AMQPValue::ShortString("short".into()), "short", json!("short")),
            (AMQPValue::LongString("long".into()), "long", json!("long")),
            (AMQPValue::ByteArray(vec![0xffu8].into()), "/w==", json!("/w==")),
            (
                AMQPValue::DecimalValue(DecimalValue { scale: 0, value: 42 }),
                "42",
                json!("42"),
            ),
            (AMQPValue::Void, "", serde_json::Value::Null),
        ];
        for (value, text, as_json) in cases {
            assert_eq!(to_text(&value), text, "{value:?} as text");
            assert_eq!(to_json(&value), as_json, "{value:?} as JSON");
        }
    }

    #[test]
    fn numbers_json_cannot_hold_become_null_inside_nested_values() {
        let arr = AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::Double(f64::NAN),
            AMQPValue::Float(f32::INFINITY),
        ]));
        assert_eq!(to_text(&arr), "[null,null]");
    }

    #[test]
    fn republished_table_keeps_types_of_unchanged_values() {
        let mut original = FieldTable::default();
        original.insert("n".into(), AMQPValue::LongInt(7));
        original.insert("gone".into(), AMQPValue::Boolean(true));
        let mut wanted = headers_from_table(Some(&original));
        wanted.remove("gone");
        wanted.insert("x-qt-attempt", "3");
        let table = table_for(Some(&original), &wanted).unwrap();
        assert_eq!(table.inner().get("n"), Some(&AMQPValue::LongInt(7)));
        assert_eq!(
            table.inner().get("x-qt-attempt"),
            Some(&AMQPValue::LongString("3".into()))
        );
        assert!(!table.contains_key("gone"));
    }

    #[test]
    fn config_arguments_get_amqp_types() {
        let args: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"x-queue-type":"quorum","x-max-length":10,"x-single-active-consumer":true,"r":0.5}"#,
        )
        .unwrap();
        let t = arguments_from_config(&args).unwrap();
        assert_eq!(t.inner().get("x-max-length"), Some(&AMQPValue::LongLongInt(10)));
        assert_eq!(
            t.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            t.inner().get("x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(t.inner().get("r"), Some(&AMQPValue::Double(0.5)));
        assert!(arguments_from_config(&[("a".to_owned(), serde_json::json!([1]))].into_iter().collect()).is_err());
    }
}
