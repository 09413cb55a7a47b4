//! `postbox topics ...` and `postbox offsets ...`: one admin call each, its
//! answer printed as JSON lines.

use std::io;

use anyhow::Result;
use postbox_client::{Admin, TopicSettings};
use serde::Serialize;

use crate::args::{CreateTopicArgs, OffsetsCommand, TopicsCommand};
use crate::output::Output;

pub async fn topics<W: io::Write>(
    broker: &str,
    command: TopicsCommand,
    output: &mut Output<W>,
) -> Result<()> {
    let admin = Admin::connect(broker).await?;
    match command {
        TopicsCommand::Create(args) => {
            let name = args.name.clone();
            let info = admin.create_topic(&name, settings(args)).await?;
            output.json_line(&info)?;
        }
        TopicsCommand::List => {
            for info in admin.list_topics().await? {
                output.json_line(&info)?;
            }
        }
        TopicsCommand::Describe { name } => {
            output.json_line(&admin.describe_topic(&name).await?)?
        }
        TopicsCommand::Delete { name } => admin.delete_topic(&name).await?,
    }
    output.flush()
}

pub async fn offsets<W: io::Write>(
    broker: &str,
    command: OffsetsCommand,
    output: &mut Output<W>,
) -> Result<()> {
    let admin = Admin::connect(broker).await?;
    match command {
        OffsetsCommand::Get { group, topic } => {
            for (partition, offset) in admin.get_offsets(&group, &topic).await? {
                output.json_line(&PartitionOffset { partition, offset })?;
            }
        }
        OffsetsCommand::Set {
            group,
            topic,
            partition,
            offset,
        } => {
            admin
                .commit_offsets(&group, &topic, &[(partition, offset)])
                .await?
        }
    }
    output.flush()
}

fn settings(args: CreateTopicArgs) -> TopicSettings {
    TopicSettings {
        partitions: args.partitions,
        durability: args.durability,
        fsync_interval_ms: args.fsync_interval_ms,
        segment_bytes: args.segment_bytes,
        retention_ms: args.retention_ms,
        retention_bytes: args.retention_bytes,
        dedup_window_ms: args.dedup_window_ms,
        dedup_keys_max: args.dedup_keys_max,
    }
}

/// One line of `offsets get`.
#[derive(Serialize)]
struct PartitionOffset {
    partition: u32,
    offset: u64,
}
