//! The client keeps its own copies of the broker's limits (it must refuse a
//! record before a batch carrying it is sent, and it does not link the
//! broker): these tests hold the copies equal to the originals, and the
//! client's size formula equal to the broker's.

use postbox_client::OutgoingRecord;
use postbox_engine::limits as broker;
use postbox_engine::{Header, RecordInput};

#[test]
fn the_clients_limits_are_the_brokers() {
    let pairs: [(&str, u64, u64); 10] = [
        (
            "RECORD_BYTES_MAX",
            postbox_client::RECORD_BYTES_MAX as u64,
            broker::RECORD_BYTES_MAX.into(),
        ),
        (
            "KEY_BYTES_MAX",
            postbox_client::KEY_BYTES_MAX as u64,
            broker::KEY_BYTES_MAX.into(),
        ),
        (
            "IDEMPOTENCY_KEY_BYTES_MAX",
            postbox_client::IDEMPOTENCY_KEY_BYTES_MAX as u64,
            broker::IDEMPOTENCY_KEY_BYTES_MAX.into(),
        ),
        (
            "HEADERS_PER_RECORD_MAX",
            postbox_client::HEADERS_PER_RECORD_MAX as u64,
            broker::HEADERS_PER_RECORD_MAX.into(),
        ),
        (
            "HEADER_NAME_BYTES_MAX",
            postbox_client::HEADER_NAME_BYTES_MAX as u64,
            broker::HEADER_NAME_BYTES_MAX.into(),
        ),
        (
            "BATCH_RECORDS_MAX",
            postbox_client::BATCH_RECORDS_MAX as u64,
            broker::BATCH_RECORDS_MAX.into(),
        ),
        (
            "BATCH_BYTES_MAX",
            postbox_client::BATCH_BYTES_MAX as u64,
            broker::BATCH_BYTES_MAX.into(),
        ),
        (
            "BATCH_HEADER_BYTES",
            postbox_client::BATCH_HEADER_BYTES as u64,
            postbox_engine::storage::batch::HEADER_BYTES as u64,
        ),
        (
            "SUBSCRIBE_MESSAGE_BYTES_MAX",
            postbox_client::SUBSCRIBE_MESSAGE_BYTES_MAX.into(),
            broker::READ_BYTES_MAX.into(),
        ),
        (
            "MESSAGE_BYTES_MAX",
            postbox_client::MESSAGE_BYTES_MAX as u64,
            broker::GRPC_MESSAGE_BYTES_MAX as u64,
        ),
    ];
    for (name, client, broker) in pairs {
        assert_eq!(client, broker, "{name}");
    }
}

#[test]
fn the_client_sizes_a_record_as_the_broker_does() {
    let outgoing = OutgoingRecord::new("payload")
        .key("customer-7")
        .idempotency_key("0195c0de-0000-7000-8000-000000000000")
        .header("type", "created")
        .header("trace", vec![0u8, 1, 2]);
    let input = RecordInput {
        key: Some("customer-7".into()),
        idempotency_key: Some("0195c0de-0000-7000-8000-000000000000".into()),
        headers: vec![
            Header {
                name: "type".into(),
                value: "created".into(),
            },
            Header {
                name: "trace".into(),
                value: vec![0u8, 1, 2].into(),
            },
        ],
        payload: "payload".into(),
        partition: None,
    };
    assert_eq!(outgoing.encoded_bytes() as u64, input.encoded_bytes());
    let bare = OutgoingRecord::new("").idempotency_key("k");
    let bare_input = RecordInput {
        idempotency_key: Some("k".into()),
        ..RecordInput::new("")
    };
    assert_eq!(bare.encoded_bytes() as u64, bare_input.encoded_bytes());
}
