//! Reads every partition of a topic from the beginning with an assign-based consumer (no group
//! membership), showing poll, pause/resume and seek.
//!
//! ```text
//! cargo run -p runnel-client --example assign_reader -- [bootstrap] [records to wait for]
//! ```

use std::time::{Duration, Instant};

use runnel_client::{Client, Consumer, ConsumerConfig, OffsetReset};

const TOPIC: &str = "examples";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9292".to_string());
    let want: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);

    let client = Client::connect(&[bootstrap]).await?;
    let partitions: Vec<(String, u32)> =
        (0..client.partition_count(TOPIC).await?).map(|p| (TOPIC.to_string(), p)).collect();
    let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() };
    let mut consumer = Consumer::assign(client, config, &partitions).await?;

    // Pause partition 0 for the first poll: only the others are read.
    let p0 = [(TOPIC.to_string(), 0)];
    consumer.pause(&p0);
    let first = consumer.poll(Duration::from_millis(200)).await?;
    if first.iter().any(|r| r.partition == 0) {
        return Err("a paused partition was fetched".into());
    }
    consumer.resume(&p0);

    let mut read = first.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < want {
        if Instant::now() > deadline {
            return Err(format!("read only {read} of {want} records within 30 s").into());
        }
        read += consumer.poll(Duration::from_millis(500)).await?.len();
    }
    for (topic, partition) in consumer.assignment() {
        let next = consumer.position(&topic, partition).unwrap_or_default();
        println!("{topic}/{partition}: next offset {next}");
    }

    // Seek back to re-read partition 1 from its start, with every other partition paused.
    consumer.seek(TOPIC, 1, 0)?;
    let others: Vec<(String, u32)> = partitions.iter().filter(|(_, p)| *p != 1).cloned().collect();
    consumer.pause(&others);
    let again = consumer.poll(Duration::from_millis(500)).await?;
    match again.first() {
        Some(r) if r.partition == 1 && r.offset == 0 => {
            println!("after seek: {}/{} offset {} value {:?}", r.topic, r.partition, r.offset, r.value)
        }
        Some(r) => return Err(format!("after seek to 1@0 the first record is {}@{}", r.partition, r.offset).into()),
        None => return Err("nothing read after seeking partition 1 back to 0".into()),
    }
    println!("read {read} records");
    Ok(())
}
