//! Failed writes, failed fsyncs and full disks, and the reopening of a
//! failed partition without a restart: after every fault, every acknowledged
//! record is intact at its offset, a lost append is never answered as
//! acknowledged (nor as a duplicate of a record that is gone), and a power
//! loss after the reopen keeps everything acknowledged.

use bytes::Bytes;

use super::power_loss::{fresh, keyed, on, open, read_all, topic_config};
use crate::testing::sim::{FailOp, SIM_FREE_BYTES};
use crate::{Durability, Error, RecordInput};

fn payloads(records: &[crate::Record]) -> Vec<Bytes> {
    records.iter().map(|r| r.payload.clone()).collect()
}

#[test]
fn a_failed_fsync_is_cut_back_and_the_partition_reopened_without_a_restart() {
    let (fs, meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(1, Durability::Sync))
        .expect("create");
    engine.publish("s", &[on(0, "first")]).expect("first");
    fs.fail_next(FailOp::Sync);
    engine
        .publish("s", &[on(0, "lost")])
        .expect_err("the fsync failed");
    assert_eq!(engine.reopen_failed_partitions().expect("reopen"), 1);
    assert_eq!(
        engine.reopen_failed_partitions().expect("nothing failed"),
        0
    );
    // The write whose fsync failed is not trusted: its offset is taken again.
    let after = engine
        .publish("s", &[on(0, "after")])
        .expect("appends go on");
    assert_eq!(after[0].offset, 1);
    assert_eq!(
        payloads(&read_all(&engine, "s", 0)),
        [Bytes::from("first"), Bytes::from("after")]
    );
    // A power loss keeps everything acknowledged after the reopen.
    drop(engine);
    fs.crash(7);
    meta.crash();
    let engine = open(&fs, &meta);
    assert_eq!(
        payloads(&read_all(&engine, "s", 0)),
        [Bytes::from("first"), Bytes::from("after")]
    );
}

#[test]
fn a_full_disk_is_refused_as_such_until_space_is_freed_then_appends_resume() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(2, Durability::Sync))
        .expect("create");
    engine.publish("s", &[on(0, "first")]).expect("first");
    fs.set_full(true);
    let err = engine
        .publish("s", &[on(0, "no room")])
        .expect_err("the disk is full");
    assert!(err.is_no_space(), "{err}");
    let err = engine
        .publish("s", &[on(0, "still no room")])
        .expect_err("latched");
    assert!(
        matches!(err, Error::PartitionFull { ref topic, partition: 0, free_bytes: 0 } if topic == "s"),
        "{err:?}"
    );
    assert!(err.to_string().contains("free"), "{err}");
    // While the disk stays full the probe fails and the partition stays failed.
    engine
        .reopen_failed_partitions()
        .expect_err("the probe finds no room");
    assert!(engine.publish("s", &[on(0, "x")]).is_err());
    fs.set_full(false);
    assert_eq!(SIM_FREE_BYTES, fs_free(&fs));
    assert_eq!(engine.reopen_failed_partitions().expect("reopen"), 1);
    let after = engine.publish("s", &[on(0, "after")]).expect("resumed");
    assert_eq!(after[0].offset, 1, "the partial write was cut off");
    assert_eq!(
        payloads(&read_all(&engine, "s", 0)),
        [Bytes::from("first"), Bytes::from("after")]
    );
}

fn fs_free(fs: &crate::testing::sim::SimFs) -> u64 {
    use crate::storage::io::Vfs;
    fs.free_bytes(std::path::Path::new("/data"))
        .expect("free bytes")
}

#[test]
fn keys_of_appends_lost_with_a_failure_are_forgotten_and_others_kept() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("k", topic_config(1, Durability::Sync))
        .expect("create");
    let a = engine.publish("k", &[keyed("a")]).expect("a")[0];
    fs.fail_next(FailOp::Sync);
    engine.publish("k", &[keyed("b")]).expect_err("lost");
    // Before the reopen, a retry of the lost append is refused, not answered
    // as a duplicate of a record that is not there.
    engine
        .publish("k", &[keyed("b")])
        .expect_err("still failed");
    engine.reopen_failed_partitions().expect("reopen");
    let b = engine.publish("k", &[keyed("b")]).expect("b again")[0];
    assert!(!b.duplicate, "b was lost, so it is appended: {b:?}");
    assert_eq!(b.offset, 1);
    let a_again = engine.publish("k", &[keyed("a")]).expect("a again")[0];
    assert!(
        a_again.duplicate && a_again.offset == a.offset,
        "{a_again:?}"
    );
}

#[test]
fn an_append_taken_by_a_failed_writer_is_never_acknowledged_by_the_next() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(1, Durability::Sync))
        .expect("create");
    let topic = engine.topic("s").expect("topic");
    let partition = topic.partition(0).expect("partition");
    let batch = |payload: &str| {
        crate::storage::batch::UnsealedBatch::encode(&[&RecordInput::new(payload.to_owned())])
    };
    fs.fail_next(FailOp::Sync);
    let first = partition.enqueue(batch("a")).expect("queued");
    let second = partition.enqueue(batch("b")).expect("queued");
    partition
        .wait(first.generation, first.end_offset)
        .expect_err("the group's fsync failed");
    engine.reopen_failed_partitions().expect("reopen");
    // New appends take the lost offsets again; the old ticket stays refused.
    engine
        .publish("s", &[on(0, "c"), on(0, "d")])
        .expect("c, d");
    assert!(partition.end_offset() >= second.end_offset);
    let err = partition
        .wait(second.generation, second.end_offset)
        .expect_err("taken by the failed writer");
    assert!(err.to_string().contains("publish it again"), "{err}");
}

#[test]
fn an_async_topic_reopened_keeps_what_was_flushed() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("a", topic_config(1, Durability::Async))
        .expect("create");
    engine.publish("a", &[on(0, "flushed")]).expect("written");
    engine.flush().expect("flush");
    engine.publish("a", &[on(0, "unflushed")]).expect("written");
    let topic = engine.topic("a").expect("topic");
    fs.fail_next(FailOp::Sync);
    topic.partitions()[0].flush().expect_err("the flush failed");
    engine.reopen_failed_partitions().expect("reopen");
    // As after a crash: the unflushed record is gone, the flushed one kept.
    assert_eq!(
        payloads(&read_all(&engine, "a", 0)),
        [Bytes::from("flushed")]
    );
    let after = engine
        .publish("a", &[on(0, "after")])
        .expect("appends go on");
    assert_eq!(after[0].offset, 1);
}

#[test]
fn a_panicking_leader_is_reopened_too() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(1, Durability::Sync))
        .expect("create");
    engine.publish("s", &[on(0, "first")]).expect("first");
    fs.fail_next(FailOp::PanicOnWrite);
    engine
        .publish("s", &[on(0, "second")])
        .expect_err("the leader panicked");
    engine.reopen_failed_partitions().expect("reopen");
    let after = engine
        .publish("s", &[on(0, "after")])
        .expect("appends go on");
    assert_eq!(after[0].offset, 1);
}

#[test]
fn a_group_that_rolls_a_segment_and_fails_at_any_of_its_syncs_is_cut_back() {
    // Segments are 4 KiB: a group of 1 KiB records rolls one, and syncs
    // the sealed segment, the new file, the directory and the group.
    let big = |i: u32| RecordInput::new(vec![b'a' + (i % 26) as u8; 1024]);
    for passing in 0.. {
        let (fs, meta, engine) = fresh();
        engine
            .create_topic("s", topic_config(1, Durability::Sync))
            .expect("create");
        for i in 0..3 {
            engine.publish("s", &[big(i)]).expect("append");
        }
        fs.fail_after(FailOp::Sync, passing);
        let group: Vec<RecordInput> = (3..8).map(big).collect();
        let lost = engine.publish("s", &group).is_err();
        if fs.cancel_failure() {
            // The group made fewer syncs than `passing`: every one was tried.
            assert!(!lost && passing >= 4, "{passing} syncs");
            break;
        }
        engine.reopen_failed_partitions().expect("reopen");
        let kept = read_all(&engine, "s", 0);
        let expected = if lost { 3 } else { 8 };
        assert_eq!(kept.len(), expected, "sync {passing} failed: lost = {lost}");
        engine.publish("s", &[big(99)]).expect("appends go on");
        drop(engine);
        fs.crash(u64::from(passing));
        meta.crash();
        let engine = open(&fs, &meta);
        let after = read_all(&engine, "s", 0);
        assert_eq!(
            after.len(),
            expected + 1,
            "sync {passing}: after a power loss"
        );
        for (i, record) in after.iter().take(expected).enumerate() {
            assert_eq!(
                record.payload,
                big(i as u32).payload,
                "sync {passing}, record {i}"
            );
        }
        assert_eq!(after[expected].payload, big(99).payload);
    }
}

#[test]
fn a_topic_creation_that_fails_at_any_sync_leaves_nothing_that_comes_back() {
    for passing in 0.. {
        let (fs, meta, engine) = fresh();
        fs.fail_after(FailOp::Sync, passing);
        let created = engine.create_topic("t", topic_config(2, Durability::Sync));
        if fs.cancel_failure() {
            assert!(created.is_ok(), "every sync of a creation was failed once");
            assert!(passing >= 4, "{passing} syncs");
            break;
        }
        let listed = engine.list_topics().iter().any(|t| t.name == "t");
        assert_eq!(listed, created.is_ok(), "sync {passing}: {created:?}");
        drop(engine);
        fs.crash(u64::from(passing));
        meta.crash();
        let engine = open(&fs, &meta);
        let after_restart = engine.list_topics().iter().any(|t| t.name == "t");
        if created.is_err() {
            assert!(
                !after_restart,
                "sync {passing}: a failed creation came back"
            );
            engine
                .create_topic("t", topic_config(2, Durability::Sync))
                .expect("a retry creates the topic");
        }
        engine.publish("t", &[on(1, "x")]).expect("the topic works");
    }
}

#[test]
fn a_topic_deletion_that_fails_leaves_the_topic_whole_and_usable() {
    for passing in 0.. {
        let (fs, meta, engine) = fresh();
        engine
            .create_topic("t", topic_config(1, Durability::Sync))
            .expect("create");
        engine.publish("t", &[on(0, "kept")]).expect("publish");
        fs.fail_after(FailOp::Sync, passing);
        let deleted = engine.delete_topic("t");
        if fs.cancel_failure() {
            assert!(deleted.is_ok(), "every sync of a deletion was failed once");
            break;
        }
        let listed = engine.list_topics().iter().any(|t| t.name == "t");
        assert_eq!(listed, deleted.is_err(), "sync {passing}: {deleted:?}");
        if deleted.is_err() {
            engine.publish("t", &[on(0, "more")]).expect("still usable");
        }
        drop(engine);
        fs.crash(u64::from(passing));
        meta.crash();
        let engine = open(&fs, &meta);
        let after_restart = engine.list_topics().iter().any(|t| t.name == "t");
        assert_eq!(
            after_restart,
            deleted.is_err(),
            "sync {passing}, after a restart"
        );
        if deleted.is_err() {
            assert_eq!(read_all(&engine, "t", 0)[0].payload, Bytes::from("kept"));
        }
    }
}
