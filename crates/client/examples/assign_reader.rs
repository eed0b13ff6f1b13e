//! Reads every partition of a topic from the beginning with an assign-based consumer (no group),
//! showing poll, pause/resume and seek.
//!
//! ```text
//! cargo run -p runnel-client --example assign_reader -- [bootstrap] [records to wait for]
//! ```

use std::time::{Duration, Instant};

use runnel_client::{AssignConsumer, AssignConsumerConfig, Client, StartFrom};

const TOPIC: &str = "examples";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9292".to_string());
    let want: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);

    let client = Client::connect(&[bootstrap]).await?;
    let mut consumer = AssignConsumer::new(client, AssignConsumerConfig::default());
    consumer.assign_all(TOPIC, StartFrom::Earliest).await?;

    // Pause partition 0 for the first poll: only the others are read.
    consumer.pause(TOPIC, 0);
    let first = consumer.poll(Duration::from_millis(200)).await?;
    assert!(first.iter().all(|r| r.partition != 0), "a paused partition is not fetched");
    consumer.resume(TOPIC, 0);

    let mut read = first.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < want {
        if Instant::now() > deadline {
            return Err(format!("read only {read} of {want} records within 30 s").into());
        }
        read += consumer.poll(Duration::from_millis(500)).await?.len();
    }
    for (topic, partition, next) in consumer.assignment() {
        println!("{topic}/{partition}: next offset {next}");
    }

    // Seek back to re-read partition 1 from its start.
    consumer.seek(TOPIC, 1, 0)?;
    consumer.pause(TOPIC, 0);
    consumer.pause(TOPIC, 2);
    let again = consumer.poll(Duration::from_millis(200)).await?;
    if let Some(r) = again.first() {
        println!("after seek: {}/{} offset {} value {:?}", r.topic, r.partition, r.record.offset, r.record.value);
    }
    println!("read {read} records");
    Ok(())
}
