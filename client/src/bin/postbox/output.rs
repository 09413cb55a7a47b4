//! What the CLI writes to stdout: records, acknowledgments, topics and
//! offsets as JSON lines, or raw payloads.
//!
//! Invariants: stdout carries data only, one JSON object per line with its
//! fields in a fixed order; bytes that are not UTF-8 are never mangled: they
//! move to a `*_base64` field instead (`key_base64`, `idempotency_key_base64`,
//! `payload_base64`, and a `headers_base64` object for header values). No
//! JSON object has a key twice (most JSON readers keep only one of them): a
//! header name that repeats maps to the array of its values, in order.
//! Output is buffered; callers flush when they would otherwise wait.

use std::borrow::Cow;
use std::io::{self, Write};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use postbox_client::{Ack, Record};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::args::OutputFormat;

/// Stdout buffer: large enough that a fast replay makes few write calls.
const STDOUT_BUFFER_BYTES: usize = 64 * 1024;

/// Buffered data output.
#[derive(Debug)]
pub struct Output<W: Write> {
    writer: io::BufWriter<W>,
    format: OutputFormat,
}

impl Output<io::Stdout> {
    /// Output to stdout.
    pub fn stdout(format: OutputFormat) -> Self {
        Output::new(io::stdout(), format)
    }
}

impl<W: Write> Output<W> {
    pub fn new(writer: W, format: OutputFormat) -> Self {
        Output {
            writer: io::BufWriter::with_capacity(STDOUT_BUFFER_BYTES, writer),
            format,
        }
    }

    /// Writes one record: a JSON line, or its payload and a newline.
    pub fn record(&mut self, record: &Record) -> Result<()> {
        match self.format {
            OutputFormat::Json => self.json_line(&RecordLine(record)),
            OutputFormat::Raw => self.write_line(&record.payload),
        }
    }

    /// Writes one publish acknowledgment as a JSON line.
    pub fn ack(&mut self, ack: &Ack) -> Result<()> {
        self.json_line(&AckLine(ack))
    }

    /// Writes any value as one JSON line.
    pub fn json_line<T: Serialize>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer(&mut self.writer, value)
            .map_err(io::Error::from)
            .context("cannot write to stdout")?;
        self.write_line(b"")
    }

    /// Sends everything buffered to the underlying writer.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().context("cannot write to stdout")
    }

    fn write_line(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .and_then(|()| self.writer.write_all(b"\n"))
            .context("cannot write to stdout")
    }

    #[cfg(test)]
    fn into_inner(self) -> Option<W> {
        self.writer.into_inner().ok()
    }
}

/// A record as one JSON object:
/// `{"partition","offset","timestamp","key","idempotency_key","headers","payload"}`.
struct RecordLine<'a>(&'a Record);

impl Serialize for RecordLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("partition", &record.partition)?;
        map.serialize_entry("offset", &record.offset)?;
        map.serialize_entry("timestamp", &record.timestamp_ms)?;
        bytes_entry(&mut map, "key", record.key.as_deref())?;
        bytes_entry(
            &mut map,
            "idempotency_key",
            record.idempotency_key.as_deref(),
        )?;
        map.serialize_entry("headers", &Headers::text(&record.headers))?;
        let binary = Headers::binary(&record.headers);
        if !binary.is_empty() {
            map.serialize_entry("headers_base64", &binary)?;
        }
        bytes_entry(&mut map, "payload", Some(&record.payload))?;
        map.end()
    }
}

/// A publish acknowledgment: `{"partition","offset","duplicate","idempotency_key"}`.
struct AckLine<'a>(&'a Ack);

impl Serialize for AckLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ack = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("partition", &ack.partition)?;
        map.serialize_entry("offset", &ack.offset)?;
        map.serialize_entry("duplicate", &ack.duplicate)?;
        bytes_entry(&mut map, "idempotency_key", Some(&ack.idempotency_key))?;
        map.end()
    }
}

/// Writes `name: "text"` for UTF-8 bytes, `name_base64: "..."` for other
/// bytes, and `name: null` when there are none.
fn bytes_entry<M: SerializeMap>(
    map: &mut M,
    name: &str,
    bytes: Option<&[u8]>,
) -> Result<(), M::Error> {
    let Some(bytes) = bytes else {
        return map.serialize_entry(name, &());
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => map.serialize_entry(name, text),
        Err(_) => map.serialize_entry(&format!("{name}_base64"), &BASE64.encode(bytes)),
    }
}

/// One of a record's two header objects, each mapping a header name to its
/// value, or to the array of its values in record order when the name
/// repeats. A name whose values are all UTF-8 goes to `headers` as text; a
/// name with any other value goes to `headers_base64`, every value of it in
/// base64, so that each name appears once and keeps the order of its values.
struct Headers<'a> {
    headers: &'a [(String, Bytes)],
    base64: bool,
}

impl<'a> Headers<'a> {
    /// The `headers` object.
    fn text(headers: &'a [(String, Bytes)]) -> Self {
        Headers {
            headers,
            base64: false,
        }
    }

    /// The `headers_base64` object.
    fn binary(headers: &'a [(String, Bytes)]) -> Self {
        Headers {
            headers,
            base64: true,
        }
    }

    /// The names this object holds, once each, in order of first appearance.
    /// Quadratic in the header count, which the broker bounds (64).
    fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        let headers = self.headers;
        headers
            .iter()
            .enumerate()
            .filter(|&(index, (name, _))| headers[..index].iter().all(|(seen, _)| seen != name))
            .map(|(_, (name, _))| name.as_str())
            .filter(|&name| self.holds(name))
    }

    /// Whether `name` belongs in this object.
    fn holds(&self, name: &str) -> bool {
        let all_text = self
            .values(name)
            .all(|value| std::str::from_utf8(value).is_ok());
        all_text != self.base64
    }

    fn values(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(header, _)| header == name)
            .map(|(_, value)| value.as_ref())
    }

    /// A value as this object writes it.
    fn render(&self, value: &'a [u8]) -> Cow<'a, str> {
        match std::str::from_utf8(value) {
            Ok(text) if !self.base64 => Cow::Borrowed(text),
            _ => Cow::Owned(BASE64.encode(value)),
        }
    }

    fn is_empty(&self) -> bool {
        self.names().next().is_none()
    }
}

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for name in self.names() {
            let values: Vec<Cow<'_, str>> =
                self.values(name).map(|value| self.render(value)).collect();
            match values.as_slice() {
                [single] => map.serialize_entry(name, single)?,
                _ => map.serialize_entry(name, &values)?,
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_123,
            key: Some(Bytes::from("customer-7")),
            idempotency_key: Some(Bytes::from("0190a8e2-0000-7000-8000-000000000000")),
            headers: vec![("type".into(), Bytes::from("created"))],
            payload: Bytes::from("{\"order\":42}"),
        }
    }

    fn render(format: OutputFormat, record: &Record) -> String {
        let mut output = Output::new(Vec::new(), format);
        assert!(output.record(record).is_ok());
        let bytes = output.into_inner().unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn text_record_renders_fields_in_order() {
        assert_eq!(
            render(OutputFormat::Json, &record()),
            concat!(
                r#"{"partition":2,"offset":41,"timestamp":1700000000123,"key":"customer-7","#,
                r#""idempotency_key":"0190a8e2-0000-7000-8000-000000000000","#,
                r#""headers":{"type":"created"},"payload":"{\"order\":42}"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn absent_keys_are_null_and_empty_headers_an_empty_object() {
        let record = Record {
            key: None,
            idempotency_key: None,
            headers: Vec::new(),
            payload: Bytes::new(),
            ..record()
        };
        assert_eq!(
            render(OutputFormat::Json, &record),
            concat!(
                r#"{"partition":2,"offset":41,"timestamp":1700000000123,"key":null,"#,
                r#""idempotency_key":null,"headers":{},"payload":""}"#,
                "\n"
            )
        );
    }

    #[test]
    fn binary_fields_move_to_base64() {
        let record = Record {
            key: Some(Bytes::from_static(&[0xff, 0x00])),
            idempotency_key: Some(Bytes::from_static(&[0xc3])),
            headers: vec![
                ("text".into(), Bytes::from("ok")),
                ("blob".into(), Bytes::from_static(&[0xfe, 0x01])),
            ],
            payload: Bytes::from_static(&[0x80, 0x81, 0x82]),
            ..record()
        };
        assert_eq!(
            render(OutputFormat::Json, &record),
            concat!(
                r#"{"partition":2,"offset":41,"timestamp":1700000000123,"key_base64":"/wA=","#,
                r#""idempotency_key_base64":"ww==","headers":{"text":"ok"},"#,
                r#""headers_base64":{"blob":"/gE="},"payload_base64":"gIGC"}"#,
                "\n"
            )
        );
    }

    fn headers_json(headers: Vec<(&str, &'static [u8])>) -> serde_json::Value {
        let record = Record {
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Bytes::from_static(value)))
                .collect(),
            ..record()
        };
        let line = render(OutputFormat::Json, &record);
        serde_json::from_str(&line).unwrap_or_default()
    }

    #[test]
    fn repeated_header_names_become_arrays_of_their_values_in_order() {
        let headers = vec![
            ("trace", &b"a"[..]),
            ("type", b"created"),
            ("trace", b"b"),
            ("trace", b"c"),
        ];
        let record = Record {
            headers: headers
                .iter()
                .map(|&(name, value)| (name.to_owned(), Bytes::from_static(value)))
                .collect(),
            ..record()
        };
        // Checked as text, not only as parsed JSON: a parser would hide a
        // repeated key by keeping one of its values.
        assert!(render(OutputFormat::Json, &record)
            .contains(r#""headers":{"trace":["a","b","c"],"type":"created"},"payload""#));
        let json = headers_json(headers);
        assert_eq!(json["headers"]["trace"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(json.get("headers_base64"), None);
    }

    #[test]
    fn a_name_with_any_binary_value_moves_whole_to_headers_base64() {
        let json = headers_json(vec![
            ("blob", &b"ok"[..]),
            ("type", b"created"),
            ("blob", &[0xfe, 0x01]),
            ("raw", &[0xff]),
        ]);
        assert_eq!(json["headers"], serde_json::json!({"type": "created"}));
        assert_eq!(
            json["headers_base64"],
            serde_json::json!({"blob": ["b2s=", "/gE="], "raw": "/w=="})
        );
    }

    #[test]
    fn raw_prints_payload_bytes_and_a_newline() {
        let record = Record {
            payload: Bytes::from_static(b"hello \xff"),
            ..record()
        };
        let mut output = Output::new(Vec::new(), OutputFormat::Raw);
        assert!(output.record(&record).is_ok());
        assert_eq!(output.into_inner(), Some(b"hello \xff\n".to_vec()));
    }

    #[test]
    fn ack_renders_key_as_text() {
        let ack = Ack {
            partition: 1,
            offset: 7,
            duplicate: true,
            idempotency_key: Bytes::from("order-42"),
        };
        let mut output = Output::new(Vec::new(), OutputFormat::Json);
        assert!(output.ack(&ack).is_ok());
        assert_eq!(
            output.into_inner(),
            Some(
                b"{\"partition\":1,\"offset\":7,\"duplicate\":true,\"idempotency_key\":\"order-42\"}\n"
                    .to_vec()
            )
        );
    }

    /// A writer whose reader went away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn closed_pipe_surfaces_as_broken_pipe_in_the_chain() {
        let mut output = Output::new(ClosedPipe, OutputFormat::Raw);
        assert!(
            output.record(&record()).is_ok(),
            "buffered, not yet written"
        );
        let error = output.flush().err();
        assert!(error.is_some_and(|e| crate::is_broken_pipe(&e)));
    }
}
